"""The demo teacher's pre-training (training/pretrain.py): its pieces, and that it learns."""

from __future__ import annotations

import torch

from pruned_upstream.model.wavlm import WavLM, tiny_arch
from pruned_upstream.training.pretrain import (PretrainConfig, assign, kmeans, masked_states, mfcc_frames,
                                               pretrain, span_mask)


def _tone_corpus(n: int = 6, seconds: float = 1.5) -> list[torch.Tensor]:
    """Utterances that alternate between a few pitches: frame classes an MFCC clustering can find."""
    g = torch.Generator().manual_seed(0)
    corpus = []
    for _ in range(n):
        pieces = []
        for _ in range(int(seconds * 5)):
            f0 = float(torch.tensor([150.0, 400.0, 1200.0])[torch.randint(3, (1,), generator=g)])
            t = torch.arange(3200) / 16000
            pieces.append(0.3 * torch.sin(2 * torch.pi * f0 * t) + 0.01 * torch.randn(3200, generator=g))
        corpus.append(torch.cat(pieces))
    return corpus


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])
    found = kmeans(x, 3, seed=0)
    labels = assign(x, found)
    assert sorted(torch.bincount(labels).tolist()) == [50, 50, 50]
    for block in labels.view(3, 50):  # each true cluster is one found cluster
        assert len(set(block.tolist())) == 1


def test_span_mask_masks_spans_at_the_expected_rate():
    g = torch.Generator().manual_seed(0)
    mask = span_mask(64, 200, p=0.08, span=5, g=g)
    assert mask.shape == (64, 200) and mask.dtype == torch.bool
    expected = 1 - (1 - 0.08) ** 5  # a frame is masked when a span started in the 5 frames up to it
    assert abs(mask[:, 10:].float().mean().item() - expected) < 0.03
    assert not span_mask(4, 50, p=0.0, span=5, g=g).any()


def test_mfcc_frames_match_the_cnn_frame_rate():
    model = WavLM(tiny_arch(num_layers=2))
    for samples in (8000, 16000, 24321):
        wav = torch.randn(samples)
        frames = mfcc_frames(wav)
        assert frames.shape[1] == 39  # 13 MFCCs, deltas, delta-deltas
        assert abs(frames.shape[0] - int(model.output_lengths(torch.tensor([samples])))) <= 1


def test_masked_states_without_a_mask_are_the_model_states():
    torch.manual_seed(0)
    model = WavLM(tiny_arch(num_layers=2)).eval()
    model.mask_emb.data.normal_()
    wav = torch.randn(2, 16000)
    plain = model(wav)
    none = masked_states(model, wav, torch.zeros(2, 60, dtype=torch.bool))
    assert all(torch.equal(a, b) for a, b in zip(plain, none))
    mask = torch.zeros(2, 60, dtype=torch.bool)
    mask[:, 10:20] = True
    seen = []
    encoder_forward = model.encoder.forward
    model.encoder.forward = lambda x, padding=None: seen.append(x) or encoder_forward(x, padding)
    masked_states(model, wav, torch.zeros(2, 60, dtype=torch.bool))
    masked = masked_states(model, wav, mask)
    features, replaced = seen
    assert torch.equal(replaced[:, 10:20], model.mask_emb.expand(2, 10, -1).detach())  # the encoder's input
    assert torch.equal(replaced[:, :10], features[:, :10]) and torch.equal(replaced[:, 20:], features[:, 20:])
    assert not torch.allclose(masked[-1], plain[-1])


def test_pretraining_learns_the_targets_and_is_reproducible():
    """Both iterations end far below the uniform guess's loss; the same seed gives the same weights."""
    torch.set_num_threads(1)
    corpus = _tone_corpus()
    cfg = PretrainConfig(steps=(120, 60), clusters=(8, 8), batch_size=4, crop=16000, lr=1e-3, seed=3)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = WavLM(tiny_arch(num_layers=2))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        stats = pretrain(model, corpus, cfg)
        models.append(model)
    first, second = stats["iterations"]
    assert first["k"] == 8 and first["steps"] == 120 and second["steps"] == 60
    assert first["last_loss"] < 0.6 * first["chance_loss"] and first["last_loss"] < first["first_loss"]
    assert second["last_loss"] < 0.7 * second["chance_loss"] and second["last_loss"] < second["first_loss"]
    assert not models[0].training  # handed back in eval mode
    assert not torch.equal(before["encoder.layers.0.fc1.weight"], models[0].state_dict()["encoder.layers.0.fc1.weight"])
    assert all(torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()))
