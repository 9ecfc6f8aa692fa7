"""Every config error is one line naming the key and what is allowed, raised before any model or
data is loaded (config.validate, training/checks.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from cli_child import alias_bomb, assert_one_line_error, run_cli

from pruned_upstream import cli
from pruned_upstream.checkpoints import save_model
from pruned_upstream.config_files import load_config
from pruned_upstream.model.wavlm import WavLM, tiny_arch
from pruned_upstream.training import models, trainer


@pytest.mark.parametrize("override, message", [
    ("train.stepz=3", "the command line: unknown config key 'train.stepz'; train has: steps, batch_size"),
    ("data.sourc=x", "unknown config key 'data.sourc'; data has: source"),
    ("train.steps=ten", "train.steps must be int, got 'ten'"),
    ("train.batch_size=2.5", "train.batch_size must be int"),
    ("run.progress=maybe", "run.progress must be bool"),
    ("train.target_sparsity=1", "train.target_sparsity must lie in [0, 1), got 1.0"),
    ("train.target_sparsity=-0.1", "train.target_sparsity must lie in [0, 1), got -0.1"),
    ("train.steps=0", "train.steps must be >= 1, got 0"),
    ("train.steps=-5", "train.steps must be >= 1, got -5"),
    ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
    ("train.lr=0", "train.lr must be > 0, got 0.0"),
    ("train.lr=-1e-4", "train.lr must be > 0, got -0.0001"),
    ("train.lr_log_alpha=0", "train.lr_log_alpha must be > 0, got 0.0"),
    ("train.lr_lambdas=-0.02", "train.lr_lambdas must be > 0, got -0.02"),
    ("train.lr=nan", "train.lr must be > 0, got nan"),
    ("train.grad_clip=0", "train.grad_clip must be > 0, got 0.0"),
    ("train.weight_decay=-1", "train.weight_decay must be >= 0, got -1.0"),
    ("train.warmup=1.5", "train.warmup must lie in [0, 1] (a fraction of train.steps), got 1.5"),
    ("train.save_every=0", "train.save_every must be >= 1, got 0"),
    ("data.num_workers=-1", "data.num_workers must be >= 0, got -1"),
    ("run.keep_checkpoints=-2", "run.keep_checkpoints must be >= 0, got -2"),
    ("distill.teacher_layers=0,2", "distill.teacher_layers must list layers numbered from 1"),
    ("prune.kinds=[]", "prune.kinds is empty while prune.enabled is true"),
])
def test_bad_values_name_the_key_and_the_allowed_range(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config("demo", [override])


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    for i in range(2):
        sf.write(root / f"u{i}.wav", (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000)
    (root / "m.tsv").write_text(f"{root}\nu0.wav\t8000\nu1.wav\t8000\n")
    return root


@pytest.fixture
def no_heavy_work(monkeypatch):
    """The checks come first: building the teacher or reading audio fails the test."""
    def heavy(*args, **kwargs):
        raise AssertionError("heavy work started before the config was checked")

    # trainer is imported above, before any patch: importing it here would copy the patched
    # models.build_teacher into it, and the teardown would "restore" that copy
    monkeypatch.setattr(models, "build_teacher", heavy)
    monkeypatch.setattr(trainer, "build_teacher", heavy)
    monkeypatch.setattr(trainer, "build_data", heavy)


def prune_error(capsys, out: Path, *overrides: str) -> str:
    code = cli.main(["prune", "--config", "demo", *overrides, "run.progress=false", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    assert not out.exists()  # nothing written
    return err


@pytest.mark.parametrize("overrides, message", [
    (["teacher.arch.num_layers=2", "distill.teacher_layers=2,4"],
     "distill.teacher_layers=[2, 4]: [4] beyond the teacher's depth; allowed: 1..2"),
    (["teacher.arch.num_layers=4", "distill.pairing=fixed", "distill.teacher_layers=2,4",
      "distill.student_layers=1,4", "student.drop_layers=top:1"],
     "distill.student_layers=[1, 4]: [4] beyond the student's depth; allowed: 1..3"),
    (["prune.kinds=mha,conv", "teacher.arch.conv_layers=[[32,10,5]]"],
     "prune.kinds has conv: the last conv layer is never gated (it feeds a LayerNorm over its channels) and the "
     "student's CNN has 1 layer(s); allowed: 2 or more conv layers"),
    (["prune.kinds=mha,conv", "teacher.arch.extractor_mode=layer_norm"],
     "prune.kinds has conv: CNN gates need the group-norm extractor"),
    (["student.drop_layers=top:9"], "student.drop_layers='top:9': K=9 layers to drop: must lie in [1, 3]"),
])
def test_model_checks_come_before_loading_anything(overrides, message, audio, tmp_path, capsys, no_heavy_work):
    err = prune_error(capsys, tmp_path / "run", f"data.source={audio / 'm.tsv'}", *overrides)
    assert message in err


def test_teacher_depth_is_read_from_a_checkpoint_header(audio, tmp_path, capsys, no_heavy_work):
    torch.manual_seed(0)
    save_model(WavLM(tiny_arch(num_layers=3)), tmp_path / "teacher.safetensors")
    err = prune_error(capsys, tmp_path / "run", f"data.source={audio / 'm.tsv'}",
                      f"teacher.checkpoint={tmp_path / 'teacher.safetensors'}", "distill.teacher_layers=3,6")
    assert "distill.teacher_layers=[3, 6]: [6] beyond the teacher's depth; allowed: 1..3" in err
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04 not a zip")
    err = prune_error(capsys, tmp_path / "run", f"data.source={audio / 'm.tsv'}",
                      f"teacher.checkpoint={tmp_path / 'broken.pt'}")
    assert f"{tmp_path / 'broken.pt'}: teacher.checkpoint: cannot read its architecture" in err


def test_a_data_source_without_audio_is_refused(audio, tmp_path, capsys, no_heavy_work):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no audio here")
    assert f"data.source={empty}: no .flac/.wav files under {empty}" in prune_error(
        capsys, tmp_path / "r1", f"data.source={empty}")
    assert f"data.source={tmp_path / 'nowhere'}: no such file or directory" in prune_error(
        capsys, tmp_path / "r2", f"data.source={tmp_path / 'nowhere'}")
    (tmp_path / "rows.tsv").write_text(f"{audio}\n")
    assert "the manifest lists no audio file" in prune_error(capsys, tmp_path / "r3",
                                                             f"data.source={tmp_path / 'rows.tsv'}")
    (tmp_path / "moved.tsv").write_text(f"{tmp_path / 'elsewhere'}\nu0.wav\t8000\nu1.wav\t8000\n")
    assert "none of its first 2 files exists" in prune_error(capsys, tmp_path / "r4",
                                                             f"data.source={tmp_path / 'moved.tsv'}")
    assert "data.source is not set" in prune_error(capsys, tmp_path / "r5", "data.source=")
    (tmp_path / "list.txt").write_text("u0.wav\n")
    assert "neither a directory nor a manifest .tsv" in prune_error(capsys, tmp_path / "r6",
                                                                    f"data.source={tmp_path / 'list.txt'}")


# ---------------------------------------------------------------------------- hostile configuration files
@pytest.mark.parametrize("text, message", [
    ("train:\n  steps: [3\n", "invalid YAML: while parsing a flow sequence"),
    ("train: !!python/object/apply:os.system ['touch MARKER']\n",
     "invalid YAML: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"),
    (f"train:\n  steps: {alias_bomb()}\n", "invalid YAML: YAML anchors (&name) are not accepted here"),
], ids=["syntax", "python_tag", "alias_bomb"])
def test_a_hostile_config_file_is_one_line(tmp_path, text, message):
    """`prune --config FILE`: a YAML error (an unknown tag included) is one line naming the file, nothing
    runs; aliases are refused (600 bytes that expand to 9**9 strings took minutes and gigabytes)."""
    config = tmp_path / "bad.yaml"
    config.write_text(text.replace("MARKER", str(tmp_path / "marker")))
    proc, seconds = run_cli("prune", "--config", config, "--out", tmp_path / "run", cwd=tmp_path)
    assert_one_line_error(proc, f"pruned-upstream prune: error: {config}: {message}")
    assert seconds < 30 and not (tmp_path / "marker").exists() and not (tmp_path / "run").exists()


def test_a_hostile_saved_config_is_one_line_on_resume(tmp_path):
    """`prune --out RUN --resume` reads RUN/config.yaml: aliases refused in one line, and a symbolic
    link is not followed (nothing inside a run directory is)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"train:\n  steps: {alias_bomb()}\n")
    proc, seconds = run_cli("prune", "--out", run, "--resume", cwd=tmp_path)
    assert_one_line_error(proc, f"{run / 'config.yaml'}: invalid YAML: YAML anchors (&name) are not accepted")
    assert seconds < 30
    (tmp_path / "elsewhere.yaml").write_text("data:\n  source: ''\n")
    (run / "config.yaml").unlink()
    (run / "config.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    proc, _ = run_cli("prune", "--out", run, "--resume", cwd=tmp_path)
    assert_one_line_error(proc, f"{run / 'config.yaml'}", "symbolic link")  # refused by the run's checks or by load_saved


def test_a_memory_error_in_prune_is_one_line(tmp_path, capsys, monkeypatch):
    import pruned_upstream.training.run as run

    def exhausted(*args, **kwargs):
        raise MemoryError("out of memory while building the teacher")

    monkeypatch.setattr(run, "run_prune", exhausted)
    assert cli.main(["prune", "--config", "demo", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err == ("pruned-upstream prune: error: out of memory (out of memory while building the teacher); "
                   "nothing more was done\n")
