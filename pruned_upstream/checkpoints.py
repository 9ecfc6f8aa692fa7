"""Read WavLM, HuBERT and wav2vec 2.0 checkpoints (releases, s3prl's, Hugging Face, ours) and write ours.

    model = load_model(path)        # a WavLM in eval mode
    save_model(model, "model.safetensors")

Nothing here executes code from a file: torch pickles (every `.pt`, fairseq's
included) are read by our own reader (torch_files.py), never by torch.load; the configurations and key names of each family are families.py; our own format is safetensors, the
architecture stored as JSON in its metadata. Loading is strict: a missing or an
unexpected key is an error that names it. Nothing is allocated for what a file
declares before it matches what the file stores (safe_load.py); every failure to
read a file is a `CheckpointError`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .arch import WavLMArch
from .families import HF_FAMILIES, arch_from_hf_config, hf_backbone, hf_dropout, read_release, release_dropout
from .families import arch_from_release_cfg, hf_to_release_key  # noqa: F401  (public here since before families.py)
from .model.depth import drop_layers as drop_model_layers
from .model.dropout import rates_from_metadata, rates_metadata
from .errors import CheckpointError
from .model.wavlm import WavLM
from .small_files import open_regular, read_small_text
from .safe_load import check_torch_file, checked_meta_model, materialise, read_safetensors, torch_load

ARCH_KEY = "pruned_upstream_arch"
_MAX_HF_COUNT = 10_000  # layers or heads a config.json may declare (WavLM Large: 24 and 16)


# ---------------------------------------------------------------------------- public API
def load_model(path, drop_layers=None) -> WavLM:
    """Load a WavLM from an original `.pt`, a Hugging Face directory or our `.safetensors`."""
    path = Path(path)
    model = _one_door(path, lambda: _load(path))
    if drop_layers:  # indices, top:K or uniform:K (model/depth.py)
        model = drop_model_layers(model, drop_layers)
    return model.eval()


def read_arch(path) -> WavLMArch:
    """A model file's architecture from its metadata or configuration alone: no model is
    built and no weight read (a `.pt` is memory-mapped). Any file `load_model` reads."""
    path = Path(path)

    def arch_of() -> WavLMArch:
        if path.is_dir():
            _check_hf_counts(path)
            return _hf_arch(path)
        if _is_safetensors(path):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return arch_from_metadata(f.metadata() or {}, path)
        check_torch_file(path)
        return _read_original(path)[0]

    return _one_door(path, arch_of)


def _load(path: Path) -> WavLM:
    if path.is_dir():
        _check_hf_counts(path)
        arch, state, rates = _read_hf_dir(path)
    elif _is_safetensors(path):
        arch, state, rates = _read_ours(path)
    else:
        check_torch_file(path)  # before any reader (a fallback reader included) opens it
        arch, state, rates = _read_original(path)
    if not isinstance(state, dict):
        raise CheckpointError(path, f"its weights are a {type(state).__name__}, not a mapping of names to tensors")
    model = build_strict(arch, state, path)
    model.dropout_rates = rates  # recorded, not active: s3prl's upstream applies them (model/dropout.py)
    return model


def _one_door(path: Path, read):
    """Whatever a reader meets in a file ends as a CheckpointError naming it."""
    if not path.exists():
        raise CheckpointError(path, "no such file or directory")
    try:
        return read()
    except CheckpointError:
        raise
    except MemoryError:
        raise CheckpointError(path, "reading it ran out of memory: it declares more than it stores, or more "
                                    "than this machine holds") from None
    except Exception as err:  # KeyError, TypeError, IndexError, ... from a malformed file
        raise CheckpointError(path, f"unreadable ({type(err).__name__}: {str(err)[:200]})") from None


def save_model(model: WavLM, path) -> None:
    """Write our format: safetensors weights, the architecture as JSON in the metadata."""
    from safetensors.torch import save_file

    gated = [n for n, _ in model.named_parameters() if n.endswith("log_alpha")]
    if gated:
        raise ValueError(f"the model still has gates ({gated[0]}, ...): export it first (pruned_upstream.export(student))")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={ARCH_KEY: model.arch.to_json(), **rates_metadata(model)})
    tmp.replace(path)  # a crash never leaves a half-written model


def build_strict(arch: WavLMArch, state: dict, path="<state dict>") -> WavLM:
    """The one place a model is built from (arch, state): checked on the meta device against
    the stored names and shapes, then the stored tensors assigned (no allocation, no init)."""
    shapes = {k: tuple(v.shape) if hasattr(v, "shape") else () for k, v in state.items()}
    return materialise(checked_meta_model(lambda: WavLM(arch), shapes, path, arch), state, path)


def _check_hf_counts(path: Path) -> None:
    """Counts in config.json that would cost time or memory before any weight is compared."""
    config_file = path / "config.json"
    if not os.path.lexists(config_file):
        return
    config = _read_json(config_file)
    for key, value in config.items():
        if isinstance(value, list) and len(value) > _MAX_HF_COUNT:
            raise CheckpointError(config_file, f"{key[:100]} lists {len(value):,} values (at most {_MAX_HF_COUNT:,})")
        if key.startswith("num_") and isinstance(value, (int, float)) and not 0 <= value <= _MAX_HF_COUNT:
            raise CheckpointError(config_file, f"{key[:100]} = {value} is outside 0..{_MAX_HF_COUNT:,}")


# ---------------------------------------------------------------------------- our format
def _is_safetensors(path: Path) -> bool:
    """safetensors: an 8-byte little-endian header size, then a JSON header. A FIFO or a device
    (a link to /dev/zero) is refused here, before any reader opens it (small_files.open_regular)."""
    with open_regular(path) as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _read_ours(path: Path):
    found = {}

    def check(meta: dict, shapes: dict) -> None:  # on the header, before any tensor is read
        found["arch"] = arch = arch_from_metadata(meta, path)
        try:
            found["rates"] = rates_from_metadata(meta)
        except ValueError as err:
            raise CheckpointError(path, f"bad dropout metadata: {err}") from None
        checked_meta_model(lambda: WavLM(arch), shapes, path, arch)

    _, state = read_safetensors(path, check)
    return found["arch"], state, found["rates"]


def arch_from_metadata(meta: dict, path) -> WavLMArch:
    """The architecture our safetensors files keep in their metadata."""
    if ARCH_KEY not in meta:
        raise CheckpointError(
            path, "a safetensors file without our architecture metadata; a Hugging Face model is loaded from its directory"
        )
    try:
        return WavLMArch.from_json(meta[ARCH_KEY])
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise CheckpointError(path, f"bad architecture metadata: {type(err).__name__}: {str(err)[:200]}") from None


# ---------------------------------------------------------------------------- pickles
def _torch_load(path: Path):
    """Our own reader (torch_files.py); every failure a CheckpointError, nothing executed.
    Memory-mapped: what it returns goes to build_strict, which copies the weights it keeps."""
    return torch_load(path, mmap=True)


def _read_original(path: Path):
    """A `.pt` of any family: WavLM's release, fairseq's HuBERT / wav2vec 2.0, s3prl's converted ones.
    One reader for all (torch_files.py): fairseq's omegaconf / argparse / Dictionary objects become
    plain data, anything else a file names is refused; torch.load is never called."""
    ckpt = _torch_load(path)
    try:
        return (*read_release(ckpt), release_dropout(ckpt))  # + the rates (model/dropout.py)
    except ValueError as err:
        raise CheckpointError(path, str(err)) from None


# ---------------------------------------------------------------------------- Hugging Face
def _read_json(path: Path) -> dict:
    """A JSON object from a small regular file (a FIFO or a link to /dev/zero is refused at once,
    never read: small_files.read_small_text)."""
    try:
        config = json.loads(read_small_text(path))
    except ValueError as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(path, f"invalid JSON: {str(err)[:200]}") from None
    if not isinstance(config, dict):
        raise CheckpointError(path, f"expected a JSON object, found {type(config).__name__}")
    return config


def _hf_arch(path: Path, with_rates: bool = False):
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointError(path, "a directory without config.json (expected a Hugging Face WavLM, HuBERT or "
                              "wav2vec 2.0 model directory)")
    config = _read_json(config_file)
    if config.get("model_type") not in HF_FAMILIES:
        raise CheckpointError(config_file, f"model_type is {str(config.get('model_type'))[:80]!r}, not one of {', '.join(HF_FAMILIES)}")
    normalize = None
    prep = path / "preprocessor_config.json"
    if os.path.lexists(prep):
        normalize = bool(_read_json(prep).get("do_normalize", False))
    try:
        arch = arch_from_hf_config(config, normalize)
        rates = hf_dropout(config)
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(config_file, f"unsupported configuration: {err}") from None
    return (arch, rates) if with_rates else arch


def _read_hf_dir(path: Path):
    arch, rates = _hf_arch(path, with_rates=True)
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
    return arch, hf_backbone(state, arch), rates
