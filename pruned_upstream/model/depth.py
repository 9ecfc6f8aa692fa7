"""Model depth on demand: drop whole transformer layers of a WavLM (model surgery, no data).

    shallow = drop_layers(model, [1, 4])               # a plain WavLM with 2 layers fewer
    shallow = drop_layers(model, "uniform:4")          # or "top:4", or "3,7"

Convention: transformer layers are numbered from 0, bottom to top. Hidden state
i is the input of layer i (hidden state 0 is the CNN + positional-conv output),
the last one the encoder's output, so a model with L layers has L + 1 hidden
states and dropping K layers leaves L - K + 1. A spec is a list of indices, or a
string: "3,7" (indices), "top:K" (truncation: the K highest layers),
"uniform:K" (spread over the depth). "importance:K" ranks layers on audio: it
is a measurement (`pruned_upstream.analysis.layer_choice`), refused here.

WavLM's relative position embedding lives in layer 0 and is shared by every
layer; when layer 0 goes, the new first layer receives it, so the kept layers
see the same position bias as before. Gates of a student (make_prunable) travel
with their layers, so a student can be made shallower before or after its gates
are attached.
"""

from __future__ import annotations

import copy
import dataclasses
import re

from .dropout import active_dropout, apply_dropout
from .wavlm import WavLM

STRATEGIES = ("top", "uniform", "importance")
ATTN_GATES = ("gate_mha", "gate_qk", "gate_vo")
FFN_GATES = ("gate_ffn", "gate_int")
_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_SHARED_BIAS = "self_attn.relative_attention_bias.weight"  # lives in layer 0, used by all


# ---------------------------------------------------------------------------- choosing
def top_layers(num_layers: int, k: int) -> list[int]:
    """Truncation: the K highest layers."""
    check_k(num_layers, k)
    return list(range(num_layers - k, num_layers))


def uniform_layers(num_layers: int, k: int) -> list[int]:
    """The middle layer of each of K equal groups of the depth (ties: the lower one).

    Group j covers [j N / K, (j + 1) N / K); its middle is floor(j N / K + (N / K - 1) / 2).
    For N = 18, K = 6 this drops 1, 4, 7, 10, 13, 16: the "dropping layer
    2, 5, 8, 11, 14, 17" of an 18-layer model in [YehChiang] (docs/references.md),
    numbered there from 1. First and last layers stay while the
    groups have 3 or more layers; at K = N / 2 the first layer goes.
    """
    check_k(num_layers, k)
    n = num_layers
    return [(2 * j * n + n - k) // (2 * k) for j in range(k)]  # the formula above, in integers


def needs_audio(num_layers: int, k: int) -> ValueError:
    """The error for importance:K where no audio sample is at hand."""
    return ValueError(
        f"importance:{k} needs a sample of audio to rank the layers: pass audio= to "
        "pruned_upstream.analysis.layer_choice.drop_layers / choose_layers (the command line's --audio DIR), "
        "or give the layer indices to drop"
    )


def planned_layers(num_layers: int, spec) -> list[int]:
    """The sorted 0-based indices a data-free spec drops (indices, top:K, uniform:K)."""
    parsed = parse_spec(spec, num_layers)
    if isinstance(parsed, list):
        return parsed
    strategy, k = parsed
    if strategy == "top":
        return top_layers(num_layers, k)
    if strategy == "uniform":
        return uniform_layers(num_layers, k)
    raise needs_audio(num_layers, k)


def parse_spec(spec, num_layers: int) -> list[int] | tuple[str, int]:
    """Indices (an int, list, tuple, "3,7") -> sorted checked list; "top:K" etc. -> (strategy, K)."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = [spec]  # YAML's `drop_layers: 3`
    if isinstance(spec, str):
        text = spec.strip()
        if ":" in text:
            strategy, _, k = text.partition(":")
            if strategy.strip() not in STRATEGIES or not k.strip().isdigit():
                raise ValueError(f"bad layer spec {spec!r}: expected STRATEGY:K with STRATEGY in {STRATEGIES}")
            check_k(num_layers, int(k))
            return strategy.strip(), int(k)
        items = [s.strip() for s in text.split(",")]
        if not all(re.fullmatch(r"\d+", s) for s in items):
            raise ValueError(
                f"bad layer spec {spec!r}: expected 0-based indices such as '3,7', or top:K, uniform:K, importance:K"
            )
        spec = [int(s) for s in items]
    if not isinstance(spec, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in spec):
        raise ValueError(f"bad layer spec {spec!r}: expected a list of 0-based layer indices or a string")
    bad = [i for i in spec if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"layer indices {bad} out of range: the model has layers 0..{num_layers - 1}")
    if len(set(spec)) != len(spec):
        raise ValueError(f"layer spec {list(spec)} repeats an index")
    if len(spec) >= num_layers:
        raise ValueError(f"layer spec {list(spec)} drops all {num_layers} layers: keep at least one")
    return sorted(spec)


def check_k(num_layers: int, k: int) -> None:
    if not 1 <= k < num_layers:
        raise ValueError(f"K={k} layers to drop: must lie in [1, {num_layers - 1}] for a {num_layers}-layer model")


# ---------------------------------------------------------------------------- dropping
def drop_layers(model: WavLM, spec) -> WavLM:
    """A new WavLM without the layers of `spec` (same class, shallower arch); `model` is untouched.

    The result is in `model`'s mode, device and dtype; gates of kept layers are copied.
    """
    drop = planned_layers(model.num_layers, spec)
    return remove_layers(model, drop)


def remove_layers(model: WavLM, drop: list[int]) -> WavLM:
    """`drop_layers` for checked, sorted indices."""
    if not drop:
        return model
    keep = [i for i in range(model.num_layers) if i not in drop]
    arch = dataclasses.replace(model.arch, layers=tuple(model.arch.layers[i] for i in keep))
    shallow = WavLM(arch)
    shallow.load_state_dict(_shallower_state(model.state_dict(), keep), strict=True)
    _copy_gates(model, shallow, keep)
    shallow.dropout_rates, shallow.feature_grad_mult = dict(model.dropout_rates), model.feature_grad_mult
    apply_dropout(shallow, active_dropout(model))  # the recorded and the active rates go with the layers
    like = model.mask_emb
    return shallow.to(device=like.device, dtype=like.dtype).train(model.training)


def _shallower_state(state: dict, keep: list[int]) -> dict:
    """Renumber the kept layers' keys 0..len(keep)-1; the shared position embedding stays in layer 0."""
    new_index = {old: new for new, old in enumerate(keep)}
    out = {}
    for key, value in state.items():
        if key.endswith("log_alpha"):
            continue  # gates are modules, copied by _copy_gates
        m = _LAYER_KEY.match(key)
        if m is None:
            out[key] = value
        elif m.group(2) == _SHARED_BIAS:
            out[key] = value  # layer 0 -> the new layer 0, whichever old layer that is
        elif int(m.group(1)) in new_index:
            out[f"encoder.layers.{new_index[int(m.group(1))]}.{m.group(2)}"] = value
    return out


def _copy_gates(model: WavLM, shallow: WavLM, keep: list[int]) -> None:
    for new, old in enumerate(keep):
        src, dst = model.encoder.layers[old], shallow.encoder.layers[new]
        for name in FFN_GATES:
            if getattr(src, name) is not None:
                setattr(dst, name, copy.deepcopy(getattr(src, name)))
        for name in ATTN_GATES:
            if getattr(src.self_attn, name) is not None:
                setattr(dst.self_attn, name, copy.deepcopy(getattr(src.self_attn, name)))
    for src, dst in zip(model.feature_extractor.conv_layers, shallow.feature_extractor.conv_layers):
        if src.gate_conv is not None:
            dst.gate_conv = copy.deepcopy(src.gate_conv)
