"""``superb -e states-N.ckpt``: the Args and Config s3prl would adopt are checked first (issue 18).

pruned_upstream/s3prl_plugin/past_exp.py; docs/s3prl.md "Resuming from a checkpoint".
"""

from __future__ import annotations

import copy
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import yaml

from pruned_upstream.s3prl_plugin import preflight, runner
from pruned_upstream.s3prl_plugin.past_exp import PastExpError, check_args_and_config
from pruned_upstream.s3prl_plugin.tasks import TASKS, config_path

MARKER = "MARKER"
CODE = f"__import__('os').system('touch {MARKER}')"


def s3prl_root() -> Path:
    return preflight.installed_s3prl_root()


def args_of(downstream: str, **extra) -> Namespace:
    return Namespace(**{"upstream": "pruned_wavlm_local", "downstream": downstream, "hub": "torch",
                        "expdir": "/tmp/x", "mode": "train", **extra})


@pytest.fixture(scope="module", autouse=True)
def registered():
    runner.register_upstreams()


@pytest.mark.parametrize("task", sorted(TASKS))
def test_our_configs_and_s3prl_s_own_pass(task):
    """Every shipped config and every config s3prl ships for the downstream: nothing refused."""
    spec = TASKS[task]
    configs = [config_path(task), *sorted((s3prl_root() / "downstream" / spec.downstream).glob("*.yaml"))]
    checked = 0
    for path in configs:
        config = yaml.safe_load(path.read_text())
        if isinstance(config, dict) and "downstream_expert" in config:
            check_args_and_config(args_of(spec.downstream), config, s3prl_root())
            checked += 1
    assert checked >= 1


def asr_config() -> dict:
    return yaml.safe_load(config_path("ASR").read_text())


@pytest.mark.parametrize("edit, words", [
    (lambda c: c["downstream_expert"]["modelrc"].__setitem__("select", CODE), "modelrc.select"),
    (lambda c: c["downstream_expert"]["modelrc"].__setitem__("select", "open"), "not a name s3prl"),
    (lambda c: c["downstream_expert"]["modelrc"].__setitem__("select", "x,,config.y=1"), "modelrc.select"),
    (lambda c: c["runner"].__setitem__("eval_dataloaders", [f"dev_dataloader if {CODE} else self.get_dev"]),
     "runner split"),
    (lambda c: c["downstream_expert"]["datarc"].__setitem__("x", torch.zeros(1)), "Tensor"),
    (lambda c: c["downstream_expert"].setdefault("decoder_args", {}).__setitem__("unk_weight", CODE), "unk_weight"),
])
def test_values_s3prl_would_eval_are_refused(edit, words):
    config = copy.deepcopy(asr_config())
    edit(config)
    with pytest.raises(PastExpError) as info:
        check_args_and_config(args_of("asr"), config, s3prl_root())
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("args, words", [
    (args_of("asr", upstream="not_an_upstream"), "Args.upstream"),
    (args_of("asr", upstream="__class__"), "Args.upstream"),
    (args_of("../../x"), "Args.downstream"),
    (args_of("asr", hub="huggingface"), "Args.hub"),
])
def test_args_s3prl_would_follow_are_refused(args, words):
    with pytest.raises(PastExpError) as info:
        check_args_and_config(args, asr_config(), s3prl_root())
    assert words in str(info.value)


def test_superb_e_refuses_the_checkpoint_in_one_line_before_s3prl_loads_it(tmp_path, monkeypatch, capsys):
    """A states-N.ckpt whose ASR modelrc.select is code: exit 2, one line, no marker (s3prl never ran)."""
    monkeypatch.chdir(tmp_path)
    config = asr_config()
    config["downstream_expert"]["modelrc"]["select"] = CODE
    ckpt = tmp_path / "exp" / "states-10.ckpt"
    ckpt.parent.mkdir()
    torch.save({"Args": args_of("asr", expdir=str(ckpt.parent)), "Config": config, "Step": 10}, ckpt)
    assert runner.run_superb(["-m", "evaluate", "-e", str(ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "modelrc.select" in err[0] and str(ckpt) in err[0], err
    assert not (tmp_path / MARKER).exists() and not (s3prl_root() / MARKER).exists()
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["states-10.ckpt"]  # s3prl wrote nothing
    # -a on the experiment directory adopts the same checkpoint: refused as well
    assert runner.run_superb(["-m", "train", "-a", "-p", str(ckpt.parent), "-d", "asr",
                              "-u", "pruned_wavlm_local", "-k", str(ckpt)]) == 2
    assert "modelrc.select" in capsys.readouterr().err


def test_a_file_torch_cannot_read_safely_is_refused(tmp_path, capsys):
    ckpt = tmp_path / "states-1.ckpt"
    torch.save({"Args": args_of("asr"), "Config": asr_config(), "extra": Path("x")}, ckpt)  # a PosixPath global
    assert runner.run_superb(["-m", "evaluate", "-e", str(ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused global pathlib" in err[0] and str(ckpt) in err[0], err


def test_torchscript_and_tar_checkpoints_are_refused_before_any_torch_loader(tmp_path, monkeypatch, capsys):
    """-e reads the checkpoint with our reader, not torch.load: a TorchScript archive (torch.load hands it
    to torch.jit.load) and a tar archive (torch's legacy loader extracts it) are refused in one line, and
    torch.load is never called."""
    import tarfile

    def no_torch_load(*args, **kwargs):
        raise AssertionError("torch.load was called on an untrusted checkpoint")

    scripted = tmp_path / "states-2.ckpt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(scripted))
    tarred = tmp_path / "states-3.ckpt"
    with tarfile.open(tarred, "w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(tarfile.TarInfo("\udc80" + "x" * 20))  # first byte 0x80, as a pickle's
    assert tarred.read_bytes()[:1] == b"\x80"
    monkeypatch.setattr(torch, "load", no_torch_load)
    for ckpt, words in ((scripted, "TorchScript"), (tarred, "tar archive")):
        assert runner.run_superb(["-m", "evaluate", "-e", str(ckpt)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and str(ckpt) in err[0], err
