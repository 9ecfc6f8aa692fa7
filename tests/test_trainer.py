"""The trainer end to end on a tiny teacher and synthetic audio (CPU, seconds).

Schedules and the Lagrangian's signs in real steps, reaching the target, the
checkpoint/resume contract (SIGKILL then --resume is bit-identical), a NaN
stop, DDP (2 gloo processes) against one process, export and plots of a run,
and the second (gate-free) stage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from training_fixtures import tiny, write_manifest

from pruned_upstream import cli
from pruned_upstream import run_dir as run_io
from pruned_upstream.checkpoints import load_model
from pruned_upstream.config_files import load_config
from pruned_upstream.training.distill import Distiller
from pruned_upstream.commands.export import export_command
from pruned_upstream.exporting import export
from pruned_upstream.model.prunable import gates
from pruned_upstream.plots import plot_run
from pruned_upstream.training.sparsity import lr_lambda
from pruned_upstream.run_dir import load_student
from pruned_upstream.training.distributed import DistEnv
from pruned_upstream.training.run import run_prune
from pruned_upstream.training.models import build_teacher
from pruned_upstream.training.trainer import Trainer, TrainingDiverged
from pruned_upstream.model.depth import drop_layers

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    return write_manifest(tmp_path_factory.mktemp("audio"), 12, seed=0)


def read_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return run_io.read_student_file(ckpt / run_io.STUDENT_FILE)[2]


@pytest.fixture(scope="module")
def finished_run(manifest, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "done"
    run_prune("demo", tiny(manifest, "train.steps=12", "train.save_every=5", "run.tensorboard=true"), out)
    return out


# ---------------------------------------------------------------------------- schedules, signs
def test_schedules_at_key_steps(manifest, tmp_path):
    run_prune("demo", tiny(manifest, "train.steps=20", "train.warmup=0.25", "train.sparsity_warmup=0.5",
                           "train.target_sparsity=0.6", "train.save_every=100"), tmp_path / "run")
    log = {r["step"]: r for r in run_io.read_log(tmp_path / "run")}
    lr, lr_alpha = 2e-4, load_config("demo").train.lr_log_alpha
    for step in (1, 3, 5, 6, 11, 20):  # step s logs optimizer step s (index s - 1) and the rates after it
        assert log[step]["sparsity/target"] == pytest.approx(0.6 * min(1.0, (step - 1) / 10))
        assert log[step]["lr/weights"] == pytest.approx(lr * lr_lambda(step, 20, 5))
        assert log[step]["lr/log_alpha"] == pytest.approx(lr_alpha)  # CoFi: constant
    assert log[5]["lr/weights"] == pytest.approx(lr) and log[20]["lr/weights"] == 0.0


@pytest.mark.parametrize("target", [0.5, 0.0])
def test_lagrangian_multipliers_ascend_while_off_target(manifest, tmp_path, target):
    cfg = load_config("demo", tiny(manifest, f"train.target_sparsity={target}", "train.sparsity_warmup=0"))
    trainer = Trainer(cfg, tmp_path, DistEnv())
    assert trainer.optimizer.param_groups[2]["name"] == "lambdas" and trainer.optimizer.param_groups[2]["maximize"]
    batches = trainer._batches()
    stats = trainer.train_step([next(batches)])
    gap = stats["expected_sparsity"] - target
    lam1, lam2 = trainer.lagrangian.lambda1.item(), trainer.lagrangian.lambda2.item()
    assert gap != 0 and np.sign(lam1) == np.sign(gap)  # lambda1 (p_hat - p) > 0: the penalty grew
    assert lam2 > 0  # d/d lambda2 = (p_hat - p)^2 > 0
    assert lam1 * gap + lam2 * gap**2 > 0  # ascent: the Lagrangian at the new lambdas is larger than at 0


def test_tiny_run_reaches_its_target_sparsity(manifest, tmp_path):
    out = tmp_path / "run"
    run_prune("demo", tiny(manifest, "train.steps=250", "train.sparsity_warmup=0.2", "train.lr_lambdas=0.05",
                           "train.save_every=1000", "train.log_every=10"), out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target_sparsity"] == 0.5  # the demo's
    assert abs(summary["expected_sparsity"] - 0.5) < 0.01
    # The deterministic masks round each block gate to 0 or 1; in a 2-layer model one
    # block holds about a quarter of the prunable parameters, so allow a few percent.
    assert abs(summary["sparsity"] - 0.5) < 0.05
    tail = [r["sparsity/expected"] for r in run_io.read_log(out)][-5:]
    assert max(tail) - min(tail) < 0.02  # settled, not passing through
    assert summary["params"] < summary["teacher_params"]


# ---------------------------------------------------------------------------- checkpoints
@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(manifest, tmp_path):
    args = tiny(manifest, "train.steps=60", "train.save_every=5")
    run_prune("demo", args, tmp_path / "reference")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pruned_upstream.cli", "prune", "--config", "demo", *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not run_io.list_checkpoints(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    found = run_io.list_checkpoints(out)
    assert found, f"the run ended (code {proc.returncode}) before its first checkpoint: {proc.stderr.read()[-2000:]!r}"
    killed_at = found[-1][0]
    assert killed_at < 60, "the run finished before it could be killed"
    assert not (out / "summary.json").exists()
    assert run_prune("demo", args, out, resume=True) == 0
    ref, res = run_io.latest_checkpoint(tmp_path / "reference"), run_io.latest_checkpoint(out)
    assert ref.name == res.name == "step-60"
    a, b = read_weights(ref), read_weights(res)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = run_io.read_state(ref), run_io.read_state(res)
    assert torch.equal(sa["optimizer"]["state"][0]["exp_avg"], sb["optimizer"]["state"][0]["exp_avg"])
    assert sa["lagrangian"]["lambda1"].item() == sb["lagrangian"]["lambda1"].item()
    assert run_io.read_log(out) == run_io.read_log(tmp_path / "reference")  # re-logged steps replaced, not doubled


def test_checkpoint_layout_and_state_loads_safely(finished_run):
    assert [s for s, _ in run_io.list_checkpoints(finished_run)] == [10, 12]  # keep_checkpoints=2 (demo)
    ckpt = run_io.latest_checkpoint(finished_run)
    arch, prune, weights, step = run_io.read_student_file(ckpt / run_io.STUDENT_FILE)
    assert step == 12 and prune["kinds"] == ["mha", "qk", "vo", "ffn", "int"] and arch.num_layers == 2
    assert any(k.endswith("log_alpha") for k in weights)
    state = torch.load(ckpt / run_io.STATE_FILE, weights_only=True)
    assert state["step"] == 12 and state["data"]["world_size"] == 1
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert list((finished_run / "tb").glob("events.out.tfevents.*"))


def test_resuming_a_finished_run_does_nothing(finished_run, manifest, capsys):
    ckpt = run_io.latest_checkpoint(finished_run)
    before = (ckpt / run_io.STUDENT_FILE).stat().st_mtime_ns, (finished_run / "log.jsonl").read_text()
    args = tiny(manifest, "train.steps=12", "train.save_every=5", "run.tensorboard=true")
    assert run_prune("demo", args, finished_run, resume=True) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert ((ckpt / run_io.STUDENT_FILE).stat().st_mtime_ns, (finished_run / "log.jsonl").read_text()) == before


def test_resume_without_a_checkpoint_starts_and_says_so(manifest, tmp_path, capsys):
    assert run_prune("demo", tiny(manifest, "train.steps=2"), tmp_path / "new", resume=True) == 0
    assert "no checkpoint yet; starting the run from step 0" in capsys.readouterr().out
    assert json.loads((tmp_path / "new" / "summary.json").read_text())["steps"] == 2


def test_run_directory_rules(finished_run, manifest):
    with pytest.raises(ValueError, match="already holds a run: add --resume"):
        run_prune("demo", tiny(manifest, "train.steps=12"), finished_run)
    with pytest.raises(ValueError, match=r"--resume: train.lr differ"):
        run_prune("demo", tiny(manifest, "train.steps=12", "train.save_every=5", "train.lr=1e-3"),
                  finished_run, resume=True)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(manifest, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    forward = Distiller.forward

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        loss, pairs = forward(self, *args, **kwargs)
        return (loss * float("nan") if calls["n"] == 8 else loss), pairs

    monkeypatch.setattr(Distiller, "forward", poisoned)
    out = tmp_path / "run"
    code = cli.main(["prune", "--config", "demo", *tiny(manifest, "train.steps=20", "train.save_every=5"),
                     "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "non-finite loss (nan) at step 8" in err and "step-5" in err
    assert [s for s, _ in run_io.list_checkpoints(out)] == [5]
    assert not (out / "summary.json").exists()
    assert max(r["step"] for r in run_io.read_log(out)) == 7
    with pytest.raises(TrainingDiverged):  # the same run again: the same stop
        calls["n"] = 0
        run_prune("demo", tiny(manifest, "train.steps=20", "train.save_every=5"), out, resume=True)


# ---------------------------------------------------------------------------- DDP
@pytest.mark.slow
@pytest.mark.parametrize("pairing", [
    ["distill.pairing=learned"],
    ["distill.pairing=fixed", "distill.student_layers=1,1"],  # layer 2 gets no gradient: DDP must allow it
])
def test_two_gloo_processes_equal_one_process_accumulating_two(manifest, tmp_path, pairing):
    args = tiny(manifest, "train.steps=6", "train.save_every=6", "data.length_jitter=0", *pairing)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "pruned_upstream.cli", "prune", "--config", "demo", *args, "--out", str(tmp_path / "ddp")],
                         cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    run_prune("demo", args + ["train.accumulate=2"], tmp_path / "one")
    a, b = read_weights(tmp_path / "ddp/checkpoints/step-6"), read_weights(tmp_path / "one/checkpoints/step-6")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff < 1e-6, diff  # the same micro-batches and gate noise; at most the summation order differs
    log_a, log_b = run_io.read_log(tmp_path / "ddp"), run_io.read_log(tmp_path / "one")
    assert [r["pairs"] for r in log_a] == [r["pairs"] for r in log_b]
    assert [r["loss/distill"] for r in log_a] == pytest.approx([r["loss/distill"] for r in log_b], rel=1e-5)


# ---------------------------------------------------------------------------- export, plots, stage 2
def test_export_of_the_run_equals_the_student_in_eval_mode(finished_run, tmp_path):
    student = load_student(finished_run)
    assert not student.training and gates(student)
    compact = export(student)
    wav = torch.randn(2, 9000)
    lengths = torch.tensor([9000, 7000])
    with torch.no_grad():
        for h_s, h_c in zip(student(wav, lengths), compact(wav, lengths)):
            torch.testing.assert_close(h_c, h_s, rtol=1e-5, atol=1e-5)
    assert export_command(str(finished_run), str(tmp_path / "model.safetensors")) == 0
    loaded = load_model(tmp_path / "model.safetensors")
    summary = json.loads((finished_run / "summary.json").read_text())
    assert loaded.num_params() == compact.num_params() == summary["params"]
    assert load_student(run_io.latest_checkpoint(finished_run)).state_dict().keys() == student.state_dict().keys()


def test_plot_run_writes_the_figures(finished_run):
    assert plot_run(finished_run) == 0
    names = {p.name for p in (finished_run / "plots").glob("*.png")}
    assert names == {"mask_trajectories.png", "sparsity.png", "loss.png", "kept_params_per_layer.png"}


def test_final_distillation_stage_trains_the_exported_model(finished_run, manifest, tmp_path):
    export_command(str(finished_run), str(tmp_path / "pruned.safetensors"))
    out = tmp_path / "stage2"
    run_prune("final_distill", tiny(manifest, "teacher.checkpoint=null", "distill.teacher_layers=null",
                                    "train.steps=3", "train.save_every=3",
                                    f"student.checkpoint={tmp_path / 'pruned.safetensors'}", "data.num_workers=0",
                                    "data.scan=full"), out)
    summary = json.loads((out / "summary.json").read_text())
    pruned = load_model(tmp_path / "pruned.safetensors")
    assert summary["target_sparsity"] is None and summary["params"] == pruned.num_params()
    first = json.loads((finished_run / "summary.json").read_text())
    assert summary["sparsity"] == pytest.approx(first["sparsity"], abs=1e-9)  # the same kept structure
    student = load_student(out)
    assert not gates(student) and student.arch == pruned.arch
    assert any(not torch.equal(student.state_dict()[k], v) for k, v in pruned.state_dict().items())


# ---------------------------------------------------------------------------- depth
def test_gates_on_a_shallower_student(manifest, tmp_path):
    out = tmp_path / "shallow"
    assert run_prune("demo_shallow", tiny(manifest, "teacher.arch.num_layers=3", "train.steps=4",
                                          "train.save_every=4"), out) == 0
    student = load_student(out)
    assert student.num_layers == 2 and gates(student)  # one layer fewer than the teacher, then gated
    compact = export(student.eval())
    assert len(compact(torch.randn(1, 4000))) == 3
    # With a vanishing lr the student's weights stay those it started from: the teacher's layers 0 and 1.
    still = tmp_path / "still"
    assert run_prune("demo_shallow", tiny(manifest, "teacher.arch.num_layers=3", "train.steps=2",
                                          "train.save_every=2", "train.lr=1e-12"), still) == 0
    teacher = build_teacher(load_config(str(still / "config.yaml")))
    expected = drop_layers(teacher, "top:1").state_dict()
    got = {k: v for k, v in load_student(still).state_dict().items() if not k.endswith("log_alpha")}
    assert got.keys() == expected.keys()
    for key, value in got.items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-8, msg=key)
    assert not torch.equal(teacher.state_dict()["encoder.layers.2.fc1.weight"][: 4], expected["encoder.layers.1.fc1.weight"][: 4])


def test_stochastic_depth_is_reproducible_and_changes_training(manifest, tmp_path):
    extra = ("distill.layer_drop=0.5", "distill.layer_drop_schedule=linear", "train.steps=4", "train.save_every=4")
    for name in ("a", "b"):
        assert run_prune("demo", tiny(manifest, *extra), tmp_path / name) == 0
    assert run_prune("demo", tiny(manifest, *extra[2:]), tmp_path / "off") == 0
    student = load_student(tmp_path / "a")
    assert student.encoder.layer_drop is None  # a loaded model runs at full depth
    a, b, off = (read_weights(run_io.latest_checkpoint(tmp_path / n)) for n in ("a", "b", "off"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # skips drawn from the per-step seed
    assert any(not torch.equal(a[k], off[k]) for k in a)
