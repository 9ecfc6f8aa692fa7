"""Which layers matter: representation similarity and the effect of removing each layer.

    pruned-upstream analyze MODEL --audio DIR [--teacher CKPT] --out DIR [--svcca]

Per transformer layer (0-based, as in model/depth.py), over every frame of a sample of audio:

(a) similarity of the layer's input and output: linear CKA, optionally SVCCA
    (as in [Lee2021], docs/references.md);
(b) with a teacher: linear CKA of every student hidden state to every teacher one;
(c) drop: relative L2 change of the final hidden states when the layer is removed
    (probes.distortion, the measure importance:K ranks by);
(d) re-init: the same change when the layer's weights are redrawn from WavLM's
    initial distribution (`reinit_layer_`), the "ambient layer" test of [Zhou2022]
    (docs/references.md, after Zhang, Bengio and Singer 2019,
    "Are all layers created equal?", whose "re-randomisation" this is: a distilled
    student's own initial values are the teacher's weights).

Written into the output directory: layers.md (the table), analysis.json (every
number) and PNG figures.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..model.hardconcrete import HardConcrete
from ..model.wavlm import WavLM
from .probes import as_utterances, distortion, final_state, hidden_states, load_audio_sample, relative_l2
from .similarity import cka_matrix, linear_cka, svcca

INIT_STD = 0.02  # fairseq init_bert_params, applied by WavLM's TransformerEncoder (s3prl upstream/wavlm)
MAX_FRAMES = 4000  # frames kept for similarities: CKA costs O(N D^2) per pair


# ---------------------------------------------------------------------------- re-initialisation
@torch.no_grad()
def reinit_layer_(layer: nn.Module, seed: int = 0) -> nn.Module:
    """Redraw a transformer layer's weights from WavLM's initial distribution, in place.

    The distribution is the release's (fairseq `init_bert_params`, s3prl
    upstream/wavlm/modules.py): Linear weights ~ N(0, 0.02^2), biases 0; LayerNorm
    weight 1, bias 0; the position-bias gate constant `grep_a` 1. Shapes stay (a
    pruned layer keeps its heads and units). Left alone: gates (`log_alpha`: the
    layer's block structure) and the relative position embedding (layer 0 holds it
    for every layer). Any other parameter is an error.
    """
    g = torch.Generator().manual_seed(seed)
    modules = dict(layer.named_modules())
    for name, p in layer.named_parameters():
        owner_name, _, leaf = name.rpartition(".")
        owner = modules[owner_name]
        if isinstance(owner, HardConcrete) or "relative_attention_bias" in name:
            continue
        if isinstance(owner, nn.Linear) and leaf == "weight":
            p.copy_(torch.randn(p.shape, generator=g) * INIT_STD)
        elif isinstance(owner, nn.Linear) and leaf == "bias" or isinstance(owner, nn.LayerNorm) and leaf == "bias":
            p.zero_()
        elif isinstance(owner, nn.LayerNorm) and leaf == "weight" or leaf == "grep_a":
            p.fill_(1.0)
        else:
            raise ValueError(f"no initial distribution known for parameter {name!r} of shape {tuple(p.shape)}")
    return layer


def reinit_distortion(model: WavLM, index: int, audio, reference: torch.Tensor | None = None, seed: int = 0) -> float:
    """Relative L2 change of the final hidden states when layer `index` is re-initialised (a copy)."""
    if reference is None:
        reference = final_state(model, audio)
    other = copy.deepcopy(model)
    reinit_layer_(other.encoder.layers[index], seed)
    return relative_l2(final_state(other, audio), reference)


# ---------------------------------------------------------------------------- per-layer table
def layer_io(model: WavLM, audio) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Hidden states, and each layer's input and output, each (N, D).

    Hidden state i is layer i's input and hidden state i + 1 its output, except the last
    layer of a pre-LN model, whose own output (before the final LayerNorm) is recorded.
    """
    last = []

    def record(module, args, output):  # EncoderLayer(x, padding_mask, bias) -> (x, bias)
        last.append(output[0][0])  # (T, D) of the one utterance

    handle = model.encoder.layers[-1].register_forward_hook(record)
    try:
        states = hidden_states(model, audio)
    finally:
        handle.remove()
    return states, states[:-1], states[1:-1] + [torch.cat(last)]


def _frames(n: int, max_frames: int) -> torch.Tensor:
    """Evenly spaced frame indices, at most `max_frames` of `n`."""
    return torch.linspace(0, n - 1, min(n, max_frames)).round().long()


def layer_analysis(model: WavLM, audio, teacher: WavLM | None = None, use_svcca: bool = False,
                   seed: int = 0, max_frames: int = MAX_FRAMES) -> dict:
    """(a)-(d) of the module docstring: {"rows": one dict per layer, "student_self", "student_teacher"}."""
    audio = as_utterances(audio)
    states, ins, outs = layer_io(model, audio)
    idx = _frames(states[0].shape[0], max_frames)
    reference = states[-1]
    rows = []
    for i in tqdm(range(model.num_layers), desc="layers", leave=False):
        x, y = ins[i][idx], outs[i][idx]
        row = dict(layer=i, cka_in_out=linear_cka(x, y))
        if use_svcca:
            row["svcca_in_out"] = svcca(x, y)
        row["drop_rel_l2"] = distortion(model, [i], audio, reference)
        row["reinit_rel_l2"] = reinit_distortion(model, i, audio, reference, seed + i)
        rows.append(row)
    picked = [s[idx] for s in states]
    result = dict(rows=rows, student_self=cka_matrix(picked, picked).tolist(), student_teacher=None)
    if teacher is not None:
        t_states = hidden_states(teacher, audio)
        if t_states[0].shape[0] != states[0].shape[0]:
            raise ValueError(
                f"the teacher gives {t_states[0].shape[0]} frames and the student {states[0].shape[0]} "
                "on the same audio: their CNNs differ"
            )
        matrix = cka_matrix(picked, [s[idx] for s in t_states])  # (L_s + 1, L_t + 1)
        result["student_teacher"] = matrix.tolist()
        for row in rows:  # the teacher state closest to the layer's output (student state i + 1)
            best = int(matrix[row["layer"] + 1].argmax())
            row["closest_teacher_state"], row["closest_teacher_cka"] = best, float(matrix[row["layer"] + 1, best])
    return result


# ---------------------------------------------------------------------------- report
def table_markdown(result: dict) -> str:
    rows = result["rows"]
    cols = [("layer", "layer", "{}"), ("cka_in_out", "CKA(in, out)", "{:.4f}")]
    if rows and "svcca_in_out" in rows[0]:
        cols.append(("svcca_in_out", "SVCCA(in, out)", "{:.4f}"))
    cols += [("drop_rel_l2", "drop: rel. L2", "{:.4f}"), ("reinit_rel_l2", "re-init: rel. L2", "{:.4f}")]
    if rows and "closest_teacher_state" in rows[0]:
        cols += [("closest_teacher_state", "closest teacher state", "{}"), ("closest_teacher_cka", "its CKA", "{:.4f}")]
    lines = ["| " + " | ".join(title for _, title, _ in cols) + " |", "|" + " ---: |" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[key]) for key, _, fmt in cols) + " |")
    return "\n".join(lines) + "\n"


_README = """Layers are numbered from 0. Hidden state i is the input of layer i; the last one is the
encoder output. CKA(in, out): linear CKA of the layer's input and output frames (1: the layer
changes the representation at most by a rotation and scale). drop / re-init: relative L2 change
||H' - H|| / ||H|| of the final hidden states when the layer is removed / its weights are redrawn
from the initial distribution N(0, 0.02^2). Low values mark layers that are safe to drop
(`--drop-layers importance:K` drops the K lowest "drop" values).
"""


def write_report(result: dict, out_dir, model_name: str = "model") -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "analysis.json").write_text(json.dumps(result, indent=1))
    text = f"# Layer analysis of {model_name}\n\n{_README}\n{table_markdown(result)}"
    (out / "layers.md").write_text(text)
    _heatmap(result["student_self"], out / "cka_student.png", "student hidden state", "student hidden state",
             "linear CKA between the student's hidden states")
    if result["student_teacher"] is not None:
        _heatmap(result["student_teacher"], out / "cka_student_teacher.png", "teacher hidden state",
                 "student hidden state", "linear CKA, student vs teacher")
    _effects_plot(result["rows"], out / "layer_effects.png")


def _heatmap(matrix, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(matrix, origin="lower", vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _effects_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [r["layer"] for r in rows]
    panels = [("cka_in_out", "CKA(in, out)"), ("drop_rel_l2", "drop: rel. L2"), ("reinit_rel_l2", "re-init: rel. L2")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 6), sharex=True)
    for ax, (key, label) in zip(axes, panels):
        ax.bar(layers, [r[key] for r in rows])
        ax.set_ylabel(label)
    axes[-1].set_xlabel("layer (0-based)")
    axes[-1].set_xticks(layers)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------- entry point
def analyze(model_path, audio_dir, out_dir, teacher=None, use_svcca: bool = False,
            max_files: int = 16, max_seconds: float = 8.0, seed: int = 0) -> int:
    """Load the model (and teacher), analyse it on a sample of `audio_dir`, write the report; exit code."""
    from ..checkpoints import load_model

    torch.manual_seed(seed)
    model = load_model(model_path)
    teacher_model = load_model(teacher) if teacher else None
    audio = load_audio_sample(audio_dir, max_files, max_seconds)
    result = layer_analysis(model, audio, teacher_model, use_svcca, seed)
    result["model"], result["teacher"], result["utterances"] = str(model_path), teacher and str(teacher), len(audio)
    write_report(result, out_dir, Path(model_path).name)
    print(f"layer analysis of {model_path} ({len(audio)} utterances) written to {out_dir}/layers.md")
    return 0
