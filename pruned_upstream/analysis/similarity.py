"""Representation similarity of two feature matrices over the same frames: linear CKA and SVCCA."""

from __future__ import annotations

import math

import torch


def _centred(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(x.shape)}")
    x = x.double()
    return x - x.mean(0, keepdim=True)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two feature matrices over the same N examples (Kornblith et al., ICML 2019).

        CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F),   X (N, D_x), Y (N, D_y) column-centred

    In [0, 1]; invariant to orthogonal transforms and isotropic scaling of either side,
    not to general invertible ones. NaN when a side is constant over the N examples.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same examples on both sides: {x.shape[0]} vs {y.shape[0]} rows")
    x, y = _centred(x), _centred(y)
    cross = (y.T @ x).norm() ** 2
    denom = (x.T @ x).norm() * (y.T @ y).norm()
    return float(cross / denom) if denom > 0 else math.nan


def _svd_directions(x: torch.Tensor, keep: float) -> torch.Tensor:
    """Orthonormal (N, r) basis of the top directions holding `keep` of the variance (SVCCA step 1)."""
    u, s, _ = torch.linalg.svd(_centred(x), full_matrices=False)  # (N, D), (D,)
    var = s**2
    if var.sum() == 0:
        raise ValueError("SVCCA of a constant representation")
    frac = torch.cumsum(var, 0) / var.sum()
    r = int(torch.searchsorted(frac, torch.tensor(keep, dtype=frac.dtype) - 1e-12)) + 1
    return u[:, : min(r, len(s))]


def svcca(x: torch.Tensor, y: torch.Tensor, keep: float = 0.99) -> float:
    """SVCCA similarity (Raghu et al. 2017): mean canonical correlation of the SVD-reduced sides.

    Each side keeps its top singular directions explaining `keep` of its variance
    (0.99 in Raghu et al.); CCA of two orthonormal bases U_x, U_y has the canonical
    correlations singular_values(U_x^T U_y). Invariant to any invertible linear map of
    a side whose variance is all kept. Needs N well above D (CCA overfits otherwise).
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must lie in (0, 1], got {keep}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"SVCCA needs the same examples on both sides: {x.shape[0]} vs {y.shape[0]} rows")
    ux, uy = _svd_directions(x, keep), _svd_directions(y, keep)  # (N, r_x), (N, r_y)
    rho = torch.linalg.svdvals(ux.T @ uy).clamp(max=1.0)  # (min(r_x, r_y),)
    return float(rho.mean())


def cka_matrix(rows: list[torch.Tensor], cols: list[torch.Tensor]) -> torch.Tensor:
    """(len(rows), len(cols)) linear CKA of every pair; each side centred once."""
    rows, cols = [_centred(x) for x in rows], [_centred(y) for y in cols]
    row_norm = [(x.T @ x).norm() for x in rows]
    col_norm = [(y.T @ y).norm() for y in cols]
    out = torch.empty(len(rows), len(cols), dtype=torch.float64)
    for i, x in enumerate(rows):
        for j, y in enumerate(cols):
            out[i, j] = (y.T @ x).norm() ** 2 / (row_norm[i] * col_norm[j])
    return out
