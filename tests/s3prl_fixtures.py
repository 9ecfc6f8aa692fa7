"""Tiny data sets and a tiny WavLM checkpoint for running s3prl's own runner.

The layouts are the ones s3prl 0.4.18's downstreams read (checked against the
installed ``s3prl/downstream/speech_commands`` and ``fluent_commands`` code):

* ``speech_commands`` (KS): ``<root>/<word>/<speaker>_nohash_<n>.wav``; the
  train/dev split is a SHA-1 hash of ``<speaker>`` (``split_dataset``: below
  10 % -> dev, 10-20 % dropped, the rest -> train), so the speakers here are
  picked by that hash. ``<root>/_background_noise_/*.wav`` feed ``_silence_``
  and must be at least 1 s long (a random 1 s crop is taken). The test set is
  a separate directory whose sub-directories are class names of ``CLASSES``.
* ``fluent_commands`` (IC): ``<root>/data/{train,valid,test}_data.csv`` with
  the columns ``path,action,object,location`` (``path`` relative to
  ``<root>``); every dev/test slot value must also occur in train.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml

SAMPLE_RATE = 16000
KS_WORDS = ("yes", "no", "bed")  # "bed" is outside CLASSES: it becomes _unknown_
IC_INTENTS = (
    ("activate", "lights", "kitchen"),
    ("deactivate", "lights", "kitchen"),
    ("increase", "volume", "none"),
)
_MAX_UTTR_PER_CLASS = 2**27 - 1  # s3prl speech_commands/expert.py split_dataset


def write_tone(path: Path, freq: float, seconds: float, seed: int) -> Path:
    """Write a 16 kHz mono 16-bit tone with a little noise; returns ``path``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wav = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    return path


def ks_split_percentage(speaker: str) -> float:
    """The percentage s3prl's ``split_dataset`` derives from a speaker id."""
    digest = hashlib.sha1(speaker.encode("utf-8")).hexdigest()
    return (int(digest, 16) % (_MAX_UTTR_PER_CLASS + 1)) * (100.0 / _MAX_UTTR_PER_CLASS)


def ks_speakers(n_train: int, n_dev: int) -> tuple[list[str], list[str]]:
    """Deterministic speaker ids landing in s3prl's train (>= 20 %) and dev (< 10 %)."""
    train, dev, i = [], [], 0
    while len(train) < n_train or len(dev) < n_dev:
        speaker = f"{i:08x}"
        pct = ks_split_percentage(speaker)
        if pct < 10 and len(dev) < n_dev:
            dev.append(speaker)
        elif pct >= 20 and len(train) < n_train:
            train.append(speaker)
        i += 1
    return train, dev


def make_speech_commands(root: Path, n_train: int = 3, n_dev: int = 1, n_test: int = 2) -> dict:
    """Build a tiny Speech Commands v0.01 train root and test root under ``root``.

    Returns the ``datarc`` path entries: ``speech_commands_root`` and
    ``speech_commands_test_root``.
    """
    train_root, test_root = root / "speech_commands", root / "speech_commands_test"
    train_speakers, dev_speakers = ks_speakers(n_train, n_dev)
    for w, word in enumerate(KS_WORDS):
        freq = 300.0 + 200.0 * w
        for s, speaker in enumerate(train_speakers + dev_speakers):
            write_tone(train_root / word / f"{speaker}_nohash_0.wav", freq, 0.4 + 0.1 * s, seed=100 * w + s)
        test_word = word if word in ("yes", "no") else "_unknown_"
        for s in range(n_test):
            write_tone(test_root / test_word / f"t{s}_nohash_0.wav", freq, 0.5, seed=1000 + 100 * w + s)
    write_tone(train_root / "_background_noise_" / "hum.wav", 60.0, 1.3, seed=7)
    for s in range(n_test):
        write_tone(test_root / "_silence_" / f"s{s}_nohash_0.wav", 60.0, 1.0, seed=2000 + s)
    return {"speech_commands_root": str(train_root), "speech_commands_test_root": str(test_root)}


def make_fluent_commands(root: Path, per_intent: dict[str, int] | None = None) -> dict:
    """Build a tiny Fluent Speech Commands root; returns ``{"file_path": root}``."""
    per_intent = per_intent or {"train": 3, "valid": 1, "test": 1}
    for n, (split, count) in enumerate(per_intent.items()):
        lines = ["path,speakerId,transcription,action,object,location"]
        for i, (action, obj, location) in enumerate(IC_INTENTS):
            for k in range(count):
                rel = f"wavs/speakers/spk{k}/{split}_{i}_{k}.wav"
                write_tone(root / rel, 250.0 + 150.0 * i, 0.3 + 0.1 * k, seed=100 * n + 10 * i + k)
                lines.append(f"{rel},spk{k},{action} {obj},{action},{obj},{location}")
        (root / "data").mkdir(parents=True, exist_ok=True)
        (root / "data" / f"{split}_data.csv").write_text("\n".join(lines) + "\n")
    return {"file_path": str(root)}


def tiny_runner_config(datarc: dict, batch_keys: tuple[str, ...], total_steps: int = 4) -> dict:
    """A small s3prl runner config for KS/IC: a few steps, one dev pass, one save.

    The field names follow s3prl's ``downstream/<task>/config.yaml`` files; the
    values are deliberately tiny and are not SUPERB's.
    """
    datarc = {**datarc, "num_workers": 0, **{key: 4 for key in batch_keys}}
    return {
        "runner": {
            "total_steps": total_steps,
            "gradient_clipping": 1,
            "gradient_accumulate_steps": 1,
            "log_step": total_steps,
            "eval_step": total_steps,
            "save_step": total_steps,
            "max_keep": 1,
            "eval_dataloaders": ["dev"],
        },
        "optimizer": {"name": "TorchOptim", "torch_optim_name": "Adam", "lr": 1.0e-3},
        "downstream_expert": {
            "datarc": datarc,
            "modelrc": {"projector_dim": 8, "select": "UtteranceLevel", "UtteranceLevel": {"pooling": "MeanPooling"}},
        },
    }


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def make_tiny_wavlm(path: Path, seed: int = 0) -> Path:
    """Save a random 2-layer, 32-dim WavLM as ``{"cfg": dict, "model": state_dict}``.

    This is the format s3prl's ``wavlm_local`` reads. The CNN keeps WavLM's
    strides (5 * 2**4 * 2**2 = 320 samples per frame) with 32 channels.
    """
    from s3prl.upstream.wavlm.WavLM import WavLM, WavLMConfig

    cfg = {
        "extractor_mode": "default",
        "encoder_layers": 2,
        "encoder_embed_dim": 32,
        "encoder_ffn_embed_dim": 64,
        "encoder_attention_heads": 2,
        "conv_feature_layers": "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
        "conv_pos": 16,
        "conv_pos_groups": 4,
        "relative_position_embedding": True,
        "num_buckets": 32,
        "max_distance": 64,
        "gru_rel_pos": True,
        "normalize": False,
    }
    torch.manual_seed(seed)
    model = WavLM(WavLMConfig(cfg))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"cfg": cfg, "model": model.state_dict()}, path)
    return path
