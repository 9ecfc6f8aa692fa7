"""Layers on demand: drop whole transformer layers of a WavLM, and choose which (issue 6).

    shallow = drop_layers(model, [1, 4])               # a plain WavLM with 2 layers fewer
    shallow = drop_layers(model, "uniform:4")
    shallow = drop_layers(model, "importance:4", audio=load_audio_sample("wavs/"))

Convention: transformer layers are numbered from 0, bottom to top. Hidden state
i is the input of layer i (hidden state 0 is the CNN + positional-conv output),
the last one the encoder's output, so a model with L layers has L + 1 hidden
states and dropping K layers leaves L - K + 1. A spec is a list of indices, or a
string: "3,7" (indices), "top:K" (truncation: the K highest layers),
"uniform:K" (spread over the depth) or "importance:K" (measured on audio).

WavLM's relative position embedding lives in layer 0 and is shared by every
layer; when layer 0 goes, the new first layer receives it, so the kept layers
see the same position bias as before. Gates of a student (make_prunable) travel
with their layers, so a student can be made shallower before or after its gates
are attached.

Distortion (`distortion`): the relative L2 change of the final hidden states,
||H' - H||_F / ||H||_F over every frame of every utterance of a sample.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
from contextlib import contextmanager

import torch

from .model.wavlm import SAMPLE_RATE, WavLM

log = logging.getLogger(__name__)

STRATEGIES = ("top", "uniform", "importance")
ATTN_GATES = ("gate_mha", "gate_qk", "gate_vo")
FFN_GATES = ("gate_ffn", "gate_int")
_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_SHARED_BIAS = "self_attn.relative_attention_bias.weight"  # lives in layer 0, used by all


# ---------------------------------------------------------------------------- audio
def as_utterances(audio) -> list[torch.Tensor]:
    """A (S,) or (B, S) tensor, or a list of 1-D waveforms -> a list of (S_i,) float tensors."""
    if audio is None:
        raise ValueError("no audio given")
    if isinstance(audio, torch.Tensor):
        if audio.dim() not in (1, 2):
            raise ValueError(f"audio must be (samples,) or (batch, samples), got shape {tuple(audio.shape)}")
        audio = [audio] if audio.dim() == 1 else list(audio)
    utts = [torch.as_tensor(a, dtype=torch.float32).reshape(-1) for a in audio]
    if not utts or any(u.numel() == 0 for u in utts):
        raise ValueError(f"audio must hold at least one non-empty waveform, got {len(utts)} waveform(s)")
    return utts


def load_audio_sample(audio_dir, max_files: int = 16, max_seconds: float = 8.0) -> list[torch.Tensor]:
    """The first `max_files` readable files under `audio_dir` (sorted), each cut to `max_seconds`.

    Unusable files (see audio.REASONS) are skipped with a warning.
    """
    from .data.audio import AudioError, read_audio
    from .data.manifest import find_audio

    limit = int(max_seconds * SAMPLE_RATE)
    utts = []
    for path in find_audio(audio_dir):
        if len(utts) == max_files:
            break
        try:
            utts.append(read_audio(path)[:limit])
        except AudioError as err:
            log.warning("skipped %s", err)
    if not utts:
        raise ValueError(f"no readable audio under {audio_dir}")
    return utts


@contextmanager
def _evaluating(model: torch.nn.Module):
    """Evaluation mode (deterministic gates) without gradients, the previous mode restored after."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(training)


def hidden_states(model: WavLM, audio, last_only: bool = False) -> list[torch.Tensor]:
    """Every hidden state (or only the final one) over the sample, each (N, D), N = all frames.

    Utterances run one at a time (no padding), in evaluation mode.
    """
    device = model.mask_emb.device
    per_utt = []
    with _evaluating(model):
        for wav in as_utterances(audio):
            states = model(wav.to(device)[None])  # list of (1, T_i, D)
            per_utt.append([h[0] for h in (states[-1:] if last_only else states)])
    return [torch.cat(layer) for layer in zip(*per_utt)]  # each (N, D)


def final_state(model: WavLM, audio) -> torch.Tensor:
    """The final hidden state over the sample, (N, D)."""
    return hidden_states(model, audio, last_only=True)[0]


def relative_l2(new: torch.Tensor, ref: torch.Tensor) -> float:
    """||new - ref||_F / ||ref||_F, in float64."""
    if new.shape != ref.shape:
        raise ValueError(f"shapes differ: {tuple(new.shape)} vs {tuple(ref.shape)}")
    ref = ref.double()
    return float((new.double() - ref).norm() / ref.norm().clamp(min=1e-30))


def distortion(model: WavLM, drop, audio, reference: torch.Tensor | None = None) -> float:
    """Relative L2 change of the final hidden states when the layers `drop` are removed."""
    if reference is None:
        reference = final_state(model, audio)
    return relative_l2(final_state(drop_layers(model, drop), audio), reference)


# ---------------------------------------------------------------------------- choosing
def top_layers(num_layers: int, k: int) -> list[int]:
    """Truncation: the K highest layers."""
    _check_k(num_layers, k)
    return list(range(num_layers - k, num_layers))


def uniform_layers(num_layers: int, k: int) -> list[int]:
    """The middle layer of each of K equal groups of the depth (ties: the lower one).

    Group j covers [j N / K, (j + 1) N / K); its middle is floor(j N / K + (N / K - 1) / 2).
    For N = 18, K = 6 this drops 1, 4, 7, 10, 13, 16: the seed 000's "dropping layer
    2, 5, 8, 11, 14, 17" of an 18-layer model, numbered there from 1
    (shared/seeds/000_8d5fe8b66df57a31.txt). First and last layers stay while the
    groups have 3 or more layers; at K = N / 2 the first layer goes.
    """
    _check_k(num_layers, k)
    n = num_layers
    return [(2 * j * n + n - k) // (2 * k) for j in range(k)]  # the formula above, in integers


def layer_importance(model: WavLM, audio) -> list[float]:
    """Per layer: the distortion of the final hidden states when that layer alone is dropped."""
    reference = final_state(model, audio)
    return [distortion(model, [i], audio, reference) for i in range(model.num_layers)]


def importance_layers(model: WavLM, k: int, audio) -> list[int]:
    """One-shot: the K layers whose individual removal distorts the final hidden states least.

    Each layer is dropped alone once (L forward passes over the sample); the K smallest
    distortions win, ties going to the lower index. Not greedy: interactions between
    dropped layers are not re-measured (compare_drop_strategies reports the joint effect).
    """
    _check_k(model.num_layers, k)
    if audio is None:
        raise ValueError(
            f"importance:{k} needs a sample of audio to rank the layers: pass audio= to "
            "pruned_upstream.layers.drop_layers / choose_layers (the command line's --audio DIR), "
            "or give the layer indices to drop"
        )
    scores = layer_importance(model, audio)
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    return sorted(order[:k])


def choose_layers(model: WavLM, spec, audio=None) -> list[int]:
    """The sorted 0-based indices of the layers a spec drops (module docstring)."""
    n = model.num_layers
    parsed = parse_spec(spec, n)
    if isinstance(parsed, list):
        return parsed
    strategy, k = parsed
    if strategy == "top":
        return top_layers(n, k)
    if strategy == "uniform":
        return uniform_layers(n, k)
    return importance_layers(model, k, audio)


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
            _check_k(num_layers, int(k))
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


def _check_k(num_layers: int, k: int) -> None:
    if not 1 <= k < num_layers:
        raise ValueError(f"K={k} layers to drop: must lie in [1, {num_layers - 1}] for a {num_layers}-layer model")


# ---------------------------------------------------------------------------- dropping
def drop_layers(model: WavLM, spec, audio=None) -> WavLM:
    """A new WavLM without the layers of `spec` (same class, shallower arch); `model` is untouched.

    The result is in `model`'s mode, device and dtype; gates of kept layers are copied.
    """
    from .checkpoints import build_strict

    drop = choose_layers(model, spec, audio)
    if not drop:
        return model
    keep = [i for i in range(model.num_layers) if i not in drop]
    arch = dataclasses.replace(model.arch, layers=tuple(model.arch.layers[i] for i in keep))
    state = _shallower_state(model.state_dict(), keep)
    shallow = build_strict(arch, state, f"<{model.num_layers}-layer model without layers {drop}>")
    _copy_gates(model, shallow, keep)
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


# ---------------------------------------------------------------------------- comparison
def compare_drop_strategies(model: WavLM, audio, fractions=(1 / 3, 1 / 2)) -> list[dict]:
    """Truncation vs uniform vs importance dropping at each fraction of the layers (seed 000's table).

    Per (fraction, strategy): K = round(fraction * L), the dropped indices, and the
    distortion of the final hidden states (relative L2, and 1 - linear CKA against
    the full model's). Importance is ranked once and reused for every fraction.
    """
    from .analysis import linear_cka

    n = model.num_layers
    reference = final_state(model, audio)
    scores = layer_importance(model, audio)
    by_score = sorted(range(n), key=lambda i: (scores[i], i))
    rows = []
    for fraction in fractions:
        k = round(fraction * n)
        _check_k(n, k)
        plans = {"top": top_layers(n, k), "uniform": uniform_layers(n, k), "importance": sorted(by_score[:k])}
        for strategy, drop in plans.items():
            final = final_state(drop_layers(model, drop), audio)
            rows.append(
                dict(
                    fraction=fraction,
                    k=k,
                    kept=n - k,
                    strategy=strategy,
                    dropped=drop,
                    rel_l2=relative_l2(final, reference),
                    one_minus_cka=1.0 - linear_cka(final, reference),
                )
            )
    return rows


def comparison_markdown(rows: list[dict]) -> str:
    """compare_drop_strategies' rows as a Markdown table."""
    lines = [
        "| dropped | K | strategy | layers dropped (0-based) | rel. L2 of final states | 1 - CKA |",
        "| --- | ---: | --- | --- | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['fraction']:.2f} | {r['k']} | {r['strategy']} | {', '.join(map(str, r['dropped']))} "
            f"| {r['rel_l2']:.4f} | {r['one_minus_cka']:.4f} |"
        )
    return "\n".join(lines) + "\n"

