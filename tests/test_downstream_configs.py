"""downstream_configs/*.yaml: complete, sourced, consistent with tasks.py and s3prl 0.4.18."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from s3prl_fixtures import IC_INTENTS, make_fluent_commands, make_speech_commands

from pruned_upstream.s3prl_plugin.preflight import (
    S3PRL_RELATIVE,
    effective_config,
    get_field,
    installed_s3prl_root,
    load_task_config,
)
from pruned_upstream.s3prl_plugin.tasks import LIGHTHUBERT_LRS, S3PRL_COMMIT, TASKS, config_path

S3PRL_ROOT = installed_s3prl_root()
ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
TOP_KEY = re.compile(r"^([A-Za-z_]\w*):")


def runner_keys_read_by_s3prl() -> set[str]:
    """Runner fields the installed s3prl runner.py reads without a default.

    ``config['runner'][KEY]`` and ``config['runner'].get(KEY)`` (None breaks it too).
    """
    source = (S3PRL_ROOT / "downstream" / "runner.py").read_text()
    runner = r"config\[['\"]runner['\"]\]"
    indexed = re.findall(runner + r"\[['\"](\w+)['\"]\]", source)
    got = re.findall(runner + r"\.get\(['\"](\w+)['\"]\)", source)
    return set(indexed) | set(got)


def strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield value


@pytest.mark.parametrize("key", TASKS)
def test_config_parses_and_has_the_sections_s3prl_reads(key):
    spec, config = TASKS[key], load_task_config(key)
    assert isinstance(config["runner"], dict) and isinstance(config["downstream_expert"], dict)
    assert (S3PRL_ROOT / "downstream" / spec.downstream / "expert.py").is_file(), spec.downstream
    if spec.lr is None:  # QbE: evaluation only, as s3prl's quesst14_dtw/config.yaml
        assert config["runner"] == {} and "optimizer" not in config
        return
    needed = runner_keys_read_by_s3prl()
    assert {"total_steps", "log_step", "eval_dataloaders"} <= needed  # the regex still finds reads
    assert needed <= set(config["runner"]), f"{key}: runner lacks {needed - set(config['runner'])}"
    assert {"name", "torch_optim_name", "lr"} <= set(config["optimizer"])
    assert config["optimizer"]["lr"] == pytest.approx(spec.lr)


def preceding_comments(lines: list[str], index: int) -> list[str]:
    """The contiguous comment lines right above ``lines[index]``."""
    block = []
    for line in reversed(lines[:index]):
        if not line.startswith("#"):
            break
        block.append(line)
    return block


@pytest.mark.parametrize("key", TASKS)
def test_every_top_level_section_names_its_source(key):
    lines = config_path(key).read_text().splitlines()
    assert S3PRL_COMMIT[:8] in "\n".join(lines[:4]), "header must name the s3prl commit"
    tops = [i for i, line in enumerate(lines) if TOP_KEY.match(line)]
    assert len(tops) == len(load_task_config(key))
    for i in tops:
        comments = preceding_comments(lines, i)
        assert any("source:" in c and "s3prl" in c for c in comments), f"{key}: {lines[i]!r} has no source comment"


@pytest.mark.parametrize("key", [k for k, spec in TASKS.items() if spec.lr is not None])
def test_learning_rate_line_cites_where_it_comes_from(key):
    lines = config_path(key).read_text().splitlines()
    (i,) = [i for i, line in enumerate(lines) if re.match(r"\s+lr:", line)]
    context = "\n".join(preceding_comments([l.strip() for l in lines], i) + [lines[i]])
    assert LIGHTHUBERT_LRS.removeprefix("https://") in context, f"{key}: lr without its source"


@pytest.mark.parametrize("key", TASKS)
def test_data_placeholders_match_the_task_table(key):
    spec, config = TASKS[key], load_task_config(key)
    used = {name for text in strings(config) for name in ENV.findall(text)}
    assert used == {data.env for data in spec.data_paths}
    for data in spec.data_paths:
        assert f"${{{data.env}}}" in str(get_field(config, data.key)), data.key


@pytest.mark.parametrize("key", TASKS)
def test_every_s3prl_file_a_config_names_is_checked_by_preflight(key):
    spec = TASKS[key]
    for text in strings(load_task_config(key)):
        if text.startswith(S3PRL_RELATIVE):
            rel = text.removeprefix("./")
            assert any(f == rel or f.startswith(rel + "/") for f in spec.s3prl_files), f"{key}: {rel}"


@pytest.mark.parametrize("key", TASKS)
def test_config_holds_every_field_the_installed_expert_indexes(key):
    """``downstream_expert[K]`` and ``self.<section>[K]`` reads in s3prl's expert.py exist in our YAML."""
    source = (S3PRL_ROOT / "downstream" / TASKS[key].downstream / "expert.py").read_text()
    expert_cfg = load_task_config(key)["downstream_expert"]
    top = set(re.findall(r"downstream_expert\[['\"](\w+)['\"]\]", source))
    assert top and top <= set(expert_cfg), f"{key}: missing {top - set(expert_cfg)}"
    for section in ("datarc", "modelrc", "loaderrc", "scorerc", "dtwrc"):
        fields = set(re.findall(rf"self\.{section}\[['\"](\w+)['\"]\]", source))
        missing = fields - set(expert_cfg.get(section, {}))
        assert not missing, f"{key}.{section}: missing {missing}"


def build_expert(downstream: str, config: dict, expdir: Path):
    """Construct the installed s3prl DownstreamExpert the way runner.py does."""
    import importlib

    expert = importlib.import_module(f"s3prl.downstream.{downstream}.expert")
    return expert.DownstreamExpert(upstream_dim=8, upstream_rate=320, expdir=str(expdir), **config)


def test_ks_config_builds_the_installed_speech_commands_expert(tmp_path):
    roots = make_speech_commands(tmp_path / "data")
    environ = {"SPEECH_COMMANDS_ROOT": roots["speech_commands_root"],
               "SPEECH_COMMANDS_TEST_ROOT": roots["speech_commands_test_root"]}
    config = effective_config("KS", S3PRL_ROOT, environ=environ)
    expert = build_expert("speech_commands", config, tmp_path)
    assert expert.projector.out_features == 256
    for split in ("train", "dev", "test"):
        assert expert.get_dataloader(split).batch_size == 32
    assert len(expert.test_dataset) > 0 and len(expert.train_dataset) > 0


def test_ic_config_builds_the_installed_fluent_commands_expert(tmp_path):
    root = make_fluent_commands(tmp_path / "fluent")["file_path"]
    config = effective_config("IC", S3PRL_ROOT, environ={"FLUENT_COMMANDS_ROOT": root})
    expert = build_expert("fluent_commands", config, tmp_path)
    assert expert.projector.out_features == 256
    assert expert.values_per_slot == [len({intent[i] for intent in IC_INTENTS}) for i in range(3)]
    for split in ("train", "dev", "test"):
        assert expert.get_dataloader(split).batch_size == 32


def test_config_yaml_round_trips_through_s3prl_loader():
    """s3prl loads -c with yaml.FullLoader; it must read our files as safe_load does."""
    for key in TASKS:
        with open(config_path(key)) as f:
            assert yaml.load(f, Loader=yaml.FullLoader) == load_task_config(key)
