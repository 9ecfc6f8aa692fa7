"""HuBERT and wav2vec 2.0 in our one model class: parity with s3prl's and transformers' models,
fairseq's pickled releases read safely, exact export of pruned students, parameter counts."""

from __future__ import annotations

import argparse
import sys
import types

import numpy as np
import pytest
import torch
from conftest import TINY_CONV, randomize_, rel_err
from torch.nn.utils.rnn import pad_sequence

from pruned_upstream import export, load_model, make_prunable, save_model
from pruned_upstream.arch import WavLMArch, preset
from pruned_upstream.checkpoints import CheckpointError
from pruned_upstream.model import WavLM, tiny_arch
from pruned_upstream.model.prunable import gates

FAMILIES = ("hubert", "wav2vec2")
CASES = {  # (extractor_mode, layer_norm_first, normalize): Base-style and Large-style
    "base": ("default", False, False),
    "base, normalised wav": ("default", False, True),
    "large": ("layer_norm", True, True),
}


def model_cfg(family: str, mode="default", pre_ln=False):
    cfg = dict(_name=family, extractor_mode=mode, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
               encoder_attention_heads=4, layer_norm_first=pre_ln, conv_feature_layers=TINY_CONV, conv_pos=8,
               conv_pos_groups=4, conv_bias=mode == "layer_norm", final_dim=16)
    if family == "hubert":
        cfg.update(label_rate=50.0, untie_final_proj=pre_ln)  # HuBERT Large unties its final projection
    else:
        cfg.update(quantize_targets=True, latent_vars=8, latent_groups=2, latent_dim=0)
    return cfg


def s3prl_model(family: str, cfg: dict, symbols=None, seed=0):
    """s3prl's own HubertModel / Wav2Vec2Model, every parameter randomised."""
    torch.manual_seed(seed)
    if family == "hubert":
        from s3prl.upstream.hubert.hubert_model import HubertConfig, HubertModel, HubertPretrainingConfig

        model = HubertModel(HubertConfig(**cfg), HubertPretrainingConfig(), symbols)
    else:
        from s3prl.upstream.wav2vec2.wav2vec2_model import Wav2Vec2Config, Wav2Vec2Model

        model = Wav2Vec2Model(Wav2Vec2Config(**cfg))
    return randomize_(model, seed=seed).eval()


def s3prl_checkpoint(path, family: str, mode="default", pre_ln=False, normalize=False, extra: dict | None = None):
    """What s3prl's hubert_local / wav2vec2_local read: task_cfg, model_cfg (with `extra` fields), model_weight."""
    cfg = {**model_cfg(family, mode, pre_ln), **(extra or {})}
    symbols = [["<s>", "<pad>", "</s>", "<unk>"] + [str(i) for i in range(6)]]
    model = s3prl_model(family, {k: v for k, v in cfg.items() if k != "_name"}, symbols)
    ckpt = {"task_cfg": {"normalize": normalize}, "model_cfg": cfg, "model_weight": model.state_dict()}
    if family == "hubert":
        ckpt["dictionaries_symbols"] = symbols
    torch.save(ckpt, path)
    return ckpt


def wavs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) for n in (9000, 6400, 7777)]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_s3prl_upstream_padded_batch(tmp_path, family, case):
    import s3prl.hub

    mode, pre_ln, normalize = CASES[case]
    s3prl_checkpoint(tmp_path / "c.pt", family, mode, pre_ln, normalize)
    reference = getattr(s3prl.hub, f"{family}_local")(ckpt=str(tmp_path / "c.pt")).eval()
    ours = load_model(tmp_path / "c.pt")
    assert ours.arch.family == family and ours.arch.normalize == normalize
    assert not ours.arch.relative_position_embedding and not ours.arch.gru_rel_pos
    w = wavs()
    with torch.no_grad():
        expected = reference(w)["hidden_states"]
        got = ours(pad_sequence(w, batch_first=True), torch.tensor([len(x) for x in w]))
    assert len(got) == len(expected) == 3
    for a, b in zip(got, expected):
        assert a.shape == b.shape and rel_err(a, b) < 1e-5


def test_wav2vec2_and_hubert_mark_padded_frames_differently():
    """s3prl's wav2vec2 uses the CNN's length formula, its hubert the chunk rule: the frame that
    straddles an utterance's end is padded for the first, not for the second."""
    arch = tiny_arch()
    w = pad_sequence(wavs(), batch_first=True)
    lengths = torch.tensor([9000, 6400, 7777])
    outs = {}
    for family in FAMILIES:
        torch.manual_seed(0)
        outs[family] = WavLM(WavLMArch(**{**arch.__dict__, "relative_position_embedding": False,
                                          "gru_rel_pos": False, "family": family})).eval()(w, lengths)[-1]
    assert not torch.allclose(outs["hubert"], outs["wav2vec2"])


def _hf_model(family: str, stable: bool, head: bool = False):
    import transformers as tf

    name = {"hubert": "Hubert", "wav2vec2": "Wav2Vec2"}[family]
    cfg = getattr(tf, f"{name}Config")(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        conv_dim=(32,) * 5, conv_kernel=(10, 8, 4, 2, 2), conv_stride=(5, 4, 4, 2, 2),
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, vocab_size=12,
        do_stable_layer_norm=stable, feat_extract_norm="layer" if stable else "group", conv_bias=stable,
    )
    torch.manual_seed(0)
    cls = getattr(tf, f"{name}ForCTC" if head else f"{name}Model")
    return randomize_(cls(cfg)).eval()


@pytest.mark.parametrize("stable", [False, True], ids=["group-norm post-LN", "layer-norm pre-LN"])
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_transformers(tmp_path, family, stable):
    hf = _hf_model(family, stable)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf")
    assert ours.arch.family == family and ours.arch.layer_norm_first == stable
    wav = torch.randn(2, 8000, generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([8000, 6100])
    with torch.no_grad():
        hf_in = torch.nn.functional.layer_norm(wav, wav.shape[-1:]) if ours.arch.normalize else wav
        expected = hf(hf_in, output_hidden_states=True).hidden_states
        got = ours(wav)
    assert len(got) == len(expected) == 3
    assert all(rel_err(a, b) < 1e-5 for a, b in zip(got, expected))
    if family == "wav2vec2":  # padded batch: transformers' rule is s3prl's wav2vec2 rule (output lengths)
        wav[1, 6100:] = 0
        mask = (torch.arange(8000)[None] < lengths[:, None]).long()
        with torch.no_grad():
            hf_in = torch.stack([torch.nn.functional.pad(torch.nn.functional.layer_norm(w[:n], (int(n),)),
                                                         (0, 8000 - int(n))) for w, n in zip(wav, lengths)]
                                ) if ours.arch.normalize else wav
            expected = hf(hf_in, attention_mask=mask, output_hidden_states=True).hidden_states
            got = ours(wav, lengths)
        frames = int(ours.output_lengths(lengths)[1])
        for a, b in zip(got, expected):  # padded frames hold no meaning in either: compare the valid ones
            assert rel_err(a[0], b[0]) < 1e-5 and rel_err(a[1, :frames], b[1, :frames]) < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_task_model_keeps_the_backbone(tmp_path, family):
    hf = _hf_model(family, stable=False, head=True)
    hf.save_pretrained(tmp_path / "ctc")
    ours = load_model(tmp_path / "ctc")
    wav = torch.randn(1, 6000, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = hf(wav, output_hidden_states=True).hidden_states
        got = ours(wav)
    assert all(rel_err(a, b) < 1e-5 for a, b in zip(got, expected))


# ---------------------------------------------------------------------------- fairseq's pickles
def _fake_fairseq_dictionary(symbols):
    """An object pickled as fairseq.data.dictionary.Dictionary (fairseq is not installed)."""
    module = types.ModuleType("fairseq.data.dictionary")

    class Dictionary:
        pass

    Dictionary.__module__, Dictionary.__qualname__ = "fairseq.data.dictionary", "Dictionary"
    module.Dictionary = Dictionary
    d = Dictionary()
    d.symbols, d.count, d.indices = symbols, [1] * len(symbols), {s: i for i, s in enumerate(symbols)}
    return module, d


def _save_fairseq(path, family, normalize, style, extra=None):
    """A checkpoint laid out as fairseq writes it: hydra cfg (omegaconf) or legacy args (Namespace)."""
    from omegaconf import OmegaConf

    cfg = model_cfg(family)
    symbols = [["<s>", "<pad>", "</s>", "<unk>"] + [str(i) for i in range(6)]]
    model = s3prl_model(family, {k: v for k, v in cfg.items() if k != "_name"}, symbols)
    ckpt = {"model": model.state_dict(), "extra_state": {"val_loss": np.float64(2.5)}, "optimizer_history": [
        {"criterion_name": "HubertCriterion", "num_updates": 400000}]}
    if style == "omegaconf":
        ckpt["args"] = None
        ckpt["cfg"] = OmegaConf.create({"common": {"seed": 1}, "model": cfg,
                                        "task": {"_name": f"{family}_pretraining", "normalize": normalize,
                                                 "data": "${common.seed}", "labels": ["km"]}})
    else:
        ckpt["args"] = argparse.Namespace(arch=family, normalize=normalize, **{k: v for k, v in cfg.items() if k != "_name"})
    module, dictionary = _fake_fairseq_dictionary(symbols[0])
    ckpt["task_state"] = {"dictionaries": [dictionary]}
    ckpt.update(extra or {})
    fake = {"fairseq": types.ModuleType("fairseq"), "fairseq.data": types.ModuleType("fairseq.data"),
            "fairseq.data.dictionary": module}
    assert not set(fake) & set(sys.modules)  # fairseq is not installed
    sys.modules.update(fake)
    try:
        torch.save(ckpt, path, _use_new_zipfile_serialization=style == "omegaconf")  # the 2020 releases: legacy
    finally:
        for name in fake:
            del sys.modules[name]
    return model


@pytest.mark.parametrize("style", ["omegaconf", "namespace"])
@pytest.mark.parametrize("family", FAMILIES)
def test_fairseq_release_read_without_fairseq(tmp_path, family, style):
    path = tmp_path / "r.pt"
    _save_fairseq(path, family, True, style)
    with pytest.raises(Exception, match="Weights only load failed"):  # torch's safe loading refuses these files
        torch.load(path, weights_only=True)
    ours = load_model(path)
    assert ours.arch.family == family and ours.arch.normalize
    s3prl_checkpoint(tmp_path / "c.pt", family, normalize=True)  # the same seed: the same weights
    again = load_model(tmp_path / "c.pt")
    for (k, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


class _Smuggled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _System:
    def __reduce__(self):
        import os

        return (os.system, ("true",))


@pytest.mark.parametrize("evil,name", [("open", "io.open"), ("system", "system")])
def test_fairseq_release_smuggling_a_callable_is_refused(tmp_path, evil, name):
    marker = tmp_path / "pwned"
    payload = _Smuggled(str(marker)) if evil == "open" else _System()
    _save_fairseq(tmp_path / "evil.pt", "hubert", False, "omegaconf", {"extra_state": {"x": payload}})
    with pytest.raises(CheckpointError, match=rf"evil.pt: refused global .*{name}") as err:
        load_model(tmp_path / "evil.pt")
    assert "\n" not in str(err.value) and not marker.exists()


def test_fine_tuned_fairseq_model_is_refused_with_a_message(tmp_path):
    from omegaconf import OmegaConf

    torch.save({"cfg": OmegaConf.create({"model": {"_name": "wav2vec_ctc"}, "task": {}}), "model": {}}, tmp_path / "ft.pt")
    with pytest.raises(CheckpointError, match="ft.pt: model 'wav2vec_ctc' is not supported"):
        load_model(tmp_path / "ft.pt")


# ---------------------------------------------------------------------------- pruning and counts
@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_student_exports_exactly(tmp_path, family):
    s3prl_checkpoint(tmp_path / "c.pt", family, "layer_norm", True, True)
    student = make_prunable(load_model(tmp_path / "c.pt")).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for g in gates(student).values():
            g.log_alpha.normal_(0, 4)
        g.log_alpha.fill_(-10)  # and one gate fully closed
    w = pad_sequence(wavs(), batch_first=True)
    lengths = torch.tensor([9000, 6400, 7777])
    with torch.no_grad():
        expected = student(w, lengths)
        compact = export(student)
        got = compact(w, lengths)
    assert compact.arch.family == family and not compact.arch.is_dense()
    assert all(rel_err(a, b) < 1e-5 for a, b in zip(got, expected))
    save_model(compact, tmp_path / "m.safetensors")
    again = load_model(tmp_path / "m.safetensors")
    assert again.arch == compact.arch
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(again(w, lengths), got))


def test_family_in_json_and_files_without_it_are_wavlm():
    import json

    arch = preset("hubert_large")
    assert WavLMArch.from_json(arch.to_json()) == arch and json.loads(arch.to_json())["arch"]["family"] == "hubert"
    blob = json.loads(preset("base").to_json())
    del blob["arch"]["family"]
    assert WavLMArch.from_json(json.dumps(blob)).family == "wavlm"
    with pytest.raises(ValueError, match="no relative position bias"):
        WavLMArch(**{**preset("base").__dict__, "family": "hubert"})
    with pytest.raises(ValueError, match="family must be one of"):
        WavLMArch(family="data2vec")


HEADS = {  # the pre-training heads s3prl's classes hold and the backbone does not
    "hubert": ("final_proj", "label_embs_concat"),
    "wav2vec2": ("final_proj", "quantizer", "project_q"),
}


@pytest.mark.parametrize("family,cfg,with_heads", [
    # hubert_base_ls960: final_dim 256, 500 k-means units + 4 special symbols
    ("hubert", dict(label_rate=50.0, final_dim=256), 94_697_600),
    # wav2vec_small: quantize_targets, 2 groups of 320 latent vars, final_dim 256
    ("wav2vec2", dict(quantize_targets=True, latent_vars=320, latent_groups=2, final_dim=256), 95_044_608),
])
def test_base_parameter_counts_equal_s3prl(family, cfg, with_heads):
    """Ours counts the backbone s3prl's upstream runs; s3prl's class adds the pre-training heads,
    which SUPERB's published counts include (docs/model.md, "Families")."""
    symbols = [[str(i) for i in range(504)]]
    theirs = s3prl_model(family, cfg, symbols)
    heads = sum(p.numel() for n, p in theirs.named_parameters() if n.split(".")[0] in HEADS[family])
    ours = WavLM(preset(f"{family}_base")).num_params()
    assert ours == sum(p.numel() for p in theirs.parameters()) - heads == 94_371_712
    assert ours + heads == with_heads


def test_dphubert_recipe_values_and_sources():
    """The named recipe: DPHuBERT's HuBERT schedule (run.sh of its repository), each value sourced."""
    from pruned_upstream.config_files import CONFIG_DIR, load_config

    first, final = load_config("hubert_base_dphubert"), load_config("hubert_base_dphubert_final")
    # run.sh target_sparsity=0.75 is of the whole model: the size DPHuBERT's README reports (issue 19,
    # tests/test_dphubert_config.py checks what it means)
    assert (first.prune.target_params, first.train.target_sparsity) == (23_585_946, None)
    assert (first.train.steps, first.train.sparsity_warmup) == (50000, 0.1)
    assert (first.train.lr, first.train.warmup, first.train.grad_clip, first.train.max_batch_samples) == (
        2e-4, 0.3, 10.0, 2_560_000)
    assert first.prune.kinds == ["conv", "qk", "vo", "int"] and first.distill.loss == "l1_cos"
    assert first.teacher.preset == "hubert_base"
    assert not final.prune.enabled and (final.train.steps, final.train.lr, final.train.warmup) == (25000, 1e-4, 0.2)
    for name in ("hubert_base_dphubert", "hubert_base_dphubert_final"):
        text = (CONFIG_DIR / f"{name}.yaml").read_text()
        for key in ("target_sparsity", "steps", "lr", "warmup"):
            line = next((ln for ln in text.splitlines() if ln.strip().startswith(f"{key}:")), None)
            assert line is None or "run.sh" in line, line


def test_commands_on_a_hubert_file(tmp_path, capsys):
    """inspect, bench (the reference: the dense model of the same family), export --drop-layers."""
    import json

    from pruned_upstream.cli import main
    from pruned_upstream.training.models import teacher_arch

    s3prl_checkpoint(tmp_path / "c.pt", "hubert")
    assert main(["inspect", str(tmp_path / "c.pt")]) == 0
    assert "total parameters" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "c.pt"), "--drop-layers", "top:1", "--out", str(tmp_path / "d.safetensors")]) == 0
    shallow = load_model(tmp_path / "d.safetensors")
    assert shallow.arch.family == "hubert" and shallow.num_layers == 1
    capsys.readouterr()
    assert main(["bench", str(tmp_path / "d.safetensors"), "--seconds", "0.5", "--repeats", "1", "--threads", "1",
                 "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the reference is the dense HuBERT of the same shape (a WavLM one would add the position bias)
    assert line["reference"]["params_M"] == line["model"]["params_M"] and line["macs_ratio"] == 1.0
    tiny = teacher_arch("tiny", {"family": "wav2vec2"})  # demo --family wav2vec2's teacher
    assert tiny.family == "wav2vec2" and not tiny.relative_position_embedding and not tiny.gru_rel_pos


# ---------------------------------------------------------------------------- fairseq's options
def _checkpoint_with(path, family: str, **options):
    """s3prl_checkpoint's layout, the model configuration carrying `options` (same seed: same weights)."""
    cfg = {**model_cfg(family), **options}
    symbols = [["<s>", "<pad>", "</s>", "<unk>"] + [str(i) for i in range(6)]]
    built = {k: v for k, v in cfg.items() if k not in ("_name", "conv_pos_batch_norm")}  # s3prl 0.4.18 lacks the latter
    ckpt = {"task_cfg": {"normalize": False}, "model_cfg": cfg,
            "model_weight": s3prl_model(family, built, symbols).state_dict(), "dictionaries_symbols": symbols}
    if family != "hubert":
        del ckpt["dictionaries_symbols"]
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("family", FAMILIES)
def test_required_seq_len_multiple_is_read_and_changes_no_output(tmp_path, family):
    """fairseq writes required_seq_len_multiple (2 by default since December 2021); s3prl pads the
    transformer's input to a multiple of it, masks the padding and cuts it off again
    (upstream/wav2vec2/wav2vec2_model.py, TransformerEncoder.extract_features): 29 frames here, padded
    to 30 by 2 and 3. The same weights give the same hidden states with 1, 2 and 3, and s3prl's own."""
    import s3prl.hub

    g = torch.Generator().manual_seed(3)
    w = [torch.randn(n, generator=g) for n in (9400, 7777, 6400)]
    batch, lengths = pad_sequence(w, batch_first=True), torch.tensor([len(x) for x in w])
    outs = {}
    for multiple in (1, 2, 3):
        path = _checkpoint_with(tmp_path / f"m{multiple}.pt", family, required_seq_len_multiple=multiple)
        with torch.no_grad():
            outs[multiple] = load_model(path)(batch, lengths)
        assert outs[multiple][-1].shape[1] == 29  # odd and not a multiple of 3: s3prl pads for 2 and 3
        reference = getattr(s3prl.hub, f"{family}_local")(ckpt=str(path)).eval()
        with torch.no_grad():
            expected = reference(w)["hidden_states"]
        for a, b in zip(outs[multiple], expected):
            assert a.shape == b.shape and rel_err(a, b) < 1e-5, multiple
    for multiple in (2, 3):
        assert all(torch.equal(a, b) for a, b in zip(outs[multiple], outs[1]))
    for bad in (0, -2, 2.5, "2", True):
        with pytest.raises(CheckpointError, match=r"required_seq_len_multiple=.* must be an integer in \[1, "):
            load_model(_checkpoint_with(tmp_path / "bad.pt", family, required_seq_len_multiple=bad))


@pytest.mark.parametrize("family", FAMILIES)
def test_conv_pos_batch_norm_is_refused_by_name(tmp_path, family):
    """fairseq's conv_pos_batch_norm replaces the position convolution's weight norm by a batch norm:
    refused naming the option (it used to load the weights it found, or fail on their names)."""
    path = _checkpoint_with(tmp_path / "bn.pt", family, conv_pos_batch_norm=True)
    with pytest.raises(CheckpointError, match=r"bn.pt: conv_pos_batch_norm=True is not supported \(only False\)"):
        load_model(path)
    assert load_model(_checkpoint_with(tmp_path / "plain.pt", family, conv_pos_batch_norm=False)).arch.family == family
