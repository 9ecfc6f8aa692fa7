"""Which layers to drop: importance ranked on audio, and the truncation / uniform / importance study.

    shallow = drop_layers(model, "importance:4", audio=load_audio_sample("wavs/"))
    rows = compare_drop_strategies(model, audio)        # layer pruning on demand's comparison

Specs are those of `model.depth` plus "importance:K": the K layers whose
individual removal distorts the final hidden states least (docs/layers.md).
"""

from __future__ import annotations

from ..model.depth import check_k, needs_audio, parse_spec, planned_layers, remove_layers, top_layers, uniform_layers
from ..model.wavlm import WavLM
from .probes import distortion, final_state, relative_l2
from .similarity import linear_cka


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
    check_k(model.num_layers, k)
    if audio is None:
        raise needs_audio(model.num_layers, k)
    scores = layer_importance(model, audio)
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    return sorted(order[:k])


def choose_layers(model: WavLM, spec, audio=None) -> list[int]:
    """The sorted 0-based indices of the layers a spec drops (model.depth's specs and importance:K)."""
    parsed = parse_spec(spec, model.num_layers)
    if isinstance(parsed, tuple) and parsed[0] == "importance":
        return importance_layers(model, parsed[1], audio)
    return planned_layers(model.num_layers, spec)


def drop_layers(model: WavLM, spec, audio=None) -> WavLM:
    """model.depth.drop_layers, with importance:K ranked on `audio`."""
    return remove_layers(model, choose_layers(model, spec, audio))


def compare_drop_strategies(model: WavLM, audio, fractions=(1 / 3, 1 / 2)) -> list[dict]:
    """Truncation vs uniform vs importance dropping at each fraction of the layers ([YehChiang]'s comparison, docs/references.md).

    Per (fraction, strategy): K = round(fraction * L), the dropped indices, and the
    distortion of the final hidden states (relative L2, and 1 - linear CKA against
    the full model's). Importance is ranked once and reused for every fraction.
    """
    n = model.num_layers
    reference = final_state(model, audio)
    scores = layer_importance(model, audio)
    by_score = sorted(range(n), key=lambda i: (scores[i], i))
    rows = []
    for fraction in fractions:
        k = round(fraction * n)
        check_k(n, k)
        plans = {"top": top_layers(n, k), "uniform": uniform_layers(n, k), "importance": sorted(by_score[:k])}
        for strategy, drop in plans.items():
            final = final_state(remove_layers(model, drop), audio)
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
