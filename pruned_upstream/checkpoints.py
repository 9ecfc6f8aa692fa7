"""Read WavLM, HuBERT and wav2vec 2.0 checkpoints (releases, s3prl's, Hugging Face, ours) and write ours.

    model = load_model(path)        # a WavLM in eval mode
    save_model(model, "model.safetensors")

Nothing here executes code from a file: pickles are read with
`torch.load(weights_only=True)` (fairseq's with fairseq_pickle's restricted
unpickler); the configurations and key names of each family are families.py; our own format is safetensors, the
architecture stored as JSON in its metadata. Loading is strict: a missing or an
unexpected key is an error that names it.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path

import torch

from .arch import WavLMArch
from .fairseq_pickle import load_fairseq_checkpoint
from .families import HF_FAMILIES, arch_from_hf_config, hf_backbone, read_release
from .families import arch_from_release_cfg, hf_to_release_key  # noqa: F401  (public here since before families.py)
from .model.depth import drop_layers as drop_model_layers
from .model.wavlm import WavLM

ARCH_KEY = "pruned_upstream_arch"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}")


# ---------------------------------------------------------------------------- public API
def load_model(path, drop_layers=None) -> WavLM:
    """Load a WavLM from an original `.pt`, a Hugging Face directory or our `.safetensors`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "no such file or directory")
    if path.is_dir():
        arch, state = _read_hf_dir(path)
    elif _is_safetensors(path):
        arch, state = _read_ours(path)
    else:
        arch, state = _read_original(path)
    model = build_strict(arch, state, path)
    if drop_layers:  # indices, top:K or uniform:K (model/depth.py)
        model = drop_model_layers(model, drop_layers)
    return model.eval()


def save_model(model: WavLM, path) -> None:
    """Write our format: safetensors weights, the architecture as JSON in the metadata."""
    from safetensors.torch import save_file

    gated = [n for n, _ in model.named_parameters() if n.endswith("log_alpha")]
    if gated:
        raise ValueError(f"the model still has gates ({gated[0]}, ...): export it first (pruned_upstream.export(student))")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={ARCH_KEY: model.arch.to_json()})
    tmp.replace(path)  # a crash never leaves a half-written model


def build_strict(arch: WavLMArch, state: dict, path="<state dict>") -> WavLM:
    model = WavLM(arch)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            path, f"does not match its architecture: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    for name, tensor in model.state_dict().items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                path, f"{name} has shape {tuple(state[name].shape)}, the architecture needs {tuple(tensor.shape)}"
            )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model


# ---------------------------------------------------------------------------- our format
def _is_safetensors(path: Path) -> bool:
    """safetensors: an 8-byte little-endian header size, then a JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _read_ours(path: Path):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(path, f"unreadable safetensors file (truncated or corrupt?): {err}") from None
    if ARCH_KEY not in meta:
        raise CheckpointError(
            path, "a safetensors file without our architecture metadata; a Hugging Face model is loaded from its directory"
        )
    try:
        arch = WavLMArch.from_json(meta[ARCH_KEY])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(path, f"bad architecture metadata: {err}") from None
    return arch, state


# ---------------------------------------------------------------------------- pickles
def _torch_load(path: Path):
    """torch.load with weights_only=True; refusals become clear errors, nothing is executed."""
    with open(path, "rb") as f:
        first = f.read(4)
    if first != b"PK\x03\x04" and not first.startswith(b"\x80"):  # torch's zip format; a legacy pickle
        raise CheckpointError(path, "unknown format (neither a torch checkpoint, safetensors, nor a directory)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            path,
            "refused: loading it would run code the file names (weights_only=True refused it: "
            f"{str(err).splitlines()[0][:200]}). If you trust the file, convert it once in a trusted session: "
            "ck = torch.load(path, weights_only=False); "
            "torch.save({'cfg': dict(ck['cfg']), 'model': ck['model']}, 'converted.pt')",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(path, f"unreadable checkpoint (truncated or corrupt?): {str(err)[:200]}") from None


def _read_original(path: Path):
    """A `.pt` of any family: WavLM's release, fairseq's HuBERT / wav2vec 2.0, s3prl's converted ones."""
    try:
        ckpt = _torch_load(path)
    except CheckpointError as err:
        # fairseq's releases pickle omegaconf / argparse containers, which weights_only refuses:
        # our restricted unpickler reads those as plain data and refuses everything else
        try:
            ckpt = load_fairseq_checkpoint(path)
        except pickle.UnpicklingError as refused:
            raise CheckpointError(path, f"{refused}. {str(err)[len(str(path)) + 2:]}") from None
        except Exception:  # not readable either way (truncated, corrupt): the first error says why
            raise err from None
    try:
        return read_release(ckpt)
    except ValueError as err:
        raise CheckpointError(path, str(err)) from None


# ---------------------------------------------------------------------------- Hugging Face
def _read_hf_dir(path: Path):
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointError(path, "a directory without config.json (expected a Hugging Face WavLM, HuBERT or "
                              "wav2vec 2.0 model directory)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(config_file, f"invalid JSON: {err}") from None
    if config.get("model_type") not in HF_FAMILIES:
        raise CheckpointError(config_file, f"model_type is {config.get('model_type')!r}, not one of {', '.join(HF_FAMILIES)}")
    normalize = None
    prep = path / "preprocessor_config.json"
    if prep.exists():
        normalize = bool(json.loads(prep.read_text()).get("do_normalize", False))
    try:
        arch = arch_from_hf_config(config, normalize)
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(config_file, f"unsupported configuration: {err}") from None
    if (path / "model.safetensors").exists():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path / "model.safetensors"))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(path / "model.safetensors", f"unreadable (truncated or corrupt?): {err}") from None
    elif (path / "pytorch_model.bin").exists():
        state = _torch_load(path / "pytorch_model.bin")
    else:
        raise CheckpointError(path, "no model.safetensors or pytorch_model.bin in the directory")
    return arch, hf_backbone(state, arch)
