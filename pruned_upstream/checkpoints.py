"""Read WavLM checkpoints (original release, Hugging Face, ours) and write ours.

    model = load_model(path)        # a WavLM in eval mode
    save_model(model, "model.safetensors")

Nothing here executes code from a file: pickles are read with
`torch.load(weights_only=True)` and our own format is safetensors, the
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

from .arch import WavLMArch, dense_arch, parse_conv_layers
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
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or "cfg" not in ckpt or "model" not in ckpt:
        keys = list(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(path, f"not a WavLM release checkpoint (expected keys 'cfg' and 'model', found {keys})")
    cfg = ckpt["cfg"]
    if not isinstance(cfg, dict):
        raise CheckpointError(path, f"'cfg' must be a dict, found {type(cfg).__name__}")
    try:
        arch = arch_from_release_cfg(cfg)
    except ValueError as err:
        raise CheckpointError(path, str(err)) from None
    return arch, ckpt["model"]


# Defaults of the release's WavLMConfig for keys a cfg may omit (s3prl
# upstream/wavlm/WavLM.py, WavLMConfig.__init__).
_RELEASE_DEFAULTS = dict(
    extractor_mode="default",
    encoder_layers=12,
    encoder_embed_dim=768,
    encoder_ffn_embed_dim=3072,
    encoder_attention_heads=12,
    activation_fn="gelu",
    layer_norm_first=False,
    conv_feature_layers="[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    conv_bias=False,
    normalize=False,
    conv_pos=128,
    conv_pos_groups=16,
    relative_position_embedding=False,
    num_buckets=320,
    max_distance=1280,
    gru_rel_pos=False,
)


def arch_from_release_cfg(cfg: dict) -> WavLMArch:
    c = {**_RELEASE_DEFAULTS, **cfg}
    if c["activation_fn"] != "gelu":
        raise ValueError(f"activation_fn {c['activation_fn']!r} is not supported (WavLM uses 'gelu')")
    return dense_arch(
        num_layers=int(c["encoder_layers"]),
        embed_dim=int(c["encoder_embed_dim"]),
        num_heads=int(c["encoder_attention_heads"]),
        ffn_dim=int(c["encoder_ffn_embed_dim"]),
        conv_layers=parse_conv_layers(c["conv_feature_layers"]),
        extractor_mode=c["extractor_mode"],
        conv_bias=bool(c["conv_bias"]),
        layer_norm_first=bool(c["layer_norm_first"]),
        normalize=bool(c["normalize"]),
        conv_pos=int(c["conv_pos"]),
        conv_pos_groups=int(c["conv_pos_groups"]),
        relative_position_embedding=bool(c["relative_position_embedding"]),
        num_buckets=int(c["num_buckets"]),
        max_distance=int(c["max_distance"]),
        gru_rel_pos=bool(c["gru_rel_pos"]),
        post_extract_proj=parse_conv_layers(c["conv_feature_layers"])[-1][0] != int(c["encoder_embed_dim"]),
    )


# ---------------------------------------------------------------------------- Hugging Face
def _read_hf_dir(path: Path):
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointError(path, "a directory without config.json (expected a Hugging Face WavLM model directory)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(config_file, f"invalid JSON: {err}") from None
    if config.get("model_type") != "wavlm":
        raise CheckpointError(config_file, f"model_type is {config.get('model_type')!r}, not 'wavlm'")
    normalize = None
    prep = path / "preprocessor_config.json"
    if prep.exists():
        normalize = bool(json.loads(prep.read_text()).get("do_normalize", False))
    arch = arch_from_hf_config(config, normalize)
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
    if any(k.startswith("wavlm.") for k in state):  # a task model (WavLMForCTC, ...): keep the backbone
        state = {k[len("wavlm."):]: v for k, v in state.items() if k.startswith("wavlm.")}
    state = {hf_to_release_key(k, arch.extractor_mode): v for k, v in state.items()}
    state.setdefault("mask_emb", torch.zeros(arch.embed_dim))  # HF omits it when masking is off
    return arch, state


def arch_from_hf_config(config: dict, normalize: bool | None = None) -> WavLMArch:
    """Map a transformers WavLMConfig (config.json) onto our architecture."""
    if config.get("hidden_act", "gelu") != "gelu" or config.get("feat_extract_activation", "gelu") != "gelu":
        raise ValueError("only the GELU activations of WavLM are supported")
    if config.get("add_adapter"):
        raise ValueError("Hugging Face adapters (add_adapter=true) are not supported")
    mode = {"group": "default", "layer": "layer_norm"}[config.get("feat_extract_norm", "group")]
    conv = tuple(zip(config["conv_dim"], config["conv_kernel"], config["conv_stride"]))
    return dense_arch(
        num_layers=int(config["num_hidden_layers"]),
        embed_dim=int(config["hidden_size"]),
        num_heads=int(config["num_attention_heads"]),
        ffn_dim=int(config["intermediate_size"]),
        conv_layers=tuple(tuple(int(v) for v in c) for c in conv),
        extractor_mode=mode,
        conv_bias=bool(config.get("conv_bias", False)),
        layer_norm_first=bool(config.get("do_stable_layer_norm", False)),
        # do_normalize lives in preprocessor_config.json; without it, follow the
        # release (layer-norm extractors were trained on normalised waveforms)
        normalize=(mode == "layer_norm") if normalize is None else normalize,
        conv_pos=int(config.get("num_conv_pos_embeddings", 128)),
        conv_pos_groups=int(config.get("num_conv_pos_embedding_groups", 16)),
        relative_position_embedding=True,
        num_buckets=int(config.get("num_buckets", 320)),
        max_distance=int(config.get("max_bucket_distance", 800)),
        gru_rel_pos=True,
    )


_HF_RULES = [  # (pattern, replacement) applied in order; the only place keys are renamed
    (r"^feature_projection\.layer_norm\.", "layer_norm."),
    (r"^feature_projection\.projection\.", "post_extract_proj."),
    (r"^masked_spec_embed$", "mask_emb"),
    (r"^encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0$", "encoder.pos_conv.0.weight_g"),
    (r"^encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1$", "encoder.pos_conv.0.weight_v"),
    (r"^encoder\.pos_conv_embed\.conv\.", "encoder.pos_conv.0."),
    (r"\.attention\.rel_attn_embed\.", ".self_attn.relative_attention_bias."),
    (r"\.attention\.gru_rel_pos_const$", ".self_attn.grep_a"),
    (r"\.attention\.gru_rel_pos_linear\.", ".self_attn.grep_linear."),
    (r"\.attention\.", ".self_attn."),
    (r"^(encoder\.layers\.\d+)\.layer_norm\.", r"\1.self_attn_layer_norm."),
    (r"\.feed_forward\.intermediate_dense\.", ".fc1."),
    (r"\.feed_forward\.output_dense\.", ".fc2."),
    (r"^(feature_extractor\.conv_layers\.\d+)\.conv\.", r"\1.0."),
]


def hf_to_release_key(key: str, extractor_mode: str = "default") -> str:
    """A transformers WavLMModel key -> the original release's key (which our module uses)."""
    for pattern, replacement in _HF_RULES:
        key = re.sub(pattern, replacement, key)
    norm = "2.1" if extractor_mode == "layer_norm" else "2"
    return re.sub(r"^(feature_extractor\.conv_layers\.\d+)\.layer_norm\.", rf"\1.{norm}.", key)
