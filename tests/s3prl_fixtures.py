"""Tiny KS / IC data and a tiny WavLM checkpoint for running s3prl's own runner.

The KS and IC data are the espeak-ng corpora of ``pruned_upstream/superb_data``
(``speech_commands.py``: Speech Commands v0.01's two folders, speakers picked
by s3prl's SHA-1 split; ``fluent_commands.py``: Fluent Speech Commands' CSVs
and wavs, every dev/test slot value also in train); these wrappers return the
``datarc`` path entries the tests pass to s3prl.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from pruned_upstream.superb_data import fluent_commands, speech_commands

IC_INTENTS = fluent_commands.INTENTS  # (action, object, location, phrasings)


def make_speech_commands(root: Path) -> dict:
    """A small Speech Commands v0.01 train root and test root under ``root``.

    Returns the ``datarc`` path entries: ``speech_commands_root`` and
    ``speech_commands_test_root``.
    """
    data = speech_commands.make_speech_commands(root)
    return {"speech_commands_root": str(data.train_root), "speech_commands_test_root": str(data.test_root)}


def make_fluent_commands(root: Path) -> dict:
    """A small Fluent Speech Commands under ``root``; returns ``{"file_path": its root}``."""
    return {"file_path": str(fluent_commands.make_fluent_commands(root).root)}


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
