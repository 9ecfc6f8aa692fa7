"""Hard concrete gates (paper Eq. 2) with the clipped straight-through estimator (Eq. 4).

The math is a set of pure functions of ``log_alpha`` (one per equation); the
``HardConcrete`` module is a thin wrapper that owns one ``log_alpha`` parameter,
samples in training mode and returns a deterministic mask in evaluation mode.
See ``docs/gates.md`` for the choices made where the paper is silent.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

# Louizos et al. 2018 ("Learning Sparse Neural Networks through L0
# Regularization", sec. 4) and the paper (sec. 2.2: zeta = 1.1, gamma = -0.1);
# beta = 2/3 is Louizos et al.'s temperature, also CoFi's default (args.py).
BETA = 2.0 / 3.0
GAMMA = -0.1
ZETA = 1.1

# Keeps log(u) and log(1 - u) finite; the same guard as flop/DPHuBERT (eps=1e-6).
_U_EPS = 1e-6

# Gauss-Legendre nodes/weights on [0, 1] for E[z] (see expected_z): the
# integrand is smooth on [0, 1], so 64 nodes reach float64 round-off.
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(64)
_GL_T = torch.tensor((_GL_NODES + 1.0) / 2.0, dtype=torch.float64)  # (64,)
_GL_W = torch.tensor(_GL_WEIGHTS / 2.0, dtype=torch.float64)  # (64,)


def sample_s_bar(log_alpha: torch.Tensor, u: torch.Tensor, beta: float = BETA,
                 gamma: float = GAMMA, zeta: float = ZETA) -> torch.Tensor:
    """Stretched concrete sample s_bar (paper Eq. 2, before the hardtanh).

        s     = sigmoid((log u - log(1 - u) + log_alpha) / beta)
        s_bar = s * (zeta - gamma) + gamma

    The paper prints s = sigmoid(log(u / (1 - u)) / beta + log_alpha). We use
    the form of Louizos et al. 2018 (sec. 4) and of CoFi's ``quantile_concrete``
    that the paper cites for its method ([13]): log_alpha inside the division by
    beta. Both are the same hard concrete family; the printed form is this one
    with log_alpha rescaled by beta, and only this one matches the closed form
    P(z != 0) = sigmoid(log_alpha - beta log(-gamma/zeta)) the paper relies on.

    Args:
        log_alpha: gate logits, any shape.
        u: uniform noise in (0, 1), broadcastable to ``log_alpha``.
    """
    u = u.clamp(_U_EPS, 1.0 - _U_EPS)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    return s * (zeta - gamma) + gamma


class _ClampSTE(torch.autograd.Function):
    """clamp to [0, 1] forward; dL/ds_bar = clip(dL/dz, -1, 1) backward (Eq. 4)."""

    @staticmethod
    def forward(ctx, s_bar: torch.Tensor) -> torch.Tensor:
        return s_bar.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, grad_z: torch.Tensor) -> torch.Tensor:
        # Eq. 4 applies everywhere, inside (0, 1) too: the gradient that
        # reaches s_bar is always the clipped upstream gradient.
        return grad_z.clamp(-1.0, 1.0)


def clamp_ste(s_bar: torch.Tensor) -> torch.Tensor:
    """z = hardtanh(s_bar) with the clipped straight-through gradient (paper Eq. 4)."""
    return _ClampSTE.apply(s_bar)


def sample_z(log_alpha: torch.Tensor, u: torch.Tensor | None = None, ste: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """A hard concrete sample z = hardtanh(s_bar) (paper Eq. 2), same shape as log_alpha.

    ``u`` defaults to fresh U(0, 1) noise drawn from ``generator`` (torch's
    global RNG when None, so ``torch.manual_seed`` makes runs reproducible).
    ``ste=True`` backpropagates through the clamp with Eq. 4; ``ste=False`` is
    the plain clamp, whose gradient is zero wherever s_bar is outside [0, 1]
    (the paper's "w/o STE" ablation).
    """
    if u is None:
        u = torch.rand(log_alpha.shape, generator=generator,
                       dtype=log_alpha.dtype, device=log_alpha.device)
    s_bar = sample_s_bar(log_alpha, u)
    return clamp_ste(s_bar) if ste else s_bar.clamp(0.0, 1.0)


def prob_nonzero(log_alpha: torch.Tensor, beta: float = BETA, gamma: float = GAMMA,
                 zeta: float = ZETA) -> torch.Tensor:
    """P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta)) (Louizos et al. 2018, sec. 4)."""
    return torch.sigmoid(log_alpha - beta * math.log(-gamma / zeta))


def expected_z(log_alpha: torch.Tensor, beta: float = BETA, gamma: float = GAMMA,
               zeta: float = ZETA) -> torch.Tensor:
    """E[z] of the hard concrete gate, exactly (up to float64 quadrature error).

        E[z] = int_0^1 P(z > t) dt
             = int_0^1 sigmoid(log_alpha - beta * logit((t - gamma) / (zeta - gamma))) dt

    since z > t iff s > q(t) = (t - gamma) / (zeta - gamma) for t in [0, 1).
    q(t) stays inside [1/12, 11/12], so the integrand is smooth and 64-node
    Gauss-Legendre quadrature is exact to round-off. This is the value that
    flop/CoFi/DPHuBERT approximate by sigmoid(0.8 log_alpha / beta); see
    docs/gates.md. Differentiable; same shape and dtype as ``log_alpha``.
    """
    t = _GL_T.to(log_alpha.device)  # (64,)
    q = (t - gamma) / (zeta - gamma)
    logit_q = torch.log(q) - torch.log1p(-q)  # (64,)
    a = log_alpha.to(torch.float64).unsqueeze(-1)  # (..., 1)
    integrand = torch.sigmoid(a - beta * logit_q)  # (..., 64)
    return (integrand * _GL_W.to(log_alpha.device)).sum(-1).to(log_alpha.dtype)


def kept_count(log_alpha: torch.Tensor) -> int:
    """k = round(sum P(z != 0)) over the whole group, summed in float64."""
    return int(torch.round(prob_nonzero(log_alpha.detach().to(torch.float64)).sum()).item())


def deterministic_mask(log_alpha: torch.Tensor) -> torch.Tensor:
    """The noise-free evaluation/export mask of one gate group (docs/method.md section 3).

    The whole tensor is one group (12 x 64 for qk/vo, 3072 for the FFN, 1 for
    a block gate). Exactly k = round(sum P(z != 0)) entries are kept, those
    with the largest log_alpha (ties broken by flat index); each kept entry is
    E[z] (``expected_z``), the others are exactly 0. Every kept entry has
    P(z != 0) >= 1 / (2n) (else the sum could not reach k - 1/2), so its E[z]
    is positive; E[z] < 1 for finite log_alpha, rounding to 1.0 when saturated.
    Detached from autograd; consumes no random numbers.
    """
    with torch.no_grad():
        flat = log_alpha.detach().reshape(-1)  # (n,)
        k = kept_count(flat)
        order = torch.argsort(flat, descending=True, stable=True)  # (n,)
        mask = torch.zeros_like(flat)
        keep = order[:k]
        mask[keep] = expected_z(flat[keep])
        return mask.reshape(log_alpha.shape)


def _logit(p: float) -> float:
    if not 0.0 < p < 1.0:
        raise ValueError(f"init_keep must lie in (0, 1), got {p}")
    return math.log(p) - math.log1p(-p)


class HardConcrete(nn.Module):
    """One gate group: a ``log_alpha`` parameter of ``shape`` and its mask z.

    ``forward()`` returns a fresh sample (Eq. 2) in training mode and the
    deterministic mask in evaluation mode.

    Args:
        shape: shape of the gate, e.g. (12, 64), (3072,) or (1,).
        ste: backpropagate through the clamp with the clipped STE (Eq. 4).
        init_keep: sigmoid(log_alpha) at initialisation, i.e. P(s_bar > 1/2).
            0.99 is DPHuBERT's ``init_mean=0.01`` drop rate for head and layer
            gates (wav2vec2/components.py): log_alpha = logit(0.99) = 4.595,
            giving P(z != 0) = 0.998 and E[z] = 0.987, so the student starts as
            (nearly) the whole teacher.
        init_std: std of the Gaussian around that mean (flop/DPHuBERT: 0.01).
    """

    def __init__(self, shape: tuple[int, ...], ste: bool = True, init_keep: float = 0.99,
                 init_std: float = 0.01) -> None:
        super().__init__()
        shape = tuple(int(d) for d in shape)
        if len(shape) == 0 or any(d <= 0 for d in shape):
            raise ValueError(f"HardConcrete shape must be non-empty with positive sizes, got {shape}")
        if init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {init_std}")
        self.shape = shape
        self.ste = ste
        self.init_keep = init_keep
        self.init_std = init_std
        self.log_alpha = nn.Parameter(torch.empty(shape))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """log_alpha ~ N(logit(init_keep), init_std^2) (flop/DPHuBERT ``reset_parameters``)."""
        with torch.no_grad():
            self.log_alpha.normal_(_logit(self.init_keep), self.init_std)

    def forward(self) -> torch.Tensor:
        """z of ``shape``: sampled (training) or ``deterministic_mask`` (evaluation)."""
        if self.training:
            return sample_z(self.log_alpha, ste=self.ste)
        return deterministic_mask(self.log_alpha)

    def eval_mask(self) -> torch.Tensor:
        """The deterministic (evaluation and export) mask, whatever the module's mode; no gradient."""
        return deterministic_mask(self.log_alpha)

    def prob_nonzero(self) -> torch.Tensor:
        """P(z != 0) per entry, differentiable."""
        return prob_nonzero(self.log_alpha)

    def expected_count(self) -> torch.Tensor:
        """E[number of non-zero entries] = sum P(z != 0), a differentiable scalar."""
        return self.prob_nonzero().sum()

    def extra_repr(self) -> str:
        return f"shape={self.shape}, ste={self.ste}, init_keep={self.init_keep}"
