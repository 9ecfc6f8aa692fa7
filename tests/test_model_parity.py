"""Our WavLM against the references: s3prl's `wavlm_local` upstream and transformers' WavLMModel."""

from __future__ import annotations

import pytest
import torch
from conftest import rel_err, release_cfg, save_release_checkpoint, randomize_
from torch.nn.utils.rnn import pad_sequence

from pruned_upstream import load_model
from pruned_upstream.arch import preset
from pruned_upstream.model import WavLM

CASES = {
    "post-LN, group norm": dict(),
    "post-LN, group norm, normalised wav": dict(normalize=True),
    "pre-LN, layer norm, normalised wav": dict(pre_ln=True, normalize=True, mode="layer_norm"),
    "pre-LN, layer norm": dict(pre_ln=True, mode="layer_norm"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_s3prl_upstream_padded_batch(tmp_path, case):
    import s3prl.hub

    path = tmp_path / "tiny.pt"
    save_release_checkpoint(path, release_cfg(**CASES[case]))
    reference = s3prl.hub.wavlm_local(ckpt=str(path)).eval()
    ours = load_model(path)
    g = torch.Generator().manual_seed(1)
    wavs = [torch.randn(n, generator=g) for n in (9000, 6400, 7777)]
    with torch.no_grad():
        expected = reference(wavs)["hidden_states"]
        got = ours(pad_sequence(wavs, batch_first=True), torch.tensor([len(w) for w in wavs]))
        single = ours(wavs[0][None])
        expected_single = reference(wavs[:1])["hidden_states"]
    assert len(got) == len(expected) == 3
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        assert rel_err(a, b) < 1e-5
    for a, b in zip(single, expected_single):
        assert rel_err(a, b) < 1e-5


def _hf_model(stable: bool):
    from transformers import WavLMConfig, WavLMModel

    torch.manual_seed(0)
    cfg = WavLMConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        conv_dim=(32,) * 5, conv_kernel=(10, 8, 4, 2, 2), conv_stride=(5, 4, 4, 2, 2),
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, num_buckets=16, max_bucket_distance=40,
        do_stable_layer_norm=stable, feat_extract_norm="layer" if stable else "group", conv_bias=stable,
    )
    return randomize_(WavLMModel(cfg)).eval()


@pytest.mark.parametrize("stable", [False, True], ids=["group-norm post-LN", "layer-norm pre-LN"])
def test_matches_transformers(tmp_path, stable):
    hf = _hf_model(stable)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf")
    wav = torch.randn(2, 8000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        # transformers normalises in its feature extractor, not in the model
        hf_in = torch.nn.functional.layer_norm(wav, wav.shape[-1:]) if ours.arch.normalize else wav
        expected = hf(hf_in, output_hidden_states=True).hidden_states
        got = ours(wav)
    assert len(got) == len(expected) == 3
    for a, b in zip(got, expected):
        assert rel_err(a, b) < 1e-5


def test_base_parameter_count_equals_s3prl():
    from s3prl.upstream.wavlm.WavLM import WavLM as S3prlWavLM, WavLMConfig

    cfg = dict(relative_position_embedding=True, gru_rel_pos=True, max_distance=800)  # WavLM Base's cfg
    theirs = sum(p.numel() for p in S3prlWavLM(WavLMConfig(cfg)).parameters())
    ours = WavLM(preset("base")).num_params()
    assert ours == theirs == 94_381_936


def _cnn_features(model, wav, lengths=None):
    wav, _ = model.prepare_wav(wav, lengths)
    return model.feature_extractor(wav).transpose(1, 2)


@pytest.mark.parametrize("mode,equal", [("default", False), ("layer_norm", True)])
def test_padding_changes_group_norm_features_only(tmp_path, mode, equal):
    """Base's GroupNorm normalises over the padded length; a layer-norm CNN is frame-local."""
    path = tmp_path / "tiny.pt"
    save_release_checkpoint(path, release_cfg(mode=mode, pre_ln=mode == "layer_norm"))
    model = load_model(path)
    g = torch.Generator().manual_seed(3)
    short, long = torch.randn(6400, generator=g), torch.randn(12800, generator=g)
    batch = pad_sequence([long, short], batch_first=True)
    with torch.no_grad():
        batched = _cnn_features(model, batch, torch.tensor([12800, 6400]))[1]
        alone = _cnn_features(model, short[None])[0]
    n = alone.shape[0]
    same = torch.allclose(batched[:n], alone, rtol=1e-5, atol=1e-6)
    assert same is equal


def test_hidden_state_count_and_shapes():
    model = WavLM(preset("base")).eval()
    with torch.no_grad():
        hs = model(torch.randn(1, 16000))
    assert len(hs) == 13
    assert all(h.shape == (1, 49, 768) for h in hs)
