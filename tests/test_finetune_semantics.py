"""Fine-tuning through our upstream behaves as through s3prl's experts (`-f`, --upstream_trainable).

s3prl's wavlm, hubert and wav2vec2 experts set feature_grad_mult = 0 (no gradient reaches
the CNN) and layerdrop = 0, and keep the file's dropouts active in train mode. Ours does the
same with the rates read from the file: a release's cfg, a Hugging Face config.json, or the
teacher's rates that our export records in the compact file's metadata.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from conftest import rel_err, release_cfg, save_release_checkpoint
from test_families import s3prl_checkpoint

from pruned_upstream import export, load_model, make_prunable, save_model
from pruned_upstream.checkpoints import CheckpointError
from pruned_upstream.gating import PruneConfig
from pruned_upstream.model import WavLM, tiny_arch
from pruned_upstream.model.dropout import METADATA_KEY, RATE_NAMES, active_dropout
from pruned_upstream.model.prunable import gates
from pruned_upstream.s3prl_plugin.hubconf import pruned_wavlm_local

FAMILIES = ("wavlm", "hubert", "wav2vec2")
RATES = dict(dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, dropout_input=0.1)


def _wavs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) for n in (8000, 5000, 6500)]


def _release_file(path, family: str, rates: dict, pre_ln=False):
    """A release-layout file of `family` whose cfg carries `rates` (s3prl's field names)."""
    if family == "wavlm":
        cfg = {**release_cfg(pre_ln=pre_ln, mode="layer_norm" if pre_ln else "default"), **rates}
        save_release_checkpoint(path, cfg)
        return
    s3prl_checkpoint(path, family, "layer_norm" if pre_ln else "default", pre_ln, extra=rates)


def _s3prl_expert(family: str, path):
    import s3prl.hub

    return getattr(s3prl.hub, f"{family}_local")(ckpt=str(path))


def _train_forward(upstream, wavs, seed):
    upstream.train()
    torch.manual_seed(seed)
    return upstream(wavs)["hidden_states"]


def _cnn(upstream):
    return upstream.model.feature_extractor


@pytest.mark.parametrize("family", FAMILIES)
def test_train_mode_as_s3prl_expert(tmp_path, family):
    """CNN frozen (no gradient, as s3prl's), dropout on in train mode, eval outputs equal s3prl's."""
    _release_file(tmp_path / "m.pt", family, RATES)
    ours, theirs = pruned_wavlm_local(str(tmp_path / "m.pt")), _s3prl_expert(family, tmp_path / "m.pt")
    assert ours.model.dropout_rates == RATES and active_dropout(ours.model) == RATES
    w = _wavs()
    for upstream in (ours, theirs):
        upstream.zero_grad(set_to_none=True)
        sum(h.pow(2).mean() for h in _train_forward(upstream, w, 0)).backward()
        assert all(p.grad is None for p in _cnn(upstream).parameters())  # s3prl: features under no_grad
        assert upstream.model.layer_norm.weight.grad is not None  # what follows the CNN learns
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in upstream.model.encoder.parameters())
    with torch.no_grad():
        for upstream in (ours, theirs):  # s3prl's too: the reference does drop
            a, b = _train_forward(upstream, w, 1), _train_forward(upstream, w, 2)
            assert all(x.shape == y.shape for x, y in zip(a, b))
            assert all(not torch.allclose(x, y) for x, y in zip(a, b))  # every hidden state differs
        ours.eval(), theirs.eval()
        got, expected = ours(w)["hidden_states"], theirs(w)["hidden_states"]
    assert len(got) == len(expected) == 3
    assert all(rel_err(x, y) < 1e-5 for x, y in zip(got, expected))


@pytest.mark.parametrize("rate", RATE_NAMES)
@pytest.mark.parametrize("family,pre_ln", [("wavlm", False), ("wavlm", True), ("hubert", False), ("wav2vec2", True)])
def test_each_rate_acts_where_s3prl_applies_it(tmp_path, family, pre_ln, rate):
    """One rate at 1.0 zeroes what it drops, deterministically: train-mode outputs then equal
    s3prl's only when the dropout sits where s3prl's model applies it (before or after a
    LayerNorm, inside or outside a residual)."""
    _release_file(tmp_path / "m.pt", family, {**dict.fromkeys(RATE_NAMES, 0.0), rate: 1.0}, pre_ln)
    ours, theirs = pruned_wavlm_local(str(tmp_path / "m.pt")), _s3prl_expert(family, tmp_path / "m.pt")
    w = _wavs(3)
    with torch.no_grad():
        got, expected = _train_forward(ours, w, 0), _train_forward(theirs, w, 0)
        ours.eval()
        clean = ours(w)["hidden_states"]
    assert len(got) == len(expected)
    for x, y in zip(got, expected):
        assert torch.isfinite(x).all() and rel_err(x, y) < 1e-5
    assert not torch.allclose(got[-1], clean[-1])  # the rate did act


def test_loading_never_switches_dropout_on(tmp_path):
    """The trainer builds teacher and student with load_model: the file's rates are recorded,
    not applied, and the CNN keeps its gradient (our pruning trains it: training unchanged)."""
    from pruned_upstream.config import Config
    from pruned_upstream.training.models import build_student, build_teacher

    _release_file(tmp_path / "m.pt", "wavlm", RATES)
    teacher = load_model(tmp_path / "m.pt")
    assert teacher.dropout_rates == RATES
    assert active_dropout(teacher) == dict.fromkeys(RATE_NAMES, 0.0) and teacher.feature_grad_mult == 1.0
    w = torch.nn.utils.rnn.pad_sequence(_wavs(), batch_first=True)
    teacher.train()
    torch.manual_seed(0)
    a = teacher(w)
    torch.manual_seed(1)
    b = teacher(w)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    a[-1].pow(2).mean().backward()
    assert all(p.grad is not None for p in teacher.feature_extractor.parameters())

    cfg = Config()
    cfg.teacher.checkpoint = str(tmp_path / "m.pt")
    student = build_student(cfg, build_teacher(cfg))
    assert student.training and active_dropout(student) == dict.fromkeys(RATE_NAMES, 0.0)
    assert student.feature_grad_mult == 1.0 and gates(student)


def test_compact_export_records_and_applies_the_teachers_rates(tmp_path):
    rates = dict(dropout=0.2, attention_dropout=0.05, activation_dropout=0.1, dropout_input=0.05)
    _release_file(tmp_path / "teacher.pt", "wavlm", rates)
    student = make_prunable(copy.deepcopy(load_model(tmp_path / "teacher.pt")))
    with torch.no_grad():
        for g in gates(student).values():
            g.log_alpha.normal_(0, 4)
    compact = export(student.eval())
    assert compact.dropout_rates == rates and active_dropout(compact) == dict.fromkeys(RATE_NAMES, 0.0)
    save_model(compact, tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert json.loads(f.metadata()[METADATA_KEY]) == rates  # apart from the architecture JSON
    upstream = pruned_wavlm_local(str(tmp_path / "m.safetensors"))
    assert active_dropout(upstream.model) == rates
    w = _wavs()
    upstream.zero_grad(set_to_none=True)
    _train_forward(upstream, w, 0)[-1].pow(2).mean().backward()
    assert all(p.grad is None for p in _cnn(upstream).parameters())
    with torch.no_grad():
        assert not torch.allclose(_train_forward(upstream, w, 1)[-1], _train_forward(upstream, w, 2)[-1])
        upstream.eval()
        got = upstream(w)["hidden_states"]
        lengths = torch.tensor([len(x) for x in w])
        expected = load_model(tmp_path / "m.safetensors")(torch.nn.utils.rnn.pad_sequence(w, batch_first=True), lengths)
    assert all(rel_err(x, y) < 1e-5 for x, y in zip(got, expected))
    # dropping layers (`-g drop_layers`) keeps the rates
    assert load_model(tmp_path / "m.safetensors", drop_layers=[1]).dropout_rates == rates


def test_training_checkpoint_carries_the_rates_to_the_export(tmp_path):
    """`pruned-upstream export RUN` exports load_student(RUN): its checkpoint records the teacher's rates."""
    from pruned_upstream import run_dir as rundir

    torch.manual_seed(0)
    student = make_prunable(WavLM(tiny_arch()))
    student.dropout_rates = dict(RATES)
    rundir.save_checkpoint(tmp_path / "run", 1, student, dataclasses.asdict(PruneConfig()), {"step": 1})
    loaded = rundir.load_student(tmp_path / "run")
    assert loaded.dropout_rates == RATES and active_dropout(loaded) == dict.fromkeys(RATE_NAMES, 0.0)
    assert export(loaded).dropout_rates == RATES


def test_files_without_rates_have_no_dropout(tmp_path):
    """Our files written before the rates were recorded (or from a random teacher): rates 0."""
    torch.manual_seed(0)
    save_model(WavLM(tiny_arch()), tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert METADATA_KEY not in f.metadata()
    upstream = pruned_wavlm_local(str(tmp_path / "m.safetensors"))
    assert active_dropout(upstream.model) == dict.fromkeys(RATE_NAMES, 0.0)
    w = _wavs()
    with torch.no_grad():
        a, b = _train_forward(upstream, w, 1), _train_forward(upstream, w, 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_hugging_face_rates(tmp_path):
    """config.json's hidden_dropout, attention_dropout, activation_dropout, feat_proj_dropout."""
    from transformers import WavLMConfig, WavLMModel

    cfg = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      conv_dim=(32,) * 5, conv_kernel=(10, 8, 4, 2, 2), conv_stride=(5, 4, 4, 2, 2),
                      num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, num_buckets=16,
                      max_bucket_distance=40, hidden_dropout=0.2, attention_dropout=0.15, activation_dropout=0.05,
                      feat_proj_dropout=0.01)
    WavLMModel(cfg).save_pretrained(tmp_path / "hf")
    rates = dict(dropout=0.2, attention_dropout=0.15, activation_dropout=0.05, dropout_input=0.01)
    assert load_model(tmp_path / "hf").dropout_rates == rates
    assert active_dropout(pruned_wavlm_local(str(tmp_path / "hf")).model) == rates


@pytest.mark.parametrize("value", ['{"dropout": 5}', '{"dropout": NaN}', '{"dropout": "0.1"}', '{"dropout": true}',
                                   '{"layerdrop": 0.1}', '[0.1]', "[" * 3000 + "]" * 3000, "not json"])
def test_bad_rates_in_metadata_are_refused_in_one_line(tmp_path, value):
    from safetensors.torch import save_file

    from pruned_upstream.checkpoints import ARCH_KEY

    model = WavLM(tiny_arch())
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "m.safetensors"), metadata={ARCH_KEY: model.arch.to_json(), METADATA_KEY: value})
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "m.safetensors")
    assert "dropout" in str(err.value) and "\n" not in str(err.value) and len(str(err.value)) < 600


@pytest.mark.parametrize("value", ["${model.dropout}", -0.1, 1.5, None, 10**100, [0.1] * 100_000],
                         ids=["interpolation", "negative", "above 1", "None", "huge int", "long list"])
def test_bad_rates_in_a_release_cfg_are_refused(tmp_path, value):
    """Refused in one line naming the rate: the message shows a bounded text, never the value itself."""
    _release_file(tmp_path / "m.pt", "wavlm", RATES)
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    ckpt["cfg"]["attention_dropout"] = value
    torch.save(ckpt, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="attention_dropout") as err:
        load_model(tmp_path / "m.pt")
    assert "\n" not in str(err.value) and len(str(err.value)) < 600


def test_feature_grad_mult_scales_the_cnn_gradient():
    torch.manual_seed(0)
    model = WavLM(tiny_arch()).train()
    w = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
    grads = {}
    for mult in (1.0, 0.25):
        model.zero_grad(set_to_none=True)
        model.feature_grad_mult = mult
        model(w)[-1].pow(2).mean().backward()
        grads[mult] = getattr(model.feature_extractor.conv_layers[1], "0").weight.grad.clone()
    assert torch.allclose(grads[0.25], grads[1.0] * 0.25, rtol=1e-4, atol=1e-9)


def test_prune_then_export_records_the_teachers_rates(tmp_path):
    """End to end: `prune` from a release teacher, then `export RUN`: the compact file carries the
    teacher's rates, which the upstream applies in train mode only."""
    from training_fixtures import tiny, write_manifest

    from pruned_upstream.commands.export import export_command
    from pruned_upstream.training.run import run_prune

    rates = dict(dropout=0.15, attention_dropout=0.05, activation_dropout=0.0, dropout_input=0.1)
    _release_file(tmp_path / "teacher.pt", "wavlm", rates)
    (tmp_path / "audio").mkdir()
    manifest = write_manifest(tmp_path / "audio", count=4)
    assert run_prune("demo", tiny(manifest, f"teacher.checkpoint={tmp_path / 'teacher.pt'}", "train.steps=2",
                                  "train.save_every=2"), tmp_path / "run") == 0
    assert export_command(str(tmp_path / "run"), str(tmp_path / "m.safetensors")) == 0
    assert load_model(tmp_path / "m.safetensors").dropout_rates == rates
    assert active_dropout(pruned_wavlm_local(str(tmp_path / "m.safetensors")).model) == rates
