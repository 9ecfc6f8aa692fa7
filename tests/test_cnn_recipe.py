"""configs/wavlm_base_sp80_cnn.yaml: the paper's recipe with CNN channel gates, and a short real run of it."""

from __future__ import annotations

import json

import pytest
import torch

from training_fixtures import write_manifest

from pruned_upstream import run_dir as run_io
from pruned_upstream.arch import preset
from pruned_upstream.config_files import load_config
from pruned_upstream.exporting import export
from pruned_upstream.model.wavlm import tiny_arch
from pruned_upstream.run_dir import load_student
from pruned_upstream.synthetic_pruning import cnn_prunable, transformer_prunable
from pruned_upstream.training.run import run_prune

RECIPE = "wavlm_base_sp80_cnn"


def test_recipe_is_the_paper_recipe_plus_conv_gates_at_the_same_size():
    cnn, paper = load_config(RECIPE), load_config("wavlm_base_sp80")
    assert cnn.prune.kinds == paper.prune.kinds + ["conv"]
    base = preset("base")
    t, c = transformer_prunable(base), cnn_prunable(base)
    # the same kept count as the paper's 80 % of the transformer, with the CNN in the prunable set
    assert cnn.train.target_sparsity == pytest.approx(1 - 0.2 * t / (t + c), abs=1e-4)
    same = [k for k in ("train.steps", "train.batch_size", "train.lr", "data.crop", "distill.teacher_layers")
            if getattr(getattr(cnn, k.split(".")[0]), k.split(".")[1])
            == getattr(getattr(paper, k.split(".")[0]), k.split(".")[1])]
    assert len(same) == 5


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    return write_manifest(tmp_path_factory.mktemp("audio"), 8, seed=1)


def test_a_short_run_of_the_recipe_trains_the_cnn_gates(manifest, tmp_path):
    """The recipe as shipped, on a random tiny teacher: 60 steps, then the export."""
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        run_prune(RECIPE, [f"data.source={manifest}", "teacher.checkpoint=null", "teacher.arch.num_layers=2",
                           "distill.teacher_layers=[1,2]", "data.crop=8000", "data.min_samples=1000",
                           "data.num_workers=0", "train.batch_size=2", "run.threads=1", "run.progress=false",
                           "run.tensorboard=false", "train.steps=60", "train.save_every=1000", "train.log_every=10"], out)
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((out / "summary.json").read_text())
    arch = tiny_arch(num_layers=2)
    assert summary["steps"] == 60 and summary["target_sparsity"] == 0.8094
    assert summary["prunable_params"]["total"] == transformer_prunable(arch) + cnn_prunable(arch)  # the CNN joined
    expected = [r["sparsity/expected"] for r in run_io.read_log(out)]
    assert expected[-1] > expected[0]  # pushed towards the target
    student = load_student(out)
    blocks = student.feature_extractor.conv_layers
    assert all(b.gate_conv is not None for b in blocks[:-1]) and blocks[-1].gate_conv is None
    init = load_config(RECIPE).prune.init_keep
    moved = [float((b.gate_conv.log_alpha.detach() - b.gate_conv.log_alpha.detach().median()).abs().max())
             for b in blocks[:-1]]
    assert all(m > 0 for m in moved), (moved, init)  # each channel gate got its own gradient
    compact = export(student)
    wav = torch.randn(1, 8000)
    with torch.no_grad():
        a, b = compact(wav)[-1], student(wav)[-1]
    assert (a - b).abs().max() <= 1e-4 * b.abs().max()
