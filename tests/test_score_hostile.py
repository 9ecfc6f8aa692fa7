"""`score` on truncated, partial and foreign s3prl logs: it names the file and line it could not
read, and every number it reports is one a file states in full (seeded corruption of all ten tasks)."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest
from cli_child import alias_bomb, assert_one_line_error, run_cli
from test_superb_score import _expdir, _log, _model_dir

from pruned_upstream import CheckpointError
from pruned_upstream.cli import main
from pruned_upstream.superb.references import reference_model
from pruned_upstream.superb.results import read_expdir, read_results

DECIMAL = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def _ks(tmp_path: Path, log: str) -> Path:
    return _expdir(tmp_path, "ks", "speech_commands", {"log.log": log})


def test_a_value_cut_short_is_not_read(tmp_path, capsys):
    """'test at step 0: 0.9' at the end of a file without its newline may be 0.9123 cut short."""
    expdir = _ks(tmp_path, _log(0.9) + "test at step 0: 0.9")
    with pytest.raises(CheckpointError, match=r"ks/log.log:10: 'test at step 0: 0.9' is cut short"):
        read_expdir(expdir)
    assert main(["score", str(tmp_path), "--allow-missing"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "log.log:10" in err and "Traceback" not in err
    (expdir / "log.log").write_text(_log(0.9) + "test at step 0: 0.9\n")  # the same line, whole
    assert read_expdir(expdir).metrics == {"KS": pytest.approx(90.0)}


def test_a_dev_best_step_without_its_test_line_is_not_replaced_by_another_step(tmp_path):
    partial = _log(0.9).split("test at step 2000")[0]  # killed after the new best on dev, before its test
    with pytest.raises(CheckpointError, match=r"log.log:6: the dev-best step 2000 has no 'test at step 2000' line"):
        read_expdir(_ks(tmp_path, partial))


@pytest.mark.parametrize("value", ["nan", "inf", "1_0", "0x10", "tensor(0.9)", "0.9.1"])
def test_only_plain_decimal_numbers_are_read(tmp_path, value):
    expdir = _expdir(tmp_path, "asr", "asr", {"stdout.log": f"test-clean wer: {value}\n"}, evaluate_split="test-clean")
    with pytest.raises(CheckpointError, match=rf"stdout.log:1: (.{re.escape(value)}. is not a number|ASR = \S+ is not a finite)"):
        read_expdir(expdir)


def test_foreign_and_binary_logs_give_no_result_and_say_where_they_looked(tmp_path):
    asr_log = "test-clean wer: 5.2\n"  # an ASR stdout where a KS log.log should be
    with pytest.raises(ValueError, match=r"ks: no KS result; looked for superb_result.json and log.log"):
        read_expdir(_ks(tmp_path / "a", asr_log))
    expdir = _ks(tmp_path / "b", "")
    (expdir / "log.log").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ValueError, match="no KS result"):
        read_expdir(expdir)
    (expdir / "args_2026-11-23-10-00-00.yaml").write_bytes(b"\xff\xfe\x00garbage: [")
    with pytest.raises(CheckpointError, match=r"args_2026-11-23-10-00-00.yaml: unreadable YAML"):
        read_expdir(expdir)


def test_truncated_dscore_row_is_not_read(tmp_path):
    table = "File  DER  JER\n*** OVERALL ***  6.0"  # 6.08 cut after '6.0'
    expdir = _expdir(tmp_path, "sd", "diarization", {"scoring/result_th0.5_med11": table}, mode="evaluate")
    with pytest.raises(ValueError, match=r"sd: no SD result"):
        read_expdir(expdir)


def _lines_of(source: str) -> list[str]:
    """The lines a reported value came from ('file:line', or the folds of ER's mean)."""
    found = re.findall(r"(/\S+?):(\d+)", source)
    assert found, source
    return [Path(file).read_text(errors="replace").splitlines()[int(n) - 1] for file, n in found]


def _whole_line(source: str) -> bool:
    """Whether the line a value came from ends with its newline (not a last line cut short)."""
    file, n = re.search(r"(/\S+?):(\d+)", source).groups()
    text = Path(file).read_text(errors="replace")
    return int(n) < len(text.splitlines()) or text.endswith(("\n", "\r"))


def _mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    if not data or rng.random() < 0.35:
        return bytes(data[: rng.randrange(len(data))]) if data else b"\x00"
    for _ in range(rng.randint(1, 3)):
        data[rng.randrange(len(data))] = rng.choice(b"0123456789.-e \n\r:x\xff")
    return bytes(data)


def test_fuzz_score_names_a_file_or_reports_only_numbers_read_in_full(tmp_path):
    """300 seeded corruptions of one file (log, YAML or JSON) of a ten-task model's expdirs."""
    model = _model_dir(tmp_path / "m", reference_model("wav2vec 2.0 Base").metrics)
    files = sorted(p for p in model.rglob("*") if p.is_file())
    rng, outcomes = random.Random(5), {"read": 0, "refused": 0}
    for case in range(300):
        victim = files[case % len(files)]
        expdir = next(parent for parent in victim.parents if parent.parent == model)
        original = victim.read_bytes()
        victim.write_bytes(_mutate(original, rng))
        try:
            run = read_expdir(expdir)
        except ValueError as err:  # CheckpointError included
            assert str(expdir) in str(err), (case, str(err))
            outcomes["refused"] += 1
        else:
            for metric, value in run.metrics.items():
                lines = _lines_of(run.sources[metric])
                numbers = [float(t) * s for line in lines for t in DECIMAL.findall(line) for s in (1.0, 100.0)]
                assert any(value == pytest.approx(n) for n in numbers), (case, metric, value, lines)
                if metric not in ("QbE", "SD"):  # their patterns need a column after the value
                    assert _whole_line(run.sources[metric]), (case, metric, run.sources[metric])
            outcomes["read"] += 1
        finally:
            victim.write_bytes(original)
    assert outcomes["refused"] > 30 and outcomes["read"] > 30, outcomes
    assert read_results(model)[0].metrics == pytest.approx(dict(reference_model("wav2vec 2.0 Base").metrics))


def test_an_unreadable_upstream_file_leaves_its_size_out_and_says_why(tmp_path, capsys):
    from pruned_upstream.commands.score import upstream_size

    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    assert upstream_size(str(bad)) is None
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {bad}: ") and "parameters and MACs are left out" in err


# ---------------------------------------------------------------------------- hostile expdir files
# Through the command line, in a child under a 2 GiB data limit (test_declared_sizes.run_cli): one line
# on stderr naming the file, exit 1, no traceback, within seconds; the old readers read these forever,
# or for gigabytes, or ended in a traceback.
BOMB = f"config: {alias_bomb()}\n"  # s3prl's `config` path: str() of it for a ctc expdir
ARGS = "args_2026-11-23-10-00-00.yaml"


def _hostile_args(tmp_path: Path, make) -> tuple[Path, Path]:
    """A KS expdir whose args YAML `make(path)` replaces."""
    expdir = _ks(tmp_path / "model", _log(0.9))
    (expdir / ARGS).unlink()
    make(expdir / ARGS)
    return tmp_path / "model", expdir / ARGS


@pytest.mark.parametrize("kind", ["dev_zero", "fifo", "alias_bomb", "downstream_list"])
def test_hostile_args_yaml_is_refused_in_one_line(tmp_path, kind):
    make, says = {
        "dev_zero": (lambda p: p.symlink_to("/dev/zero"), "not a regular file (a character device)"),
        "fifo": (lambda p: os.mkfifo(p), "not a regular file (a FIFO)"),
        "alias_bomb": (lambda p: p.write_text("downstream: ctc\n" + BOMB), "YAML anchors (&name) are not accepted"),
        "downstream_list": (lambda p: p.write_text("downstream: [speech_commands, asr]\n"),
                            "the args YAML's downstream must be a name (e.g. speech_commands), got ['speech"),
    }[kind]
    model, args = _hostile_args(tmp_path, make)
    assert kind != "alias_bomb" or len(args.read_bytes()) < 700
    proc, seconds = run_cli("score", model, "--allow-missing", cwd=tmp_path, timeout=60)
    assert_one_line_error(proc, "pruned-upstream score: error: ", str(model / "ks"), says)
    assert seconds < 20


def test_a_sparse_1_gib_log_is_read_line_by_line(tmp_path):
    """A log.log of 1 GiB (a hole of zeros, then the test line) is read in bounded memory: the old
    reader held the whole text twice (a MemoryError under the child's 2 GiB data limit)."""
    expdir = _ks(tmp_path / "model", _log(0.9))
    with open(expdir / "log.log", "r+b") as f:
        f.seek(1 << 30, os.SEEK_END)
        f.write(b"\ntest at step 0: 0.93\n")
    assert (expdir / "log.log").stat().st_size > 1 << 30
    proc, seconds = run_cli("score", tmp_path / "model", "--allow-missing", "--json", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert '"points": {"KS": ' in proc.stdout, proc.stdout
    assert seconds < 20
    run = read_expdir(expdir)  # the line after the hole; the hole itself is one line too long to read
    assert run.metrics == {"KS": pytest.approx(93.0)} and run.sources["KS"] == f"{expdir}/log.log:11"


def test_an_upstream_file_that_is_a_fifo_is_never_opened(tmp_path):
    """An args YAML's upstream_ckpt naming a FIFO: the size columns stay empty (the old score waited
    on the FIFO forever)."""
    os.mkfifo(tmp_path / "pipe")
    _expdir(tmp_path / "model", "ks", "speech_commands", {"log.log": _log(0.9)}, upstream_ckpt=str(tmp_path / "pipe"))
    proc, seconds = run_cli("score", tmp_path / "model", "--allow-missing", cwd=tmp_path, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    assert seconds < 20


def test_a_memory_error_in_score_is_one_line(tmp_path, capsys, monkeypatch):
    import pruned_upstream.commands.score as score

    def exhausted(path):
        raise MemoryError

    monkeypatch.setattr(score, "read_results", exhausted)
    assert main(["score", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == "pruned-upstream score: error: out of memory; nothing more was done\n"
