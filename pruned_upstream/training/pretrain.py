"""A teacher that knows speech, made here: HuBERT-style masked prediction on the demo corpus.

    model = WavLM(tiny_arch(num_layers=4))
    stats = pretrain(model, read_corpus(manifest), PretrainConfig())

HuBERT (Hsu et al. 2021, sections II-III) pre-trains in iterations. Iteration 1:
every 20 ms frame gets the label of its nearest k-means centroid of MFCC
features; frames are masked (span starts drawn with probability p, spans of
`span` frames, their CNN features replaced by the learned mask embedding) and
the transformer predicts the labels of the masked frames (cross-entropy,
HuBERT's alpha = 1: masked frames only). Iteration 2 clusters the iteration-1
model's own hidden states instead of MFCCs and trains again. What differs from
the paper, and why: sizes (K, steps, crops) fit a few hundred steps on 2 CPU
cores; the prediction head is one linear layer on the last hidden state
(HuBERT: a projection and cosine similarity to learned code embeddings, with a
temperature), which is the same classifier up to its parametrisation; both
iterations continue from the same weights (HuBERT re-initialises), which halves
the cost here. Measured effect on the small SUPERB data: docs/superb_small_data.md.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model.wavlm import WavLM, frame_padding_mask


@dataclass(frozen=True)
class PretrainConfig:
    steps: tuple[int, ...] = (300, 300)  # per iteration: MFCC targets, then the model's own layer
    clusters: tuple[int, ...] = (50, 50)  # K per iteration (HuBERT Base: 100, then 500)
    target_layer: int = -2  # the hidden state clustered for iteration 2 (HuBERT Base: layer 6 of 12)
    batch_size: int = 8
    crop: int = 32000  # samples (2 s)
    lr: float = 1e-3
    warmup: float = 0.1
    mask_prob: float = 0.08  # HuBERT: 0.8 of frames as span starts, span 10 (fairseq counts p * T / span)
    mask_span: int = 5
    seed: int = 0


def mfcc_frames(wav: torch.Tensor) -> torch.Tensor:
    """(S,) 16 kHz -> (T, 39): 13 MFCCs with deltas and delta-deltas, 25 ms windows every 20 ms.

    HuBERT's first-iteration features (fairseq examples/hubert/simple_kmeans/dump_mfcc_feature.py:
    Kaldi MFCCs, deltas, delta-deltas), with the hop matched to the CNN's 320-sample stride."""
    import torchaudio

    mfcc = torchaudio.compliance.kaldi.mfcc(wav[None].float() * 32768, sample_frequency=16000,
                                            frame_shift=20.0, frame_length=25.0, use_energy=False)
    d1 = torchaudio.functional.compute_deltas(mfcc.T)
    d2 = torchaudio.functional.compute_deltas(d1)
    return torch.cat([mfcc.T, d1, d2]).T


def kmeans(x: torch.Tensor, k: int, seed: int, iterations: int = 30) -> torch.Tensor:
    """Lloyd's k-means on (N, D) with k-means++ seeding; returns the (k, D) centroids."""
    g = torch.Generator().manual_seed(seed)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-5)
    z = (x - mean) / std
    centres = z[torch.randint(len(z), (1,), generator=g)]
    for _ in range(1, k):
        d = torch.cdist(z, centres).min(1).values ** 2
        centres = torch.cat([centres, z[torch.multinomial(d / d.sum(), 1, generator=g)]])
    for _ in range(iterations):
        assign = torch.cdist(z, centres).argmin(1)
        for j in range(k):
            members = z[assign == j]
            if len(members):
                centres[j] = members.mean(0)
    return centres * std + mean


def assign(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    std = centres.std(0).clamp_min(1e-5)
    return torch.cdist(x / std, centres / std).argmin(1)


def span_mask(batch: int, frames: int, p: float, span: int, g: torch.Generator) -> torch.Tensor:
    """(B, T) bool: span starts drawn with probability p, each masking `span` frames."""
    starts = torch.rand(batch, frames, generator=g) < p
    mask = torch.zeros(batch, frames, dtype=torch.bool)
    for offset in range(span):
        mask[:, offset:] |= starts[:, : frames - offset]
    return mask


def masked_states(model: WavLM, wav: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """The model's hidden states with the masked frames' features replaced by its mask embedding."""
    wav, sample_mask = model.prepare_wav(wav, None)
    features = model.layer_norm(model.feature_extractor(wav).transpose(1, 2))
    if model.post_extract_proj is not None:
        features = model.post_extract_proj(features)
    frames = min(features.shape[1], mask.shape[1])
    features = features[:, :frames].clone()
    features[mask[:, :frames]] = model.mask_emb.to(features.dtype)
    padding = None if sample_mask is None else frame_padding_mask(sample_mask, frames)
    return model.encoder(features, padding)


def _crops(corpus: list[torch.Tensor], crop: int, batch: int, g: torch.Generator) -> torch.Tensor:
    out = torch.zeros(batch, crop)
    for row, i in enumerate(torch.randint(len(corpus), (batch,), generator=g).tolist()):
        wav = corpus[i]
        start = int(torch.randint(max(1, len(wav) - crop + 1), (1,), generator=g))
        piece = wav[start : start + crop]
        out[row, : len(piece)] = piece
    return out


def _train(model: WavLM, corpus, labels_of, k: int, steps: int, cfg: PretrainConfig, g, log) -> list[float]:
    head = torch.nn.Linear(model.arch.embed_dim, k)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    warm = max(1, int(cfg.warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    losses = []
    model.train()
    for step in range(steps):
        wav = _crops(corpus, cfg.crop, cfg.batch_size, g)
        targets = labels_of(wav)  # (B, T) cluster ids
        mask = span_mask(wav.shape[0], targets.shape[1], cfg.mask_prob, cfg.mask_span, g)
        last = masked_states(model, wav, mask)[-1]
        frames = min(last.shape[1], targets.shape[1])
        m = mask[:, :frames]
        loss = F.cross_entropy(head(last[:, :frames][m]), targets[:, :frames][m])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log and (step + 1) % max(1, steps // 10) == 0:
            log(step + 1, steps, sum(losses[-20:]) / len(losses[-20:]))
    model.eval()
    return losses


def pretrain(model: WavLM, corpus: list[torch.Tensor], cfg: PretrainConfig = PretrainConfig(), log=None) -> dict:
    """Pre-train `model` in place; returns per iteration its first and last losses and chance level."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    stats = []
    feats = [mfcc_frames(w) for w in corpus]
    centres = kmeans(torch.cat(feats), cfg.clusters[0], cfg.seed)

    def mfcc_labels(wav):
        per = [assign(mfcc_frames(w), centres) for w in wav]
        t = min(len(p) for p in per)
        return torch.stack([p[:t] for p in per])

    labels_of = mfcc_labels
    for it, (steps, k) in enumerate(zip(cfg.steps, cfg.clusters)):
        if it > 0:  # cluster the model's own hidden states (HuBERT's second iteration)
            frozen = copy.deepcopy(model).eval()  # the targets stay fixed while the model trains
            with torch.no_grad():
                states = [frozen(w[None])[cfg.target_layer][0] for w in corpus]
            centres_it = kmeans(torch.cat(states), k, cfg.seed + it)

            def labels_of(wav, c=centres_it, frozen=frozen):
                with torch.no_grad():
                    return assign_batch(frozen(wav)[cfg.target_layer], c)
        losses = _train(model, corpus, labels_of, k, steps, cfg, g,
                        log and (lambda s, n, l, it=it: log(f"iteration {it + 1}: step {s}/{n} loss {l:.3f}")))
        stats.append({"iteration": it + 1, "k": k, "steps": steps, "chance_loss": math.log(k),
                      "first_loss": sum(losses[:20]) / max(1, len(losses[:20])),
                      "last_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))})
    return {"iterations": stats}


def assign_batch(states: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    b, t, d = states.shape
    return assign(states.reshape(b * t, d), centres).reshape(b, t)


def read_corpus(manifest) -> list[torch.Tensor]:
    """Every file of a manifest at 16 kHz mono, whole (the demo corpus: a few minutes of speech)."""
    from ..data.audio import read_audio
    from ..data.manifest import read_manifest

    return [read_audio(entry.path, mixdown=True) for entry in read_manifest(manifest)]
