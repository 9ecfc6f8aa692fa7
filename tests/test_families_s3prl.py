"""A HuBERT teacher through the whole pipeline: the trainer, export, and s3prl's runner on KS.

The teacher is s3prl's own HubertModel (tiny, random) saved the way s3prl's
`hubert_local` reads it; a few distillation steps train the gated student; some
gates are then closed so that the export is really pruned; our upstream serves
it to s3prl's unchanged downstream runner for a few steps of keyword spotting.
"""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import torch
from s3prl_fixtures import make_speech_commands, tiny_runner_config, write_yaml
from test_families import s3prl_checkpoint

from pruned_upstream import export, load_model, save_model
from pruned_upstream.model.prunable import gates
from pruned_upstream.run_dir import load_student
from pruned_upstream.s3prl_plugin import runner
from pruned_upstream.training.run import run_prune

STEPS = 4


def _manifest(root) -> str:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    rows = [str(root)]
    for i in range(6):
        n = int(rng.integers(6400, 9600))
        sf.write(root / f"u{i}.wav", (0.1 * rng.standard_normal(n)).astype(np.float32), 16000)
        rows.append(f"u{i}.wav\t{n}")
    (root / "train.tsv").write_text("\n".join(rows) + "\n")
    return str(root / "train.tsv")


def test_pruned_hubert_trains_exports_and_runs_keyword_spotting(tmp_path):
    s3prl_checkpoint(tmp_path / "hubert.pt", "hubert")
    run = tmp_path / "run"
    code = run_prune("demo", [f"data.source={_manifest(tmp_path / 'audio')}", f"teacher.checkpoint={tmp_path / 'hubert.pt'}",
                              "distill.every=1", "data.crop=8000", "data.min_samples=1000", "train.batch_size=2",
                              "train.steps=3", "train.save_every=3", "run.threads=1", "run.progress=false",
                              "run.tensorboard=false"], run)
    assert code == 0
    student = load_student(run).eval()
    assert student.arch.family == "hubert"
    with torch.no_grad():  # close some gates: a really pruned model
        for g in gates(student).values():  # half of the units of every multi-unit gate
            g.log_alpha.view(-1)[: g.log_alpha.numel() // 2] = -10.0
    compact = export(student)
    assert compact.arch.family == "hubert" and not compact.arch.is_dense()
    assert compact.num_params() < load_model(tmp_path / "hubert.pt").num_params()
    save_model(compact, tmp_path / "pruned_hubert.safetensors")

    root = tmp_path / "superb"
    config = tiny_runner_config(make_speech_commands(root / "data"), ("batch_size",), STEPS)
    config["runner"]["eval_dataloaders"] = ["dev", "test"]
    write_yaml(root / "ks.yaml", config)
    argv = ["-m", "train", "-u", "pruned_wavlm_local", "-k", str(tmp_path / "pruned_hubert.safetensors"),
            "-d", "speech_commands", "-c", str(root / "ks.yaml"), "-p", str(root / "exp")]
    cwd = os.getcwd()
    try:
        assert runner.run_superb(argv) == 0
    finally:
        os.chdir(cwd)
    log = (root / "exp" / "log.log").read_text()
    assert f"test at step {STEPS}: " in log
