"""The models of a pruning run: the teacher, the gated student, and the module DDP wraps.

    teacher = build_teacher(cfg)              # a checkpoint, or random weights of a preset
    student = build_student(cfg, teacher)     # a copy of the teacher (the paper) with gates
"""

from __future__ import annotations

import copy
import dataclasses
from functools import partial

import torch
from torch import nn

from ..arch import WavLMArch, dense_arch, preset
from ..checkpoints import load_model
from ..config import Config
from ..model.components import layer_drop_probs
from ..model.depth import drop_layers
from ..model.hardconcrete import expected_z
from ..model.prunable import expected_sparsity, fixed_params, make_prunable, total_prunable, whole_model_params
from ..model.wavlm import WavLM, tiny_arch
from .distill import Distiller, valid_frames
from .sparsity import sparsity_for_params


def teacher_arch(name: str, overrides: dict) -> WavLMArch:
    """The random teacher's architecture: a preset with some fields changed."""
    sizes = ("num_layers", "embed_dim", "num_heads", "ffn_dim")
    allowed = set(sizes) | {f.name for f in dataclasses.fields(WavLMArch)} - {"layers", "head_dim"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"teacher.arch has unknown keys {unknown}; known: {sorted(allowed)}")
    if name == "tiny":
        return tiny_arch(**overrides)
    base = preset(name)
    args = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.name not in ("layers", "head_dim")}
    args.update(num_layers=base.num_layers, ffn_dim=base.layers[0].ffn_dim)
    return dense_arch(**{**args, **overrides})


def build_teacher(cfg: Config) -> WavLM:
    if cfg.teacher.checkpoint:
        model = load_model(cfg.teacher.checkpoint)
    else:
        torch.manual_seed(cfg.teacher.seed)
        model = WavLM(teacher_arch(cfg.teacher.preset, cfg.teacher.arch))
    return model.eval().requires_grad_(False)


def build_student(cfg: Config, teacher: WavLM) -> WavLM:
    """A copy of the teacher (or a model file), with gates unless pruning is off."""
    student = load_model(cfg.student.checkpoint) if cfg.student.checkpoint else copy.deepcopy(teacher)
    if cfg.student.drop_layers:  # a shallower student whose heads are then pruned: one config
        if str(cfg.student.drop_layers).startswith("importance"):
            raise ValueError("student.drop_layers: importance:K needs audio; export a shallower model first "
                             "(pruned-upstream export MODEL --drop-layers importance:K --audio DIR)")
        student = drop_layers(student, cfg.student.drop_layers)
    if cfg.distill.layer_drop > 0:
        # stochastic depth: a skipped layer passes its input on, so its hidden state (and the
        # distillation target paired with it) stays in the loss, which teaches the remaining
        # layers to stand in for it (docs/training.md)
        student.encoder.layer_drop = layer_drop_probs(cfg.distill.layer_drop, student.num_layers,
                                                      cfg.distill.layer_drop_schedule)
    student.requires_grad_(True)
    student.mask_emb.requires_grad_(False)  # pre-training's mask embedding: unused here
    if cfg.prune.enabled:
        torch.manual_seed(cfg.train.seed)  # the gates' initial log_alpha
        make_prunable(student, cfg.prune)
    return student.train()


def final_target_sparsity(cfg: Config, student: WavLM) -> float | None:
    """The Lagrangian's final target p (of the prunable parameters); None when not pruning.

    train.target_sparsity as given, or, with prune.target_params, the p at which the whole
    model (model/prunable.py whole_model_params, DPHuBERT's count) keeps that many parameters.
    """
    if not cfg.prune.enabled:
        return None
    if cfg.prune.target_params is None:
        return cfg.train.target_sparsity
    return sparsity_for_params(cfg.prune.target_params, fixed_params(student), total_prunable(student))


def lagrangian_scale(cfg: Config, student: WavLM) -> float:
    """What the Lagrangian multiplies p_hat and p by: P / N with prune.target_params, else 1.

    DPHuBERT's gap is a whole-model sparsity, 1 - (F + E[kept]) / N with N = F + P
    (lightning.py `_step`), which is (P / N) p_hat; with the target scaled alike the term is
    DPHuBERT's, multiplier for multiplier. Without target_params the gap stays the paper's.
    """
    if not cfg.prune.enabled or cfg.prune.target_params is None:
        return 1.0
    return total_prunable(student) / whole_model_params(student)


class DistillStudent(nn.Module):
    """The student and the distiller's maps: the module DDP wraps. forward -> (loss, p_hat, pairs)."""

    def __init__(self, student: WavLM, distiller: Distiller, prune: bool):
        super().__init__()
        self.student, self.distiller, self.prune = student, distiller, prune
        self._z_mha: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(student.encoder.layers):
            if getattr(layer.self_attn, "gate_mha", None) is not None:
                layer.self_attn.gate_mha.register_forward_hook(partial(self._record_z_mha, i))

    def _record_z_mha(self, i, module, inputs, z):
        self._z_mha[i] = z.detach()

    def alive(self) -> torch.Tensor:
        """(L,) bool: layers whose sampled z_MHA is non-zero (CoFi's pairing candidates)."""
        n = self.student.num_layers
        return torch.tensor([bool(self._z_mha[i].ne(0).all()) if i in self._z_mha else True for i in range(n)])

    def forward(self, wav, lengths, teacher_states):
        self._z_mha.clear()
        states = self.student(wav, lengths)  # gates sampled in training mode
        valid = valid_frames(lengths, wav.shape[1], states[0].shape[1])
        loss, pairs = self.distiller(states, teacher_states, valid, self.alive())
        p_hat = expected_sparsity(self.student) if self.prune else loss.new_zeros(())
        return loss, p_hat, pairs


def block_gates(student: WavLM) -> dict[str, float]:
    """E[z_MHA] and E[z_FFN] per layer and their means (the paper's Figure 3a)."""
    out, means = {}, {"z_mha": [], "z_ffn": []}
    for i, layer in enumerate(student.encoder.layers):
        for key, gate in (("z_mha", getattr(layer.self_attn, "gate_mha", None)), ("z_ffn", layer.gate_ffn)):
            if gate is not None:
                value = float(expected_z(gate.log_alpha.detach()).mean())
                out[f"{key}/{i}"] = value
                means[key].append(value)
    out.update({f"{k}/mean": sum(v) / len(v) for k, v in means.items() if v})
    return out
