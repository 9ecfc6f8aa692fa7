"""A WavLM Base pruned to a given sparsity without training, to measure speed before any run.

    arch = synthetic_arch(0.8)               # transformer pruned, CNN whole
    arch = synthetic_arch(0.8, cnn=True)     # the same parameter count, CNN channels pruned too

The pattern imitates what the paper's pruning produces (its Figure 3b: the bottom
layers lose the most and the kept weights concentrate at the top; whole blocks
go; heads keep different query/key and value sizes, some none of their
query/key dims). With a fixed seed:

- every layer l gets a depth weight w_l rising linearly from 0.25 (bottom) to
  1.75 (top); one global scale a, found by bisection, sets its keep fraction a w_l;
- whole blocks of the bottom half are removed: int(p L / 4) attention blocks and
  int(p L / 8) FFN blocks (2 and 1 for Base at p = 0.8);
- each head draws an importance u in [0.2, 1.8] and a qk/vo ratio r in [0.5, 1.5]:
  with f = min(1, a w_l u), a head with f < MIN_HEAD goes whole, the others keep
  vo = round(64 f) value dims and round(64 min(1, f r)) query/key dims; in
  int(p L / 2) bottom layers one head keeps no query/key dim (its attention is
  the softmax of the position bias alone);
- each FFN keeps round(3072 min(1, a w_l v)) units, v in [0.8, 1.2];
- with `cnn=True`, conv layers 0..n-2 keep `cnn_keep` of their output channels
  (the last feeds a LayerNorm over channels and stays whole) and the parameters
  the CNN saves are spent in the transformer: `sparsity` is then the budget
  sparsity, that of the CNN-whole model with the same parameter count
  (budget_sparsity), so both models have the same size.

Sparsity is that of docs/method.md section 4 and model/prunable.py: per layer a qk dim
owns 2D + 2 parameters, a vo dim 2D + 1, an FFN unit 2D + 1 (D = 768).
"""

from __future__ import annotations

import dataclasses
import random

from .arch import HeadArch, LayerArch, WavLMArch, preset

TOLERANCE = 0.005  # realised sparsity within this of the target (docs/performance.md)
MIN_HEAD = 0.08  # a head keeping less than this fraction of its dims goes whole
CNN_KEEP = 0.35  # with cnn=True: 3x dense Base's speed at p = 0.8 on our CPU (docs/performance.md)


# ---------------------------------------------------------------------------- counting
def transformer_prunable(arch: WavLMArch) -> int:
    """Prunable transformer parameters the architecture keeps (docs/method.md section 4)."""
    d, total = arch.embed_dim, 0
    for layer in arch.layers:
        if layer.attn:
            total += layer.qk_total * (2 * d + 2) + layer.vo_total * (2 * d + 1)
        if layer.ffn:
            total += layer.ffn_dim * (2 * d + 1)
    return total


def cnn_prunable(arch: WavLMArch) -> int:
    """CNN parameters (filters, biases, GroupNorm affine), counted as model/prunable.py counts them."""
    total, c_in = 0, 1
    for i, ((_, kernel, _), c_out) in enumerate(zip(arch.conv_layers, arch.channels())):
        has_norm = arch.extractor_mode == "layer_norm" or i == 0
        total += c_out * c_in * kernel + c_out * ((1 if arch.conv_bias else 0) + (2 if has_norm else 0))
        c_in = c_out
    return total


def sparsity_of(arch: WavLMArch, base: WavLMArch) -> float:
    """1 - kept prunable / all prunable transformer parameters, against the dense `base`."""
    return 1.0 - transformer_prunable(arch) / transformer_prunable(base)


def budget_sparsity(arch: WavLMArch, base: WavLMArch) -> float:
    """The sparsity of the CNN-whole model with the same parameter count as `arch`.

    1 - (kept transformer + kept CNN - whole CNN) / all transformer: CNN parameters
    pruned away are spent in the transformer. Equals sparsity_of with the CNN whole.
    """
    kept = transformer_prunable(arch) + cnn_prunable(arch) - cnn_prunable(base)
    return 1.0 - kept / transformer_prunable(base)


# ---------------------------------------------------------------------------- the pattern
def synthetic_arch(
    sparsity: float,
    base: WavLMArch = preset("base"),
    cnn: bool = False,
    seed: int = 0,
    cnn_keep: float = CNN_KEEP,
) -> WavLMArch:
    """`base` pruned to `sparsity` of its prunable parameters with the module docstring's pattern."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
    if not base.is_dense():
        raise ValueError("the base architecture must be dense (every head, unit, block and channel)")
    if cnn and base.extractor_mode != "default":
        raise ValueError(
            f"CNN pruning needs the group-norm extractor, not {base.extractor_mode!r}: "
            "a layer-norm CNN normalises over channels"
        )
    if not 0.0 < cnn_keep <= 1.0:
        raise ValueError(f"cnn_keep must lie in (0, 1], got {cnn_keep}")
    if sparsity == 0.0:
        return base
    draws = _draw(base, sparsity, seed)
    if cnn:
        channels = tuple(max(1, round(c * cnn_keep)) for c in base.channels()[:-1]) + base.channels()[-1:]
        base_cnn = dataclasses.replace(base, conv_channels=channels)
    else:
        base_cnn = base
    arch = _bisect(lambda a: _build(base_cnn, draws, a), base, sparsity)
    got = budget_sparsity(arch, base)
    if abs(got - sparsity) > TOLERANCE:
        raise ValueError(
            f"cannot reach sparsity {sparsity} with this pattern (closest {got:.4f}); "
            + ("the CNN alone may exceed the budget: raise cnn_keep" if cnn else "")
        )
    return arch


def _draw(base: WavLMArch, sparsity: float, seed: int) -> dict:
    """Every random choice of the pattern, made once so that the bisection sees a monotone function."""
    rng, n = random.Random(seed), base.num_layers
    bottom = list(range(n // 2))
    no_attn = set(rng.sample(bottom, min(len(bottom), int(sparsity * n / 4))))
    rest = [i for i in bottom if i not in no_attn]
    no_ffn = set(rng.sample(rest, min(len(rest), int(sparsity * n / 8))))
    qk_zero_layers = [i for i in bottom if i not in no_attn][: int(sparsity * n / 2)]
    return dict(
        weight=[0.25 + 1.5 * i / max(1, n - 1) for i in range(n)],
        no_attn=no_attn,
        no_ffn=no_ffn,
        qk_zero={i: rng.randrange(base.num_heads) for i in qk_zero_layers},
        head_u=[[rng.uniform(0.2, 1.8) for _ in range(base.num_heads)] for _ in range(n)],
        head_ratio=[[rng.uniform(0.5, 1.5) for _ in range(base.num_heads)] for _ in range(n)],
        ffn_v=[rng.uniform(0.8, 1.2) for _ in range(n)],
    )


def _build(base: WavLMArch, draws: dict, scale: float) -> WavLMArch:
    layers = []
    for i, dense in enumerate(base.layers):
        keep = scale * draws["weight"][i]
        heads = () if i in draws["no_attn"] else _heads(base, draws, i, keep)
        ffn_dim = 0 if i in draws["no_ffn"] else round(dense.ffn_dim * min(1.0, keep * draws["ffn_v"][i]))
        layers.append(LayerArch(heads=heads, ffn_dim=ffn_dim, attn=bool(heads), ffn=ffn_dim > 0))
    return dataclasses.replace(base, layers=tuple(layers))


def _heads(base: WavLMArch, draws: dict, i: int, keep: float) -> tuple[HeadArch, ...]:
    heads = []
    for h in range(base.num_heads):
        frac = min(1.0, keep * draws["head_u"][i][h])
        if frac < MIN_HEAD:  # the head goes whole (a head without value dims contributes nothing)
            continue
        vo = max(1, round(base.head_dim * frac))
        qk = 0 if draws["qk_zero"].get(i) == h else round(base.head_dim * min(1.0, frac * draws["head_ratio"][i][h]))
        heads.append(HeadArch(h, qk, vo))
    return tuple(heads)


def _bisect(build, base: WavLMArch, sparsity: float, steps: int = 60) -> WavLMArch:
    """The scale whose architecture comes closest to the target budget_sparsity.

    Kept parameters never decrease with the scale, so bisection finds the step
    where the target is crossed; the nearer side of it is returned.
    """
    lo, hi = 0.0, 1.0
    while budget_sparsity(build(hi), base) > sparsity and hi < 1e6:
        hi *= 2.0
    for _ in range(steps):
        mid = (lo + hi) / 2.0
        if budget_sparsity(build(mid), base) > sparsity:
            lo = mid
        else:
            hi = mid
    below, above = build(lo), build(hi)
    return min((below, above), key=lambda a: abs(budget_sparsity(a, base) - sparsity))
