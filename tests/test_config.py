"""Config: defaults, named configs, YAML overrides and `key=value` overrides, with clear errors."""

from __future__ import annotations

import re

import pytest

from pruned_upstream.config import Config, differences
from pruned_upstream.config_files import CONFIG_DIR, load_config, load_saved, save_config


def test_defaults_are_the_papers_recipe():
    cfg = Config()
    assert (cfg.train.steps, cfg.train.lr, cfg.train.warmup) == (200_000, 2e-4, 0.07)
    assert (cfg.train.target_sparsity, cfg.train.sparsity_warmup) == (0.8, 0.07)
    assert cfg.prune.kinds == ["mha", "qk", "vo", "ffn", "int"] and all(cfg.prune.ste.values())
    assert (cfg.distill.pairing, cfg.distill.loss, cfg.distill.every) == ("learned", "mse", 3)


@pytest.mark.parametrize("name", ["demo", "wavlm_base_sp80", "final_distill"])
def test_named_configs_load(name):
    cfg = load_config(name)
    assert cfg.train.steps > 0


def test_final_distill_is_a_second_stage_over_the_recipe():
    first, second = load_config("wavlm_base_sp80"), load_config("final_distill")
    assert second.prune.enabled is False and second.distill.pairing == "fixed"
    assert second.student.checkpoint.endswith(".safetensors")
    assert second.data.crop == first.data.crop  # inherited through `base:`
    assert second.train.steps == 25_000 and second.train.lr == 1e-4


def test_every_value_of_the_recipe_names_its_source():
    for line in (CONFIG_DIR / "wavlm_base_sp80.yaml").read_text().splitlines():
        if re.match(r"^\s+\w+:\s*\S", line):  # a key with a value
            assert "#" in line, f"no source for: {line.strip()}"


def test_overrides_are_typed():
    cfg = load_config("demo", ["train.steps=12", "train.lr=3e-4", "prune.ste.mha=false",
                               "distill.teacher_layers=1,3", "train.batch_size=null", "train.max_batch_samples=8000",
                               "teacher.arch.num_layers=3", "data.source=on", "train.save_every=2e3"])
    assert cfg.train.steps == 12 and cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.prune.ste["mha"] is False and cfg.prune.ste["qk"] is True
    assert cfg.distill.teacher_layers == [1, 3]
    assert cfg.train.batch_size is None and cfg.train.max_batch_samples == 8000
    assert cfg.teacher.arch == {"num_layers": 3}  # merged into the demo's mapping
    assert cfg.data.source == "on"  # a string field takes the text, not YAML's boolean
    assert cfg.train.save_every == 2000
    assert load_config("", ["prune.ste=false"]).prune.ste == {k: False for k in Config().prune.ste}


@pytest.mark.parametrize("override, message", [
    ("train.stepz=3", "unknown config key 'train.stepz'"),
    ("trian.steps=3", "unknown config key 'trian.steps'"),
    ("train.steps=1.5", "train.steps must be int"),
    ("train.lr=fast", "train.lr must be float"),
    ("prune.ste.heads=true", "unknown config key 'prune.ste.heads'"),
    ("distill.pairing=greedy", "distill.pairing must be one of learned, fixed"),
    ("train.target_sparsity=1.5", "train.target_sparsity must lie in [0, 1)"),
    ("train.steps", "is not key=value"),
    ("prune.kinds=mha,heads", "prune.kinds has unknown kinds ['heads']"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config("demo", [override])


def test_yaml_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: demo\ntrain:\n  stpes: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown config key 'train.stpes'"):
        load_config(str(bad))
    bad.write_text("trainer:\n  steps: 3\n")
    with pytest.raises(ValueError, match="unknown section 'trainer'"):
        load_config(str(bad))
    with pytest.raises(FileNotFoundError, match="neither a file nor a named config"):
        load_config("no_such_config")


def test_a_yaml_file_holds_overrides_of_its_base(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("base: demo\ntrain:\n  steps: 7\n")
    cfg = load_config(str(child), ["train.log_every=3"])
    assert (cfg.train.steps, cfg.train.log_every) == (7, 3)
    assert cfg.train.target_sparsity == load_config("demo").train.target_sparsity


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("final_distill", ["train.steps=9", "distill.student_layers=2,4,6,8"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_saved(tmp_path / "config.yaml")
    assert again == cfg and differences(again, cfg) == []
    again.train.lr = 1.0
    assert differences(again, cfg) == ["train.lr"]
