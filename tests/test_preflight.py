"""preflight: what a SUPERB task lacks, against the installed PyPI s3prl and fake roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from pruned_upstream.s3prl_plugin.preflight import (
    Problem,
    apply_overrides,
    check_data,
    check_libsox,
    check_packages,
    effective_config,
    format_problems,
    preflight,
    resolve_config_paths,
)
from pruned_upstream.s3prl_plugin.tasks import TASKS, Package, get_task

S3PRL_KINDS = {"s3prl_file", "s3prl_tool"}


def names(problems: list[Problem], kinds: set[str]) -> set[str]:
    return {p.name for p in problems if p.kind in kinds}


def fake_s3prl_root(root: Path, key: str) -> Path:
    spec = TASKS[key]
    for rel in spec.s3prl_files + spec.tool_files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("")
    return root


def test_pr_against_the_pypi_sdist_names_the_missing_ctc_corpus(tmp_path):
    # An sdist-like s3prl package: downstream/ctc holds its code but no corpus/, vocab/ or lexicon/
    # (the PyPI 0.4.18 sdist ships no data files), whatever s3prl this environment installed.
    sdist = tmp_path / "s3prl"
    for rel in ("__init__.py", "downstream/ctc/__init__.py", "downstream/ctc/expert.py", "downstream/ctc/data.py"):
        (sdist / rel).parent.mkdir(parents=True, exist_ok=True)
        (sdist / rel).write_text("")
    problems = preflight("PR", s3prl_root=sdist)
    missing = names(problems, {"s3prl_file"})
    assert {"downstream/ctc/corpus/libriphone.py", "downstream/ctc/vocab/phoneme.txt"} <= missing
    remedy = next(p.remedy for p in problems if p.name == "downstream/ctc/corpus/libriphone.py")
    assert "pip install -e" in remedy and "git clone" in remedy
    assert "downstream/ctc/corpus" in format_problems(problems, "PR")


def test_ks_and_ic_need_no_file_beyond_the_sdist():
    for key in ("KS", "IC"):
        assert names(preflight(key), S3PRL_KINDS) == set(), key


@pytest.mark.parametrize("key", TASKS)
def test_a_root_holding_the_needed_files_reports_none(key, tmp_path):
    root = fake_s3prl_root(tmp_path / "s3prl", key)
    assert names(preflight(key, s3prl_root=root), S3PRL_KINDS) == set()


def test_removing_one_file_reports_exactly_that_file(tmp_path):
    root = fake_s3prl_root(tmp_path / "s3prl", "PR")
    (root / "downstream/ctc/vocab/phoneme.txt").unlink()
    assert names(preflight("PR", s3prl_root=root), S3PRL_KINDS) == {"downstream/ctc/vocab/phoneme.txt"}


def test_packages_missing_or_too_new_are_reported_by_pip_name():
    absent = Package("no-such-pkg-xyz", "no_such_pkg_xyz", "a test")
    capped = Package("PyYAML<1", "yaml", "a test", below_major=1)  # PyYAML is 5.x or 6.x
    fine = Package("PyYAML", "yaml", "a test", below_major=100)
    problems = check_packages((absent, capped, fine))
    assert [p.name for p in problems] == ["no-such-pkg-xyz", "PyYAML<1"]
    assert "too new" in problems[1].remedy and all("pip install" in p.remedy for p in problems)


def test_libsox_is_found_only_where_the_unversioned_library_is(tmp_path, monkeypatch):
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    (tmp_path / "libsox.so.3").write_text("")
    (problem,) = check_libsox((str(tmp_path),))
    assert problem.kind == "system" and "libsox-dev" in problem.remedy
    (tmp_path / "libsox.so").write_text("")
    assert check_libsox((str(tmp_path),)) == []


def test_resolve_makes_s3prl_paths_absolute_and_expands_set_variables(tmp_path):
    config = {
        "a": "./downstream/asr/char.dict",
        "b": ["downstream/ctc/x.txt", "/abs/file"],
        "c": {"d": "${DATA}/train", "e": "${UNSET_VAR}/x", "f": "-math.inf", "g": 3},
    }
    resolved = resolve_config_paths(config, tmp_path, environ={"DATA": "/data"})
    assert resolved["a"] == str(tmp_path / "downstream/asr/char.dict")
    assert resolved["b"] == [str(tmp_path / "downstream/ctc/x.txt"), "/abs/file"]
    assert resolved["c"] == {"d": "/data/train", "e": "${UNSET_VAR}/x", "f": "-math.inf", "g": 3}
    assert config["a"] == "./downstream/asr/char.dict"  # the input is not changed


def test_overrides_follow_s3prl_syntax():
    config = {"optimizer": {"lr": 1e-4}, "downstream_expert": {"datarc": {"test_fold": "fold1"}}}
    out = apply_overrides(
        config, "config.optimizer.lr=1e-3,,config.downstream_expert.datarc.test_fold='fold2',,"
        "args.expdir=elsewhere,,config.new.path=/data/x"
    )
    assert out["optimizer"]["lr"] == pytest.approx(1e-3)
    assert out["downstream_expert"]["datarc"]["test_fold"] == "fold2"
    assert out["new"] == {"path": "/data/x"} and "args" not in out
    assert config["optimizer"]["lr"] == pytest.approx(1e-4)


def test_data_checks_name_unset_variables_missing_dirs_and_markers(tmp_path):
    spec = get_task("KS")
    unset = effective_config("KS", tmp_path, environ={})
    assert {p.name for p in check_data(spec, unset)} == {"SPEECH_COMMANDS_ROOT", "SPEECH_COMMANDS_TEST_ROOT"}
    assert all(p.kind == "env" and "-o config.downstream_expert.datarc." in p.remedy for p in check_data(spec, unset))

    train, test = tmp_path / "train", tmp_path / "test"
    (train / "_background_noise_").mkdir(parents=True)
    environ = {"SPEECH_COMMANDS_ROOT": str(train), "SPEECH_COMMANDS_TEST_ROOT": str(test)}
    config = effective_config("KS", tmp_path, environ=environ)
    problems = check_data(spec, config)
    assert {(p.kind, p.name) for p in problems} == {("data", str(train / "yes")), ("data", str(test))}
    assert set(problems) <= set(preflight("KS", config=config))  # preflight runs the data checks

    (train / "yes").mkdir()
    (test / "yes").mkdir(parents=True)
    assert check_data(spec, config) == []


def test_a_variable_shared_by_three_fields_is_reported_once(tmp_path):
    problems = check_data(get_task("SD"), effective_config("SD", tmp_path, environ={}))
    assert [p.name for p in problems] == ["LIBRI2MIX_SD_DATA"]


def test_format_problems_groups_by_kind():
    assert "nothing missing" in format_problems([], "ks")
    text = format_problems([Problem("package", "h5py", "pip install h5py"), Problem("data", "/x", "not found")], "SD")
    assert text.splitlines()[0] == "SUPERB SD: 2 thing(s) missing:"
    assert "[package]" in text and "h5py: pip install h5py" in text and "/x: not found" in text


def test_task_lookup_is_case_insensitive_and_names_the_known_keys():
    assert get_task("qbe").key == "QbE" and get_task("asv").downstream == "sv_voxceleb1"
    with pytest.raises(KeyError, match="PR, KS, IC"):
        get_task("ST")
