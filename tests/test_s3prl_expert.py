"""The s3prl upstream: the same hidden states as s3prl's `wavlm_local` and as load_model."""

from __future__ import annotations

import torch
from conftest import rel_err, release_cfg, save_release_checkpoint

from pruned_upstream import export, load_model, make_prunable, save_model
from pruned_upstream.model import WavLM, tiny_arch
from pruned_upstream.model.prunable import gates
from pruned_upstream.s3prl_plugin.hubconf import pruned_wavlm_local


def _wavs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) for n in (8000, 5000, 6500)]


def test_matches_s3prl_wavlm_local(tmp_path):
    import s3prl.hub

    path = tmp_path / "tiny.pt"
    save_release_checkpoint(path, release_cfg())
    theirs = s3prl.hub.wavlm_local(ckpt=str(path)).eval()
    ours = pruned_wavlm_local(str(path)).eval()
    with torch.no_grad():
        a, b = ours(_wavs())["hidden_states"], theirs(_wavs())["hidden_states"]
    assert len(a) == len(b)
    assert all(rel_err(x, y) < 1e-5 for x, y in zip(a, b))
    assert ours.get_downsample_rates("hidden_states") == 320


def test_exported_model_and_constant_layer_count(tmp_path):
    torch.manual_seed(0)
    student = make_prunable(WavLM(tiny_arch(num_layers=3)))
    with torch.no_grad():
        for g in gates(student).values():
            g.log_alpha.normal_(0, 4)
    save_model(export(student.eval()), tmp_path / "m.safetensors")
    upstream = pruned_wavlm_local(str(tmp_path / "m.safetensors"))
    reference = load_model(tmp_path / "m.safetensors")
    counts = set()
    for mode in ("train", "eval"):
        upstream.train(mode == "train")
        for seed in range(3):
            wavs = _wavs(seed)
            with torch.no_grad():
                hs = upstream(wavs)["hidden_states"]
                lengths = torch.tensor([len(w) for w in wavs])
                expected = reference(torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True), lengths)
            counts.add(len(hs))
            assert all(torch.equal(x, y) for x, y in zip(hs, expected))
    assert counts == {4}


def test_score_table_adds_size_of_a_known_upstream(tmp_path, capsys):
    """An s3prl expdir whose upstream file exists gets parameters and leaderboard-set MACs in the table."""
    import yaml

    from pruned_upstream.macs import SUPERB_LENGTHS, superb_macs
    from pruned_upstream.commands.score import run_score

    model = WavLM(tiny_arch())
    save_model(model, tmp_path / "m.safetensors")
    exp = tmp_path / "ks"
    exp.mkdir()
    (exp / "args_2026.yaml").write_text(yaml.safe_dump(
        {"downstream": "speech_commands", "upstream_ckpt": str(tmp_path / "m.safetensors"), "mode": "evaluate"}))
    (exp / "config_2026.yaml").write_text(yaml.safe_dump({"downstream_expert": {}}))
    (exp / "log.log").write_text("test at step 0: 0.5\n")
    assert run_score(str(exp), allow_missing=True) == 0
    out = capsys.readouterr().out
    macs = superb_macs(model.arch, SUPERB_LENGTHS, leaderboard=True) / 1e9
    assert "params(M)" in out and f"{model.num_params() / 1e6:9.2f}" in out and f"{macs:8.1f}" in out
