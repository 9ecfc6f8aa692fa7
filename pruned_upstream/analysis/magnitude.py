"""Magnitude pruning to a given architecture: the equal-size baseline without distillation.

    baseline = magnitude_prune(teacher, like=student.arch)   # the teacher's weights, the student's counts

The result has, layer by layer, the counts of `like` (a model pruned by our method): the
same attention/FFN block flags, the same number of heads with the same multiset of per-head
(qk, vo) sizes, the same number of FFN units, and the same CNN channel counts, hence the
same number of parameters. WHICH heads, dims, units and channels stay is chosen from the
dense model's weights alone (docs/baselines.md has the rule and its sources):

    qk dim d of head h : ||W_Q row|| * ||W_K row||            (torch's (out, in) layout: rows)
    vo dim d of head h : ||W_V row|| * ||W_O column||
    head h             : the sum of its 64 qk scores and its 64 vo scores
    FFN unit j         : ||fc1 row j|| * ||fc2 column j||
    conv channel c     : ||its filter|| (the GroupNorm layer: ||(gamma_c, beta_c)||) * ||next conv's input column c||

Ties go to the lower index. The kept heads, taken in order of their scores, receive the
like layer's (qk, vo) pairs in order of the parameters a pair costs, largest first; within a
head the qk and vo dims with the largest scores stay. Nothing is trained and no value is
folded: the dense model is made prunable, its gates set to hard 0/1 masks (checked to be
exactly 0 or 1), and the project's own `export` builds the compact model, so the kept
weights are the dense model's, bit for bit.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from ..arch import LayerArch, WavLMArch
from ..exporting import export
from ..gating import PAPER_KINDS, PruneConfig
from ..model.prunable import gates, make_prunable
from ..model.wavlm import WavLM

HARD = 100.0  # log_alpha of a hard gate: E[z] is 1.0 exactly in float32 (open), P(z != 0) ~ 1e-43 (closed)
# Every field but the layers and the CNN's channel counts must be the dense model's (the most telling first).
_SHARED = ("family", "embed_dim", "num_heads", "head_dim", "conv_layers", "extractor_mode", "conv_bias",
           "layer_norm_first", "normalize", "conv_pos", "conv_pos_groups", "relative_position_embedding", "num_buckets",
           "max_distance", "gru_rel_pos", "post_extract_proj")


# ---------------------------------------------------------------------------- compatibility
def check_compatible(dense: WavLMArch, like: WavLMArch) -> None:
    """ValueError in one line when `like` cannot be cut out of `dense`."""
    for name in _SHARED:
        a, b = getattr(dense, name), getattr(like, name)
        if a != b:
            raise ValueError(f"the pruned model's {name} is {_short(b)}, the dense model's {_short(a)}: "
                             "not pruned from this model")
    if dense.num_layers != like.num_layers:
        raise ValueError(f"the pruned model has {like.num_layers} layers, the dense model {dense.num_layers}: "
                         "layers dropped or added have no magnitude counterpart")
    for i, layer in enumerate(dense.layers):
        if layer != LayerArch.dense(dense.num_heads, dense.head_dim, layer.ffn_dim):
            raise ValueError(f"the dense model is already pruned (layer {i}): give the teacher it was pruned from")
    if dense.conv_channels is not None:
        raise ValueError("the dense model's CNN is already pruned: give the teacher it was pruned from")
    for i, (d, l) in enumerate(zip(dense.layers, like.layers)):
        if l.ffn and l.ffn_dim > d.ffn_dim:
            raise ValueError(f"layer {i}: the pruned model has {l.ffn_dim} FFN units, the dense model {d.ffn_dim}")
    if like.conv_channels is not None:
        dense_ch = dense.channels()
        over = [i for i, (c, d) in enumerate(zip(like.conv_channels, dense_ch)) if not 1 <= c <= d]
        if over:
            raise ValueError(f"conv layer {over[0]}: the pruned model has {like.conv_channels[over[0]]} channels, "
                             f"the dense model {dense_ch[over[0]]}")
        if like.conv_channels[-1] != dense_ch[-1] or dense.extractor_mode != "default":
            raise ValueError("only the group-norm CNN's layers before the last can lose channels "
                             "(docs/method.md section 2)")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------- scores
def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.detach().flatten(1).double().norm(dim=1).cpu()


def qk_scores(attn) -> torch.Tensor:
    """(heads, head_dim): ||W_Q row|| * ||W_K row|| of each query/key dim."""
    s = _rows(attn.q_proj.weight) * _rows(attn.k_proj.weight)
    return s.view(len(attn.layer.heads), -1)


def vo_scores(attn) -> torch.Tensor:
    """(heads, head_dim): ||W_V row|| * ||W_O column|| of each value/output dim."""
    s = _rows(attn.v_proj.weight) * _rows(attn.out_proj.weight.T)
    return s.view(len(attn.layer.heads), -1)


def head_scores(attn) -> torch.Tensor:
    """(heads,): the sum of a head's qk and vo scores."""
    return qk_scores(attn).sum(1) + vo_scores(attn).sum(1)


def unit_scores(layer) -> torch.Tensor:
    """(ffn_dim,): ||fc1 row j|| * ||fc2 column j|| of each FFN unit."""
    return _rows(layer.fc1.weight) * _rows(layer.fc2.weight.T)


def channel_scores(model: WavLM, i: int) -> torch.Tensor:
    """(channels,) of conv layer i (not the last): the channel's output scale times its use by the next conv.

    The output scale is its filter's norm, or, behind a per-channel GroupNorm (which removes the
    filter's scale), the norm of the channel's affine (gamma_c, beta_c)."""
    blocks = model.feature_extractor.conv_layers
    conv, nxt = getattr(blocks[i], "0"), getattr(blocks[i + 1], "0")
    norm = getattr(blocks[i], "2", None)
    if isinstance(norm, torch.nn.GroupNorm):
        out = torch.stack([norm.weight, norm.bias], 1).detach().double().norm(dim=1).cpu()
    else:
        out = _rows(conv.weight)
    return out * _rows(nxt.weight.transpose(0, 1))


def top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The indices of the k largest scores, ties to the lower index, in order of score."""
    return torch.argsort(scores, descending=True, stable=True)[:k]


# ---------------------------------------------------------------------------- the plan
@dataclasses.dataclass(frozen=True)
class LayerPlan:
    attn: bool
    heads: dict  # original head index -> (kept qk dims, kept vo dims), sorted index tensors
    ffn: bool
    units: torch.Tensor  # kept FFN units, sorted


def _pair_cost(pair, d: int) -> tuple:
    qk, vo = pair
    return (qk * (2 * d + 2) + vo * (2 * d + 1), qk, vo)


@torch.no_grad()
def magnitude_plan(dense: WavLM, like: WavLMArch) -> tuple[list[LayerPlan], list[torch.Tensor] | None]:
    """What stays: per layer a LayerPlan, and the kept channels of each conv layer (None: CNN whole)."""
    check_compatible(dense.arch, like)
    d = dense.arch.embed_dim
    plans = []
    for like_layer, layer in zip(like.layers, dense.encoder.layers):
        heads = {}
        if like_layer.attn and like_layer.heads:
            attn = layer.self_attn
            pairs = sorted(((h.qk, h.vo) for h in like_layer.heads), key=lambda p: _pair_cost(p, d), reverse=True)
            qk, vo = qk_scores(attn), vo_scores(attn)
            for h, (n_qk, n_vo) in zip(top(head_scores(attn), len(pairs)).tolist(), pairs):
                heads[h] = (top(qk[h], n_qk).sort().values, top(vo[h], n_vo).sort().values)
        units = torch.zeros(0, dtype=torch.long)
        if like_layer.ffn and like_layer.ffn_dim:
            units = top(unit_scores(layer), like_layer.ffn_dim).sort().values
        plans.append(LayerPlan(like_layer.attn, dict(sorted(heads.items())), like_layer.ffn, units))
    conv = None
    if like.conv_channels is not None:
        conv = [top(channel_scores(dense, i), c).sort().values for i, c in enumerate(like.conv_channels[:-1])]
    return plans, conv


# ---------------------------------------------------------------------------- the baseline
@torch.no_grad()
def magnitude_prune(dense: WavLM, like: WavLMArch) -> WavLM:
    """A compact WavLM with `like`'s counts and `dense`'s weights, kept by magnitude; `dense` is untouched."""
    plans, conv = magnitude_plan(dense, like)
    kinds = list(PAPER_KINDS) + (["conv"] if conv is not None else [])
    student = make_prunable(copy.deepcopy(dense), PruneConfig(kinds=kinds)).eval()
    wanted = _wanted_masks(student, plans, conv)
    found = gates(student)
    if set(wanted) != set(found):
        raise RuntimeError(f"magnitude gates {sorted(set(wanted) ^ set(found))} were not planned")
    for name, keep in wanted.items():
        found[name].log_alpha.copy_(torch.where(keep, HARD, -HARD).to(found[name].log_alpha))
        mask = found[name].eval_mask()
        if not torch.equal(mask, keep.to(mask)):  # exactly 1 where kept, exactly 0 elsewhere
            raise RuntimeError(f"{name}: the hard gates do not give an exact 0/1 mask")
    compact = export(student)
    if _counts(compact.arch) != _counts(like):
        raise RuntimeError("the magnitude baseline's counts differ from the pruned model's")
    return compact


def _wanted_masks(student: WavLM, plans: list[LayerPlan], conv) -> dict[str, torch.Tensor]:
    """Every gate's 0/1 mask as a bool tensor, by the gate's module name."""
    arch, out = student.arch, {}
    for i, (plan, layer_arch) in enumerate(zip(plans, arch.layers)):
        pre = f"encoder.layers.{i}"
        qk = torch.zeros(len(layer_arch.heads), arch.head_dim, dtype=torch.bool)
        vo = torch.zeros_like(qk)
        for h, (qk_dims, vo_dims) in plan.heads.items():
            qk[h, qk_dims] = True
            vo[h, vo_dims] = True
        out[f"{pre}.self_attn.gate_mha"] = torch.tensor([plan.attn])
        out[f"{pre}.self_attn.gate_qk"] = qk
        out[f"{pre}.self_attn.gate_vo"] = vo
        units = torch.zeros(layer_arch.ffn_dim, dtype=torch.bool)
        units[plan.units] = True
        out[f"{pre}.gate_ffn"] = torch.tensor([plan.ffn])
        out[f"{pre}.gate_int"] = units
    for i, kept in enumerate(conv or []):
        channels = torch.zeros(arch.channels()[i], dtype=torch.bool)
        channels[kept] = True
        out[f"feature_extractor.conv_layers.{i}.gate_conv"] = channels
    return out


def _counts(arch: WavLMArch) -> tuple:
    """What the baseline must share with the pruned model: per layer the block flags, the sorted
    (qk, vo) sizes of the heads and the FFN units (a block that is gone has none), and the CNN's channels."""
    layers = tuple(
        (l.attn, tuple(sorted((h.qk, h.vo) for h in l.heads)) if l.attn else (), l.ffn, l.ffn_dim if l.ffn else 0)
        for l in arch.layers
    )
    return layers, arch.channels()
