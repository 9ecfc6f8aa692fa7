"""Attach hard-concrete gates to a WavLM, and count what they keep (docs/method.md sections 2 and 4).

    student = make_prunable(model, PruneConfig())     # the paper's set: mha, qk, vo, ffn, int; STE on
    p_hat = expected_sparsity(student)                 # differentiable in every log_alpha

Gates are submodules of the blocks they gate (`self_attn.gate_mha|gate_qk|gate_vo`,
`layer.gate_ffn|gate_int`, `conv_layers.<i>.gate_conv`), each with one parameter
`log_alpha`. The model only sums what its blocks report.

Prunable parameters (biases included, so that a deterministic count equals the
exported model's count exactly):

    qk dim  : a W_Q and a W_K column (2 x D) + the q and k bias entries    = 2D + 2
    vo dim  : a W_V column and a W_O row (2 x D) + the v bias entry         = 2D + 1
    FFN unit: a W_U column and a W_D row (2 x D) + the fc1 bias entry       = 2D + 1
    CNN channel (option): its conv filter (+ bias, + GroupNorm affine) and its
              column of the next conv's filter (nested: both channels must live)

Nested gates multiply: E[kept qk dims of layer l] = P(z_MHA != 0) * sum P(z_qk != 0).
"""

from __future__ import annotations

import torch

from ..gating import PruneConfig
from .hardconcrete import HardConcrete
from .wavlm import WavLM

__all__ = ["PruneConfig", "make_prunable", "gates", "kept_prunable", "expected_sparsity", "realised_sparsity",
           "whole_model_params", "expected_whole_params"]

def make_prunable(model: WavLM, cfg: PruneConfig | None = None) -> WavLM:
    """Attach gates to `model` in place and return it (the same module, now a student)."""
    cfg = cfg or PruneConfig()
    cfg.check()
    arch = model.arch

    def gate(kind, shape):
        return HardConcrete(shape, ste=cfg.ste_of(kind), init_keep=cfg.init_keep) if kind in cfg.kinds else None

    for i, (layer_arch, layer) in enumerate(zip(arch.layers, model.encoder.layers)):
        if layer_arch.attn and layer_arch.heads:
            attn = layer.self_attn
            if not (attn.qk_uniform and attn.vo_uniform):
                raise ValueError(f"layer {i}: gates need heads of equal qk and vo sizes")
            n = len(layer_arch.heads)
            attn.gate_mha = gate("mha", (1,))
            attn.gate_qk = gate("qk", (n, attn.qk_width)) if attn.qk_width else None
            attn.gate_vo = gate("vo", (n, attn.vo_width))
        if layer_arch.ffn and layer_arch.ffn_dim:
            layer.gate_ffn = gate("ffn", (1,))
            layer.gate_int = gate("int", (layer_arch.ffn_dim,))
    if "conv" in cfg.kinds:
        if arch.extractor_mode != "default":
            raise ValueError("CNN gates need the group-norm extractor: a layer-norm CNN normalises over channels")
        blocks = model.feature_extractor.conv_layers
        for block, channels in zip(blocks[:-1], arch.channels()[:-1]):  # the last feeds a LayerNorm over channels
            block.gate_conv = gate("conv", (channels,))
    return model


def gates(model: WavLM) -> dict[str, HardConcrete]:
    """Every gate of the model by its module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, HardConcrete)}


def log_alpha_parameters(model: WavLM) -> list[torch.nn.Parameter]:
    return [g.log_alpha for g in gates(model).values()]


def weight_parameters(model: WavLM) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if not n.endswith("log_alpha")]


# ---------------------------------------------------------------------------- counting
def _keep(gate: HardConcrete | None, size: int, mode: str, like: torch.Tensor) -> torch.Tensor:
    """Per entry: keep probability ("expected"), 0/1 of the eval masks ("deterministic"), or 1 ("all")."""
    if gate is None or mode == "all":
        return like.new_ones(size)
    if mode == "deterministic":
        return (gate.eval_mask() > 0).to(like.dtype).reshape(-1)
    return gate.prob_nonzero().reshape(-1)


def kept_prunable(model: WavLM, mode: str = "expected") -> torch.Tensor:
    """Kept prunable parameters: expected (differentiable), of the eval masks, or all of them."""
    arch, d = model.arch, model.arch.embed_dim
    like = model.mask_emb
    total = like.new_zeros(())
    for layer_arch, layer in zip(arch.layers, model.encoder.layers):
        if layer_arch.attn and layer_arch.heads:
            a = layer.self_attn
            mha = _keep(a.gate_mha, 1, mode, like)[0]
            qk = _keep(a.gate_qk, layer_arch.qk_total, mode, like).sum()
            vo = _keep(a.gate_vo, layer_arch.vo_total, mode, like).sum()
            total = total + mha * (qk * (2 * d + 2) + vo * (2 * d + 1))
        if layer_arch.ffn and layer_arch.ffn_dim:
            ffn = _keep(layer.gate_ffn, 1, mode, like)[0]
            units = _keep(layer.gate_int, layer_arch.ffn_dim, mode, like).sum()
            total = total + ffn * units * (2 * d + 1)
    return total + _kept_conv(model, mode, like)


def _kept_conv(model: WavLM, mode: str, like: torch.Tensor) -> torch.Tensor:
    """CNN parameters when the CNN is gated (it is not prunable otherwise)."""
    blocks = model.feature_extractor.conv_layers
    if all(b.gate_conv is None for b in blocks):
        return like.new_zeros(())
    total, prev = like.new_zeros(()), like.new_ones(())
    for block, (_, kernel, _), channels in zip(blocks, model.arch.conv_layers, model.arch.channels()):
        kept = _keep(block.gate_conv, channels, mode, like).sum()
        per_channel = (1 if model.arch.conv_bias else 0) + (2 if block.has_norm else 0)
        total = total + kept * prev * kernel + kept * per_channel  # filters exist where both ends live
        prev = kept
    return total


def total_prunable(model: WavLM) -> float:
    return float(kept_prunable(model, "all"))


def sparsity_of_counts(kept, total: float):
    """1 - kept / total; `kept` a number or a tensor (then differentiable)."""
    if total <= 0:
        raise ValueError(f"total prunable params must be > 0, got {total}")
    return 1.0 - kept / total


def expected_sparsity(model: WavLM) -> torch.Tensor:
    """p_hat = 1 - E[kept prunable params] / all prunable params (docs/method.md section 4)."""
    return sparsity_of_counts(kept_prunable(model), total_prunable(model))


def whole_model_params(model: WavLM) -> int:
    """The model's size as DPHuBERT counts it: `sum(p.numel() for p in model.parameters())` of its model.

    DPHuBERT (github.com/pyf98/DPHuBERT, commit c18093f) states sizes as the parameters of its
    torchaudio-based Wav2Vec2Model (README: "23,585,946 params"; lightning.py: the teacher's
    `parameters()` are the denominator of its sparsity). That model has no pre-training mask
    embedding (ours keeps `mask_emb`, D values, s3prl's upstreams do too) and holds one value per
    output channel of the last conv layer that ours lacks (components.py FeatureExtractor
    `dummy_weight`); otherwise the parameters are the same ones (HuBERT Base: 94,371,456).
    """
    return model.num_params() - model.mask_emb.numel() + model.arch.channels()[-1]


def fixed_params(model: WavLM) -> float:
    """The part of `whole_model_params` that no gate of this model can remove."""
    return whole_model_params(model) - total_prunable(model)


def expected_whole_params(model: WavLM, mode: str = "expected") -> torch.Tensor:
    """fixed + kept prunable: the whole model's expected size (differentiable), or its eval masks' size.

    On a model whose masks export it exactly ("deterministic"; no head keeps qk dims without a vo dim,
    no block gate closes) this is `whole_model_params(export(model))`.
    """
    return fixed_params(model) + kept_prunable(model, mode)


def realised_sparsity(model: WavLM) -> float:
    """The sparsity the deterministic (evaluation) masks realise."""
    return float(sparsity_of_counts(kept_prunable(model, "deterministic"), total_prunable(model)))
