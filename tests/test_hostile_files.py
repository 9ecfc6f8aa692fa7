"""Hostile model files: seeded corruption of every format, declared-size bombs, and what loading
promises (CheckpointError with a message, nothing allocated for a declaration, weights of its own)."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import release_cfg
from safetensors.torch import save_file

from pruned_upstream import CheckpointError, load_model, save_model
from pruned_upstream import run_dir as run_io
from pruned_upstream.arch import HeadArch
from pruned_upstream.checkpoints import ARCH_KEY, arch_from_release_cfg
from pruned_upstream.gating import PruneConfig
from pruned_upstream.model import WavLM, tiny_arch
from pruned_upstream.model.prunable import make_prunable

REPO = Path(__file__).resolve().parents[1]
HF_CONFIG = dict(model_type="wavlm", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 conv_dim=[32] * 5, conv_kernel=[10, 8, 4, 2, 2], conv_stride=[5, 4, 4, 2, 2],
                 num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, num_buckets=16, max_bucket_distance=40,
                 feat_extract_norm="group")
FUZZ_CASES = 350


def _weights(model) -> dict:
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict[str, Path]:
    """One valid file of each kind: ours, a release .pt, a Hugging Face directory, a run checkpoint."""
    root = tmp_path_factory.mktemp("valid")
    torch.manual_seed(0)
    save_model(WavLM(tiny_arch()), root / "ours.safetensors")
    release = {"cfg": release_cfg(), "model": _weights(WavLM(arch_from_release_cfg(release_cfg())))}
    torch.save(release, root / "release.pt")
    torch.save(release, root / "legacy.pt", _use_new_zipfile_serialization=False)  # torch < 1.6's format
    (root / "hf").mkdir()
    (root / "hf" / "config.json").write_text(json.dumps(HF_CONFIG))
    save_file(_weights(WavLM(tiny_arch())), str(root / "hf" / "model.safetensors"))  # release names: HF's fixed points
    student = make_prunable(WavLM(tiny_arch()), PruneConfig())
    state = {"step": 3, "optimizer": {"state": {}, "param_groups": []}, "scheduler": {}, "lagrangian": {"l1": torch.ones(1)},
             "distiller": {}, "rng": {"torch": torch.get_rng_state()}, "data": {"epoch": 0, "batch": 3}}
    run_io.save_checkpoint(root / "run", 3, student, dataclasses.asdict(PruneConfig()), state)
    return {"ours": root / "ours.safetensors", "release": root / "release.pt", "legacy": root / "legacy.pt",
            "hf": root / "hf",
            "run": run_io.checkpoint_dir(root / "run", 3)}


def test_valid_files_load(valid):
    for name in ("ours", "release", "legacy", "hf"):
        assert load_model(valid[name]).num_params() > 0
    assert run_io.load_student(valid["run"]).arch == tiny_arch()
    assert run_io.read_state(valid["run"])["step"] == 3


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """Bytes flipped (anywhere, or in the first KB where headers live), a range zeroed, or truncated."""
    data = bytearray(data)
    kind = rng.choice(["flip", "flip_head", "zero", "truncate"])
    if kind == "truncate":
        return bytes(data[: rng.randrange(len(data))])
    if kind == "zero":
        start = rng.randrange(len(data))
        data[start: start + rng.randint(1, 64)] = bytes(len(data[start: start + 64]))[: rng.randint(1, 64)]
        return bytes(data)
    span = min(len(data), 1024) if kind == "flip_head" else len(data)
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(span)] ^= rng.randint(1, 255)
    return bytes(data)


# (kind, file to corrupt inside the copy, reader)
TARGETS = [
    ("ours", None, load_model),
    ("release", None, load_model),
    ("legacy", None, load_model),
    ("hf", "config.json", load_model),
    ("hf", "model.safetensors", load_model),
    ("run", run_io.STUDENT_FILE, run_io.load_student),
    ("run", run_io.STATE_FILE, run_io.read_state),
]


def test_fuzz_every_failure_to_read_is_a_checkpoint_error(valid, tmp_path):
    """350 seeded corruptions over every format: each loads, or raises CheckpointError naming the file."""
    rng, outcomes, start = random.Random(11), {"loaded": 0, "refused": 0}, time.perf_counter()
    for case in range(FUZZ_CASES):
        kind, inner, reader = TARGETS[case % len(TARGETS)]
        target = tmp_path / f"case{case}" / valid[kind].name
        target.parent.mkdir()
        (shutil.copytree if valid[kind].is_dir() else shutil.copy)(valid[kind], target)
        victim = target / inner if inner else target
        victim.write_bytes(_mutate(victim.read_bytes(), rng))
        try:
            result = reader(target)
        except CheckpointError as err:
            assert str(target) in str(err) and len(str(err)) > len(str(target)) + 10, (case, str(err))
            outcomes["refused"] += 1
        except Exception as err:  # noqa: BLE001 -- the point: nothing else may escape
            pytest.fail(f"case {case} ({kind}/{inner}): {type(err).__name__}: {err}")
        else:
            if isinstance(result, torch.nn.Module):
                assert not any(t.is_meta for t in [*result.parameters(), *result.buffers()])
            outcomes["loaded"] += 1  # a flipped byte inside a weight's values is still a valid file
        shutil.rmtree(target.parent)
    assert outcomes["refused"] > FUZZ_CASES // 3 and outcomes["loaded"] > 10, outcomes
    assert time.perf_counter() - start < 60


# ---------------------------------------------------------------------------- declared-size bombs
def _bomb_files(root: Path) -> dict[str, Path]:
    """Files of a tiny model (150 KB) whose architecture declares 40 layers of 4e7 FFN units (6.4e12 bytes)."""
    model = WavLM(tiny_arch())
    blob = json.loads(model.arch.to_json())
    blob["arch"]["layers"] = [dict(blob["arch"]["layers"][0], ffn_dim=40_000_000)] * 40
    save_file(_weights(model), str(root / "bomb.safetensors"), metadata={ARCH_KEY: json.dumps(blob)})
    small = release_cfg()
    weights = _weights(WavLM(arch_from_release_cfg(small)))
    torch.save({"cfg": dict(small, encoder_layers=40, encoder_ffn_embed_dim=40_000_000), "model": weights},
               root / "bomb.pt")
    (root / "hf").mkdir()
    (root / "hf" / "config.json").write_text(json.dumps(dict(HF_CONFIG, num_hidden_layers=40, intermediate_size=40_000_000)))
    save_file(_weights(model), str(root / "hf" / "model.safetensors"))
    return {"safetensors": root / "bomb.safetensors", "pt": root / "bomb.pt", "hf": root / "hf"}


def test_declared_architecture_bombs_are_refused_before_any_allocation(tmp_path):
    """Under a 2 GiB data limit (the old loader asked for 5 GB for one tensor): a one-line refusal each."""
    files = _bomb_files(tmp_path)
    assert files["safetensors"].stat().st_size < 200_000
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_DATA, (2 << 30, 2 << 30))\n"
        "from pruned_upstream import CheckpointError, load_model\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        load_model(path)\n"
        "        print('LOADED', path)\n"
        "    except CheckpointError as err:\n"
        "        print('REFUSED', err)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, *map(str, files.values())], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == 3, proc.stdout + proc.stderr
    for line, path in zip(lines, files.values()):
        assert line.startswith(f"REFUSED {path}") and "does not match its architecture" in line, line
        assert "GB as float32" in line  # the declared total beside what the file stores


def test_layer_count_beyond_the_stored_values_is_refused_before_building(tmp_path):
    blob = json.loads(tiny_arch().to_json())
    blob["arch"]["layers"] = blob["arch"]["layers"][:1] * 20_000
    save_file({"mask_emb": torch.zeros(32)}, str(tmp_path / "deep.safetensors"), metadata={ARCH_KEY: json.dumps(blob)})
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="declares 20,000 layers, but the file stores only 33 values"):
        load_model(tmp_path / "deep.safetensors")
    assert time.perf_counter() - start < 10


def test_absurd_counts_in_a_hf_config_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(dict(HF_CONFIG, num_hidden_layers=10**9)))
    with pytest.raises(CheckpointError, match=r"config.json: num_hidden_layers = 1000000000 is outside 0..10,000"):
        load_model(tmp_path)


@pytest.mark.parametrize("key, value", [("encoder_layers", 10**9), ("encoder_attention_heads", 10**8)])
def test_absurd_counts_in_a_release_cfg_are_refused_at_once(tmp_path, key, value):
    """A release `cfg` is bounded before any architecture is built from it (arch.dense_arch)."""
    small = release_cfg()
    torch.save({"cfg": dict(small, **{key: value}), "model": _weights(WavLM(arch_from_release_cfg(small)))},
               tmp_path / "absurd.pt")
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"absurd\.pt: .*is outside \["):
        load_model(tmp_path / "absurd.pt")
    assert time.perf_counter() - start < 5


def test_zip_records_declaring_more_than_the_file_holds_are_refused(tmp_path):
    buffer = io.BytesIO()
    torch.save({"cfg": release_cfg(), "model": {"w": torch.zeros(4_000_000)}}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as plain, \
            zipfile.ZipFile(tmp_path / "deflated.pt", "w", zipfile.ZIP_DEFLATED) as packed:
        for info in plain.infolist():
            packed.writestr(info.filename, plain.read(info))
    assert (tmp_path / "deflated.pt").stat().st_size < 1_000_000
    with pytest.raises(CheckpointError, match=r"deflated\.pt: zip member archive/data\.pkl is compressed \(torch writes none\)"):
        load_model(tmp_path / "deflated.pt")


# ---------------------------------------------------------------------------- what a loaded model is
def _pruned_arch():
    arch = tiny_arch()
    heads = (HeadArch(0, 8, 3), HeadArch(2, 0, 8), HeadArch(3, 5, 1))
    layers = (dataclasses.replace(arch.layers[0], heads=heads, ffn_dim=17), dataclasses.replace(arch.layers[1], attn=False))
    return dataclasses.replace(arch, layers=layers)


@pytest.mark.parametrize("arch", [tiny_arch(), _pruned_arch()], ids=["dense", "pruned"])
def test_meta_built_model_equals_a_plain_build(tmp_path, arch):
    torch.manual_seed(3)
    plain = WavLM(arch).eval()
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    save_model(plain, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    for (name, a), (_, b) in zip(plain.named_buffers(), loaded.named_buffers()):
        assert torch.equal(a, b), name  # index buffers computed in __init__
    wav = torch.randn(2, 6000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(plain(wav), loaded(wav)))


def test_loaded_weights_are_not_tied_to_the_file(tmp_path):
    """Overwriting the file in place after loading changes nothing in the model (safetensors maps files)."""
    save_model(WavLM(tiny_arch()), tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    size = (tmp_path / "m.safetensors").stat().st_size
    with open(tmp_path / "m.safetensors", "r+b") as f:
        f.seek(size - 4096)
        f.write(b"\x7f" * 4096)
    assert all(torch.equal(before[k], v) for k, v in loaded.state_dict().items())


def test_integer_weights_are_refused(tmp_path):
    model = WavLM(tiny_arch())
    weights = _weights(model)
    weights["mask_emb"] = torch.zeros(32, dtype=torch.int32)
    save_file(weights, str(tmp_path / "int.safetensors"), metadata={ARCH_KEY: model.arch.to_json()})
    with pytest.raises(CheckpointError, match="mask_emb is torch.int32; weights must be floating-point"):
        load_model(tmp_path / "int.safetensors")


# ---------------------------------------------------------------------------- what a run directory holds
def test_log_jsonl_torn_last_line_is_dropped_and_a_bad_line_named(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss/distill": 0.5}\n{"step": 2, "loss/distill": 0.4}\n{"step": 3, "loss/di')
    assert [r["step"] for r in run_io.read_log(tmp_path)] == [1, 2]  # a run killed while writing step 3
    log.write_text('{"step": 1}\n{"step": 2, "loss\n{"step": 3}\n')
    with pytest.raises(CheckpointError, match=r"log.jsonl:2: not a JSON line"):
        run_io.read_log(tmp_path)
    log.write_text('{"step": 1}\n["step", 2]\n')
    with pytest.raises(CheckpointError, match=r"log.jsonl:2: expected a JSON object with an integer 'step'"):
        run_io.read_log(tmp_path)
    log.write_bytes(b'{"step": 1}\n\xff\xfe\n')
    with pytest.raises(CheckpointError, match="log.jsonl: unreadable"):
        run_io.read_log(tmp_path)


def test_plots_refuse_a_value_that_is_not_a_number(tmp_path):
    from pruned_upstream.plots import plot_run

    (tmp_path / "log.jsonl").write_text('{"step": 1, "sparsity/expected": 0.1}\n{"step": 2, "sparsity/expected": "0.2"}\n')
    with pytest.raises(CheckpointError, match=r"log.jsonl: step 2: sparsity/expected = '0.2' is not a number"):
        plot_run(tmp_path)


def test_summary_json_and_state_pt_failures_name_the_file(tmp_path, valid):
    with pytest.raises(CheckpointError, match="summary.json: no such file"):
        run_io.read_summary(tmp_path)
    (tmp_path / "summary.json").write_text('{"steps": 3, "spars')
    with pytest.raises(CheckpointError, match="summary.json: unreadable .JSONDecodeError"):
        run_io.read_summary(tmp_path)
    (tmp_path / "summary.json").write_text('[1, 2]')
    with pytest.raises(CheckpointError, match="summary.json: expected a JSON object, found list"):
        run_io.read_summary(tmp_path)
    ckpt = tmp_path / "checkpoints" / "step-3"
    shutil.copytree(valid["run"], ckpt)
    state = torch.load(ckpt / run_io.STATE_FILE, weights_only=True)
    del state["optimizer"]
    torch.save(state, ckpt / run_io.STATE_FILE)
    with pytest.raises(CheckpointError, match="state.pt: 'optimizer' must be a dict, found nothing"):
        run_io.read_state(ckpt)
    with pytest.raises(CheckpointError, match="neither a training checkpoint nor a run directory"):
        run_io.load_student(tmp_path / "checkpoints")


def test_student_file_with_gates_that_do_not_match_is_refused(tmp_path, valid):
    ckpt = tmp_path / "step-3"
    shutil.copytree(valid["run"], ckpt)
    from safetensors import safe_open

    with safe_open(str(ckpt / run_io.STUDENT_FILE), framework="pt") as f:
        meta, weights = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    gate = next(k for k in weights if k.endswith("log_alpha"))
    weights[gate] = torch.zeros(weights[gate].numel() + 1)
    save_file(weights, str(ckpt / run_io.STUDENT_FILE), metadata=meta)
    with pytest.raises(CheckpointError, match=rf"{gate} has shape"):
        run_io.load_student(ckpt)
    save_file(weights, str(ckpt / run_io.STUDENT_FILE), metadata=dict(meta, pruned_upstream_prune='{"kinds": 3}'))
    with pytest.raises(CheckpointError, match="bad prune options in its metadata"):
        run_io.read_student_file(ckpt / run_io.STUDENT_FILE)


def test_resume_truncation_of_log_jsonl_survives_a_torn_last_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    run_io.truncate_log(log, 2)
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_resume_from_a_damaged_checkpoint_ends_in_one_line_naming_the_file(tmp_path, capsys):
    """prune --resume: a truncated student.safetensors, then a state.pt missing what resuming needs."""
    import numpy as np
    import soundfile as sf

    from pruned_upstream import cli

    audio = tmp_path / "audio"
    audio.mkdir()
    rows = [str(audio)]
    for i in range(4):
        sf.write(audio / f"u{i}.wav", (0.1 * np.random.default_rng(i).standard_normal(9000)).astype(np.float32), 16000)
        rows.append(f"u{i}.wav\t9000")
    (audio / "train.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    start = ["prune", "--config", "demo", f"data.source={audio / 'train.tsv'}", "teacher.arch.num_layers=2",
             "data.crop=8000", "data.min_samples=1000", "train.batch_size=2", "run.threads=1", "run.progress=false",
             "run.tensorboard=false", "train.steps=2", "train.save_every=2", "--out", str(out)]
    assert cli.main(start) == 0, capsys.readouterr().err
    (out / "summary.json").unlink()  # as if killed after the checkpoint
    student = run_io.latest_checkpoint(out) / run_io.STUDENT_FILE
    good = student.read_bytes()
    student.write_bytes(good[: len(good) // 2])
    capsys.readouterr()
    assert cli.main(["prune", "--out", str(out), "--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{student}: unreadable safetensors file" in err, err
    student.write_bytes(good)
    torch.save({"step": 2}, student.parent / run_io.STATE_FILE)
    assert cli.main(["prune", "--out", str(out), "--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "state.pt: 'optimizer' must be a dict, found nothing" in err, err


def test_read_arch_gives_the_loaded_models_architecture_without_building_it(valid, tmp_path):
    from pruned_upstream.checkpoints import read_arch

    for name in ("ours", "release", "legacy", "hf"):
        assert read_arch(valid[name]) == load_model(valid[name]).arch, name
    (tmp_path / "cut.pt").write_bytes(valid["release"].read_bytes()[:500])
    with pytest.raises(CheckpointError, match="cut.pt: "):
        read_arch(tmp_path / "cut.pt")
