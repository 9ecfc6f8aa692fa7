"""Student -> compact WavLM: drop every zero of the deterministic masks, fold the rest in.

(docs/method.md section 7.) The result is a plain `WavLM` whose hidden states equal
the masked student's in evaluation mode:

- W_Q/W_K rows of dropped qk dims; W_V rows and W_O columns of dropped vo dims
  (torch's Linear stores W as (out, in)); W_U rows and W_D columns of dropped FFN
  units; whole attention/FFN blocks whose layer gate is 0.
- z_qk folds into W_Q and b_Q, z_vo into W_V and b_V, z_int into W_D's
  columns, z_MHA into W_O and b_O, z_FFN into W_D and b_D.
- A head without vo dims contributes nothing: it is dropped with its qk dims.
  A head without qk dims but with vo dims stays (softmax of its position bias).
- Layer 0 keeps its relative position embedding even when its attention is
  gone; every gate keeps reading the original 64-wide slices.
- Post-LN layers keep their LayerNorms whatever goes; pre-LN ones lose the
  norm of a block that is gone (it fed nothing else).
- Optional CNN gates: dropped output channels, and the matching input
  channels of the next conv; z_conv folds into the next conv's filters.
"""

from __future__ import annotations

import dataclasses

import torch

from .arch import HeadArch, LayerArch, WavLMArch
from .model.wavlm import WavLM


def _mask(gate, shape, like: torch.Tensor) -> torch.Tensor:
    if gate is None:
        return like.new_ones(shape)
    return gate.eval_mask().reshape(shape)


@torch.no_grad()
def export(student: WavLM) -> WavLM:
    """A gate-free compact WavLM equal to `student` in evaluation mode."""
    arch = student.arch
    like = student.mask_emb
    plans, layers = [], []
    for layer_arch, layer in zip(arch.layers, student.encoder.layers):
        plan = _plan_layer(arch, layer_arch, layer, like)
        plans.append(plan)
        layers.append(plan["arch"])
    conv_keep = _conv_keep(student, like)
    channels = tuple(len(idx) for idx, _ in conv_keep) if conv_keep else arch.conv_channels
    new_arch = dataclasses.replace(arch, layers=tuple(layers), conv_channels=channels)
    compact = WavLM(new_arch).to(like.device)
    compact.dropout_rates = dict(student.dropout_rates)  # the teacher's, recorded; inactive (model/dropout.py)
    _copy_front(student, compact, conv_keep)
    for plan, old, new in zip(plans, student.encoder.layers, compact.encoder.layers):
        _copy_layer(plan, old, new)
    return compact.eval()


# ---------------------------------------------------------------------------- transformer
def _plan_layer(arch: WavLMArch, layer_arch: LayerArch, layer, like):
    """Which heads, dims and units survive, and the mask values to fold."""
    a = layer.self_attn
    plan = {"heads": [], "units": None}
    attn_alive = layer_arch.attn
    if attn_alive and layer_arch.heads:
        n = len(layer_arch.heads)
        plan["z_mha"] = _mask(a.gate_mha, (1,), like)[0]
        attn_alive = bool(plan["z_mha"] > 0)
        z_qk = _mask(a.gate_qk, (n, a.qk_width), like)
        z_vo = _mask(a.gate_vo, (n, a.vo_width), like)
        if attn_alive:
            for j, head in enumerate(layer_arch.heads):
                vo = torch.nonzero(z_vo[j]).flatten()
                if len(vo) == 0:
                    continue  # no value dims: the head contributes nothing, its qk dims are dead
                qk = torch.nonzero(z_qk[j]).flatten()
                plan["heads"].append((j, head.index, qk, vo, z_qk[j, qk], z_vo[j, vo]))
    elif attn_alive:
        plan["z_mha"] = like.new_ones(())
    ffn_alive = layer_arch.ffn
    if ffn_alive and layer_arch.ffn_dim:
        plan["z_ffn"] = _mask(layer.gate_ffn, (1,), like)[0]
        ffn_alive = bool(plan["z_ffn"] > 0)
        z_int = _mask(layer.gate_int, (layer_arch.ffn_dim,), like)
        plan["units"] = torch.nonzero(z_int).flatten()
        plan["z_int"] = z_int[plan["units"]]
    elif ffn_alive:
        plan["z_ffn"] = like.new_ones(())
    heads = tuple(HeadArch(index, len(qk), len(vo)) for _, index, qk, vo, _, _ in plan["heads"])
    ffn_dim = len(plan["units"]) if ffn_alive and plan["units"] is not None else 0
    plan["arch"] = LayerArch(heads=heads, ffn_dim=ffn_dim, attn=attn_alive, ffn=ffn_alive)
    plan["old_qk_width"], plan["old_vo_width"] = getattr(a, "qk_width", 0), getattr(a, "vo_width", 0)
    return plan


def _rows(offsets_and_dims):
    return torch.cat([off + dims for off, dims in offsets_and_dims]) if offsets_and_dims else torch.zeros(0, dtype=torch.long)


def _copy_layer(plan, old, new):
    new_attn, old_attn = new.self_attn, old.self_attn
    if old_attn.has_relative_bias:
        new_attn.relative_attention_bias.weight.copy_(old_attn.relative_attention_bias.weight)
    for name in ("self_attn_layer_norm", "final_layer_norm"):
        if hasattr(new, name):
            getattr(new, name).load_state_dict(getattr(old, name).state_dict())
    if plan["arch"].attn:
        _copy_attention(plan, old_attn, new_attn)
    if plan["arch"].ffn:
        _copy_ffn(plan, old, new)


def _copy_attention(plan, old, new):
    wq, wv = plan["old_qk_width"], plan["old_vo_width"]
    heads = plan["heads"]
    qk_rows = _rows([(j * wq, qk) for j, _, qk, _, _, _ in heads])
    vo_rows = _rows([(j * wv, vo) for j, _, _, vo, _, _ in heads])
    z_qk = torch.cat([z for *_, z, _ in heads]) if heads else qk_rows.float()
    z_vo = torch.cat([z for *_, z in heads]) if heads else vo_rows.float()
    z_mha = plan["z_mha"]
    if heads:
        new.q_proj.weight.copy_(old.q_proj.weight[qk_rows] * z_qk[:, None])
        new.q_proj.bias.copy_(old.q_proj.bias[qk_rows] * z_qk)
        new.k_proj.weight.copy_(old.k_proj.weight[qk_rows])
        new.k_proj.bias.copy_(old.k_proj.bias[qk_rows])
        new.v_proj.weight.copy_(old.v_proj.weight[vo_rows] * z_vo[:, None])
        new.v_proj.bias.copy_(old.v_proj.bias[vo_rows] * z_vo)
        new.out_proj.weight.copy_(old.out_proj.weight[:, vo_rows] * z_mha)
        if hasattr(new, "grep_linear"):
            new.grep_linear.load_state_dict(old.grep_linear.state_dict())
            new.grep_a.copy_(old.grep_a[:, [j for j, *_ in heads]])
    new.out_proj.bias.copy_(old.out_proj.bias * z_mha)


def _copy_ffn(plan, old, new):
    z_ffn = plan["z_ffn"]
    if plan["units"] is not None and len(plan["units"]):
        units = plan["units"]
        new.fc1.weight.copy_(old.fc1.weight[units])
        new.fc1.bias.copy_(old.fc1.bias[units])
        new.fc2.weight.copy_(old.fc2.weight[:, units] * plan["z_int"][None, :] * z_ffn)
    new.fc2.bias.copy_(old.fc2.bias * z_ffn)


# ---------------------------------------------------------------------------- front end
def _conv_keep(student: WavLM, like):
    """Kept channel indices and mask values per conv layer, or None when the CNN is not gated."""
    blocks = student.feature_extractor.conv_layers
    if all(b.gate_conv is None for b in blocks):
        return None
    keep = []
    for block, channels in zip(blocks, student.arch.channels()):
        z = _mask(block.gate_conv, (channels,), like)
        idx = torch.nonzero(z).flatten()
        if len(idx) == 0:
            raise ValueError("a conv layer lost every channel: the model would output a constant")
        keep.append((idx, z[idx]))
    return keep


def _copy_front(student: WavLM, compact: WavLM, conv_keep):
    for name in ("layer_norm", "post_extract_proj", "encoder.pos_conv", "encoder.layer_norm"):
        if _has(student, name):
            compact.get_submodule(name).load_state_dict(student.get_submodule(name).state_dict())
    compact.mask_emb.copy_(student.mask_emb)
    blocks_old = student.feature_extractor.conv_layers
    blocks_new = compact.feature_extractor.conv_layers
    if conv_keep is None:
        for o, n in zip(blocks_old, blocks_new):
            n.load_state_dict({k: v for k, v in o.state_dict().items() if "gate_conv" not in k})
        return
    prev_idx, prev_z = None, None
    for o, n, (idx, z) in zip(blocks_old, blocks_new, conv_keep):
        conv_o, conv_n = getattr(o, "0"), getattr(n, "0")
        w = conv_o.weight[idx]  # (C_out kept, C_in, K)
        if prev_idx is not None:
            w = w[:, prev_idx] * prev_z[None, :, None]  # fold the previous layer's gate values
        conv_n.weight.copy_(w)
        if conv_o.bias is not None:
            conv_n.bias.copy_(conv_o.bias[idx])
        if o.has_norm:
            norm_o, norm_n = getattr(o, "2"), getattr(n, "2")
            norm_n.weight.copy_(norm_o.weight[idx])
            norm_n.bias.copy_(norm_o.bias[idx])
        prev_idx, prev_z = idx, z


def _has(model, name):
    try:
        return model.get_submodule(name) is not None
    except AttributeError:
        return False
