"""Layer-to-layer distillation: the losses and the teacher-student layer pairing D (paper Eq. 5, sec. 3.3).

    distiller = Distiller(cfg.distill, teacher_layers=12, student_layers=12, dim=768)
    loss, pairs = distiller(student_states, teacher_states, valid)     # pairs[i]: student layer of teacher layer i

Hidden states are indexed as `WavLM.forward` returns them: `states[0]` is the
input of layer 1 and `states[k]` the output of layer k, so "teacher layer 12"
is `states[12]`. Student candidates are the layer outputs `states[1:]`, as in
CoFi (`hidden_states[1:]`).

The learned pairing is CoFi's (princeton-nlp/CoFiPruning `trainer.py`,
`calculate_layer_distillation_loss`, `layer_distill_version` 4): every student
layer output goes through a learned linear map, the MSE of every (teacher
layer, student layer) pair is computed, and from the LAST distilled teacher
layer down each takes the student layer with the least loss strictly below
the layer the teacher layer above it took (the pairing is monotone). Student
layers whose sampled z_MHA is 0 are not candidates (CoFi's `head_layer_z`).
The choice is made at every step and is not differentiated; the loss is the
sum over the chosen pairs (`distill.layer_reduce=mean`: their mean, as DPHuBERT's
`DistillLoss` averages over layers), times `distill.weight` (1 by default). Where CoFi leaves the map at its random
initialisation, ours starts as the identity (docs/method.md section 5; DPHuBERT's
`_init_layer_transform`), so that a student equal to the teacher starts with
zero loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DistillConfig
from ..model.wavlm import frame_padding_mask


def default_teacher_layers(num_layers: int, every: int = 3) -> list[int]:
    """Every `every`-th layer and the last: (3, 6, 9, 12) of 12, CoFi's distilled layers."""
    layers = list(range(every, num_layers + 1, every))
    if not layers or layers[-1] != num_layers:
        layers.append(num_layers)
    return layers


def valid_frames(lengths: torch.Tensor | None, num_samples: int, num_frames: int) -> torch.Tensor | None:
    """(B, T') bool: the frames the model does not mark as padding; None when nothing is padded.

    lengths (B,) valid samples of a (B, num_samples) batch; the rule is the
    model's own (s3prl's, `frame_padding_mask`).
    """
    if lengths is None:
        return None
    sample_mask = torch.arange(num_samples, device=lengths.device)[None, :] >= lengths[:, None]  # (B, S)
    if not bool(sample_mask.any()):
        return None
    return ~frame_padding_mask(sample_mask, num_frames)


# ---------------------------------------------------------------------------- losses
def _masked_mean(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of x (B, T) over the valid frames (B, T) bool; all frames when valid is None."""
    if valid is None:
        return x.mean()
    return (x * valid).sum() / valid.sum().clamp(min=1)


def mse_loss(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """MSE(h_student, h_teacher) of Eq. 5: mean over valid frames and feature dims. (B, T, D) each."""
    return _masked_mean((student - teacher).pow(2).mean(-1), valid)


def l1_cos_loss(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor | None = None,
                cos_weight: float = 1.0) -> torch.Tensor:
    """DistilHuBERT's loss: mean |s - t| + cos_weight * mean -log sigmoid(cos(s, t)).

    (s3prl `pretrain/distiller/pretrain_expert.py`: `loss_type: l1`,
    `cosine_loss: 1.0`.) (B, T, D) each; the cosine is per frame.
    """
    l1 = _masked_mean((student - teacher).abs().mean(-1), valid)
    cos = F.cosine_similarity(student, teacher, dim=-1)  # (B, T)
    return l1 + cos_weight * _masked_mean(-F.logsigmoid(cos), valid)


# ---------------------------------------------------------------------------- pairing
def learned_pairing(losses: torch.Tensor, alive: torch.Tensor | None = None) -> list[int]:
    """CoFi's monotone pairing: for each teacher layer (row), a student candidate (column).

    losses (K, J): loss of teacher layer k against student candidate j.
    alive (J,) bool: candidates allowed (None: all). From the last row up, row k
    takes its least-loss allowed candidate below the one row k + 1 took; when
    none is left it takes the same one as row k + 1 (CoFi's fallback). If no
    candidate is alive at all, every candidate is allowed.
    """
    k_rows, j_cols = losses.shape
    if alive is not None and not bool(alive.any()):
        alive = None
    bound, chosen = j_cols, []
    for k in reversed(range(k_rows)):
        order = torch.argsort(losses[k].detach().float(), stable=True).tolist()
        allowed = [j for j in order if j < bound and (alive is None or bool(alive[j]))]
        bound = allowed[0] if allowed else min(bound, j_cols - 1)
        chosen.append(bound)
    return chosen[::-1]


def _identity_linear(dim_in: int, dim_out: int) -> nn.Linear:
    layer = nn.Linear(dim_in, dim_out)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(dim_out, dim_in))
        layer.bias.zero_()
    return layer


class Distiller(nn.Module):
    """The distillation term of Eq. 5: sum (or mean) over pairs (j, k) in D of loss(map(h_s^j), h_t^k).

    Owns the learnable maps (one shared by every pair, as CoFi; one per
    distilled teacher layer, as DPHuBERT; or none) and chooses D each step.
    """

    def __init__(self, cfg: DistillConfig, teacher_layers: int, student_layers: int,
                 dim: int, teacher_dim: int | None = None):
        super().__init__()
        teacher_dim = teacher_dim or dim
        self.pairing, self.loss_name, self.cos_weight, self.weight = cfg.pairing, cfg.loss, cfg.cos_weight, cfg.weight
        self.layer_reduce = cfg.layer_reduce
        self.teacher_layers = list(cfg.teacher_layers or default_teacher_layers(teacher_layers, cfg.every))
        _check_layers("distill.teacher_layers", self.teacher_layers, teacher_layers)
        if cfg.pairing == "fixed":
            self.student_layers = list(cfg.student_layers or self.teacher_layers)
            _check_layers("distill.student_layers", self.student_layers, student_layers)
            if len(self.student_layers) != len(self.teacher_layers):
                raise ValueError(f"fixed pairing needs as many student layers {self.student_layers} "
                                 f"as teacher layers {self.teacher_layers}")
        else:
            self.student_layers = list(range(1, student_layers + 1))  # the candidates
        maps = {"shared": 1, "per_layer": len(self.teacher_layers), "none": 0}[cfg.projection]
        if maps == 0 and dim != teacher_dim:
            raise ValueError(f"distill.projection=none needs equal widths, got student {dim}, teacher {teacher_dim}")
        self.maps = nn.ModuleList(_identity_linear(dim, teacher_dim) for _ in range(maps))

    def project(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """The map of teacher layer i applied to a student state (B, T, D_s) -> (B, T, D_t)."""
        if not self.maps:
            return x
        return self.maps[i if len(self.maps) > 1 else 0](x)

    def pair_loss(self, student: torch.Tensor, teacher: torch.Tensor, valid) -> torch.Tensor:
        student, teacher = student.float(), teacher.float()
        if self.loss_name == "l1_cos":
            return l1_cos_loss(student, teacher, valid, self.cos_weight)
        return mse_loss(student, teacher, valid)

    @torch.no_grad()
    def loss_matrix(self, student_states, teacher_states, valid) -> torch.Tensor:
        """(K, J) losses of every distilled teacher layer against every student candidate.

        Not differentiated: it only chooses D; `forward` recomputes the chosen
        pairs with gradients (so only K maps are back-propagated, not K x J).
        """
        shared = len(self.maps) <= 1  # one map: project each candidate once
        projected = [self.project(0, student_states[j]) for j in self.student_layers] if shared else None
        rows = []
        for i, k in enumerate(self.teacher_layers):
            cands = projected or [self.project(i, student_states[j]) for j in self.student_layers]
            rows.append(torch.stack([self.pair_loss(c, teacher_states[k], valid) for c in cands]))
        return torch.stack(rows)

    def forward(self, student_states, teacher_states, valid=None, alive=None):
        """-> (loss, pairs): the loss summed (or averaged) over pairs; per distilled teacher layer, its student layer.

        valid (B, T) bool marks real frames; alive (num student layers,) bool
        the layers that may be chosen (learned pairing only).
        """
        if self.pairing == "fixed":
            pairs = self.student_layers
        else:
            cols = learned_pairing(self.loss_matrix(student_states, teacher_states, valid), alive)
            pairs = [self.student_layers[j] for j in cols]
        loss = sum(self.pair_loss(self.project(i, student_states[j]), teacher_states[k], valid)
                   for i, (j, k) in enumerate(zip(pairs, self.teacher_layers)))
        if self.layer_reduce == "mean":  # DPHuBERT lightning.py: one L1Loss/cosine mean over (batch, layer, time)
            loss = loss / len(self.teacher_layers)
        return self.weight * loss, pairs


def _check_layers(key: str, layers: list[int], num_layers: int) -> None:
    bad = [k for k in layers if not 1 <= k <= num_layers]
    if bad or not layers:
        raise ValueError(f"{key} {layers}: layers are numbered 1..{num_layers} (the output of layer k)")
