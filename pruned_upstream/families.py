"""Configurations and key names of WavLM, HuBERT and wav2vec 2.0 files -> our architecture and keys.

One model class serves the three families (docs/model.md, "Families"); what
differs between files is where the configuration lives and how keys are named:

- WavLM's release: `cfg` (flat) and `model`;
- fairseq's HuBERT / wav2vec 2.0 releases: `cfg` with `model` and `task` sections
  (omegaconf, read by fairseq_pickle) or an `args` namespace, and `model`;
- s3prl's converted checkpoints (what its `hubert_local` / `wav2vec2_local` read):
  `task_cfg`, `model_cfg`, `model_weight`;
- Hugging Face directories: config.json with `model_type` wavlm, hubert or wav2vec2.

Every function here raises ValueError with the problem; checkpoints.py adds the path.
No file is read here.
"""

from __future__ import annotations

import re

import torch

from .arch import WavLMArch, dense_arch, parse_conv_layers
from .model.dropout import check_rates

# Defaults of the release configs for keys a cfg may omit: s3prl's WavLMConfig.__init__
# (upstream/wavlm/WavLM.py), HubertConfig (upstream/hubert/hubert_model.py) and
# Wav2Vec2Config (upstream/wav2vec2/wav2vec2_model.py) agree on all of these but the
# position-bias ones, which only WavLM has.
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
# Options of fairseq's configs our module does not implement: the value each must have.
# conv_pos_batch_norm (fairseq's Wav2Vec2Config, "batch norm instead of weight norm in conv_pos")
# changes the position convolution's weights: refused by name, not met as a shape mismatch.
_UNSUPPORTED = dict(pos_conv_depth=1, layer_type="transformer", crop_seq_to_multiple=1, quantize_input=False,
                    conv_pos_batch_norm=False)
# Options that change nothing s3prl's upstream computes, accepted with any valid value (docs/model.md,
# "Families"): required_seq_len_multiple pads the transformer's input to a multiple of it, masks the
# padding as padded keys and cuts it off again (s3prl upstream/wav2vec2/wav2vec2_model.py,
# TransformerEncoder.extract_features; fairseq's default is 2).
_IGNORED_POSITIVE_INTS = ("required_seq_len_multiple",)
_MAX_SEQ_MULTIPLE = 1_000_000
# Pre-training heads: in the files, not in the backbone s3prl's upstreams run (dropped).
_HEADS = re.compile(r"^(final_proj|label_embs_concat|quantizer|project_q|target_glu|project_inp)(\.|$)")
# fairseq's names for a family (cfg.model._name; args.arch)
_FAMILY_NAMES = {"hubert": "hubert", "wav2vec2": "wav2vec2", "wav2vec2_base": "wav2vec2", "wav2vec2_large": "wav2vec2"}


def arch_from_release_cfg(cfg: dict, family: str = "wavlm") -> WavLMArch:
    """A release/fairseq model cfg (WavLM: with `normalize`) -> our architecture."""
    c = {**_RELEASE_DEFAULTS, **cfg}
    if c["activation_fn"] != "gelu":
        raise ValueError(f"activation_fn {c['activation_fn']!r} is not supported (these models use 'gelu')")
    for key, needed in _UNSUPPORTED.items():
        if key in cfg and cfg[key] != needed:
            raise ValueError(f"{key}={cfg[key]!r} is not supported (only {needed!r})")
    for key in _IGNORED_POSITIVE_INTS:
        value = cfg.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_SEQ_MULTIPLE:
            raise ValueError(f"{key}={value!r} must be an integer in [1, {_MAX_SEQ_MULTIPLE:,}]")
    conv = parse_conv_layers(c["conv_feature_layers"])
    try:
        return dense_arch(
            num_layers=int(c["encoder_layers"]),
            embed_dim=int(c["encoder_embed_dim"]),
            num_heads=int(c["encoder_attention_heads"]),
            ffn_dim=int(c["encoder_ffn_embed_dim"]),
            conv_layers=conv,
            extractor_mode=c["extractor_mode"],
            conv_bias=bool(c["conv_bias"]),
            layer_norm_first=bool(c["layer_norm_first"]),
            normalize=bool(c["normalize"]),
            conv_pos=int(c["conv_pos"]),
            conv_pos_groups=int(c["conv_pos_groups"]),
            relative_position_embedding=bool(c["relative_position_embedding"]) and family == "wavlm",
            num_buckets=int(c["num_buckets"]),
            max_distance=int(c["max_distance"]),
            gru_rel_pos=bool(c["gru_rel_pos"]) and family == "wavlm",
            post_extract_proj=conv[-1][0] != int(c["encoder_embed_dim"]),
            family=family,
        )
    except (TypeError, ValueError) as err:  # e.g. an unresolved "${...}" interpolation where a number belongs
        raise ValueError(f"bad model configuration: {err}") from None


def family_of(model_cfg: dict, fallback: str) -> str:
    name = model_cfg.get("_name") or model_cfg.get("arch") or fallback
    if name not in _FAMILY_NAMES:
        raise ValueError(f"model {name!r} is not supported (pre-trained hubert or wav2vec2 only; "
                         "a fine-tuned fairseq model: load its Hugging Face directory, or the pre-trained checkpoint)")
    return _FAMILY_NAMES[name]


def read_release(ckpt) -> tuple[WavLMArch, dict]:
    """A loaded `.pt` (plain data) of any family -> (arch, backbone state dict)."""
    if not isinstance(ckpt, dict):
        raise ValueError(f"not a model checkpoint (found a {type(ckpt).__name__})")
    if {"task_cfg", "model_cfg", "model_weight"} <= set(ckpt):  # s3prl's converted hubert / wav2vec2
        task, model = ckpt["task_cfg"], ckpt["model_cfg"]
        family = family_of(model, "hubert" if "dictionaries_symbols" in ckpt else "wav2vec2")
        state = ckpt["model_weight"]
    elif "model" in ckpt and isinstance(ckpt.get("cfg"), dict) and isinstance(ckpt["cfg"].get("model"), dict):
        task, model = ckpt["cfg"].get("task") or {}, ckpt["cfg"]["model"]  # fairseq (hydra cfg)
        family = family_of(model, "")
        state = ckpt["model"]
    elif "model" in ckpt and isinstance(ckpt.get("args"), dict) and not ckpt.get("cfg"):  # fairseq (argparse)
        task = model = ckpt["args"]
        family = family_of(model, "")
        state = ckpt["model"]
    elif "cfg" in ckpt and "model" in ckpt:  # WavLM's release: a flat cfg
        if not isinstance(ckpt["cfg"], dict):
            raise ValueError(f"'cfg' must be a dict, found {type(ckpt['cfg']).__name__}")
        return arch_from_release_cfg(ckpt["cfg"]), ckpt["model"]
    else:
        raise ValueError(f"not a WavLM release checkpoint, nor fairseq's or s3prl's HuBERT / wav2vec 2.0 (expected 'cfg' and 'model', or s3prl's "
                         f"'task_cfg', 'model_cfg' and 'model_weight'; found {list(ckpt)[:6]})")
    if not isinstance(model, dict) or not isinstance(task, dict) or not isinstance(state, dict):
        raise ValueError("the model configuration, task configuration and weights must be mappings")
    arch = arch_from_release_cfg({**model, "normalize": bool(task.get("normalize", False))}, family)
    state = {fairseq_key(k): v for k, v in state.items() if not _HEADS.match(k)}
    return arch, state


def fairseq_key(key: str) -> str:
    """torch's newer weight-norm names (parametrizations) -> the release's weight_g / weight_v."""
    key = re.sub(r"^encoder\.pos_conv\.0\.parametrizations\.weight\.original0$", "encoder.pos_conv.0.weight_g", key)
    return re.sub(r"^encoder\.pos_conv\.0\.parametrizations\.weight\.original1$", "encoder.pos_conv.0.weight_v", key)


# ---------------------------------------------------------------------------- Hugging Face
HF_FAMILIES = ("wavlm", "hubert", "wav2vec2")  # config.json model_type; also the task models' backbone prefix


def arch_from_hf_config(config: dict, normalize: bool | None = None) -> WavLMArch:
    """Map a transformers WavLMConfig / HubertConfig / Wav2Vec2Config (config.json) onto our architecture."""
    family = config.get("model_type", "wavlm")
    if family not in HF_FAMILIES:
        raise ValueError(f"model_type is {family!r}; supported: {', '.join(HF_FAMILIES)}")
    if config.get("hidden_act", "gelu") != "gelu" or config.get("feat_extract_activation", "gelu") != "gelu":
        raise ValueError("only the GELU activations of these models are supported")
    for key, allowed in (("add_adapter", False), ("conv_pos_batch_norm", False), ("feat_proj_layer_norm", True)):
        if key in config and bool(config[key]) != allowed:
            raise ValueError(f"{key}={config[key]!r} is not supported (only {allowed})")
    mode = {"group": "default", "layer": "layer_norm"}[config.get("feat_extract_norm", "group")]
    conv = tuple(zip(config["conv_dim"], config["conv_kernel"], config["conv_stride"]))
    wavlm = family == "wavlm"
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
        relative_position_embedding=wavlm,
        num_buckets=int(config.get("num_buckets", 320)),
        max_distance=int(config.get("max_bucket_distance", 800)),
        gru_rel_pos=wavlm,
        family=family,
    )


def hf_backbone(state: dict, arch: WavLMArch) -> dict:
    """A Hugging Face state dict (a task model's too: its backbone) -> release keys."""
    prefix = f"{arch.family}."
    if any(k.startswith(prefix) for k in state):  # WavLMForCTC, HubertForCTC, Wav2Vec2ForPreTraining, ...
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    state = {hf_to_release_key(k, arch.extractor_mode): v for k, v in state.items()}
    if "mask_emb" not in state:  # HF omits it when masking is off
        # embed_dim is config.json's hidden_size, a declared size not yet checked against the stored
        # tensors: one zero, seen as embed_dim values; the loader's copy allocates it after the check
        state["mask_emb"] = torch.zeros(1).expand(arch.embed_dim)
    return state


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
    """A transformers WavLM/Hubert/Wav2Vec2Model key -> the original release's key (which our module uses)."""
    for pattern, replacement in _HF_RULES:
        key = re.sub(pattern, replacement, key)
    norm = "2.1" if extractor_mode == "layer_norm" else "2"
    return re.sub(r"^(feature_extractor\.conv_layers\.\d+)\.layer_norm\.", rf"\1.{norm}.", key)


# ---------------------------------------------------------------------------- dropout rates
# The rates s3prl's experts keep active in train mode (model/dropout.py), read from the file.
# Release / fairseq / s3prl-converted configs: the field names of s3prl's WavLMConfig
# (upstream/wavlm/WavLM.py), HubertConfig (hubert/hubert_model.py) and Wav2Vec2Config
# (wav2vec2/wav2vec2_model.py), whose defaults for an absent field agree: 0.1, 0.1, 0.0, 0.0.
_RELEASE_DROPOUT = dict(dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, dropout_input=0.0)
# Hugging Face config.json: its name for each rate and transformers' default (WavLMConfig,
# HubertConfig, Wav2Vec2Config agree). hidden_dropout is used where fairseq uses `dropout`
# (encoder input, attention and FFN outputs), feat_proj_dropout after the feature projection.
_HF_DROPOUT = dict(dropout=("hidden_dropout", 0.1), attention_dropout=("attention_dropout", 0.1),
                   activation_dropout=("activation_dropout", 0.1), dropout_input=("feat_proj_dropout", 0.0))


def release_dropout(ckpt: dict) -> dict[str, float]:
    """The dropout rates of a loaded `.pt` that read_release accepted (its model cfg, in read_release's order)."""
    if {"task_cfg", "model_cfg", "model_weight"} <= set(ckpt):
        model = ckpt["model_cfg"]
    elif "model" in ckpt and isinstance(ckpt.get("cfg"), dict) and isinstance(ckpt["cfg"].get("model"), dict):
        model = ckpt["cfg"]["model"]
    elif "model" in ckpt and isinstance(ckpt.get("args"), dict) and not ckpt.get("cfg"):
        model = ckpt["args"]
    else:
        model = ckpt["cfg"]
    return check_rates({k: model.get(k, v) for k, v in _RELEASE_DROPOUT.items()}, "the model configuration")


def hf_dropout(config: dict) -> dict[str, float]:
    """The dropout rates of a Hugging Face config.json, in our (fairseq's) names."""
    return check_rates({ours: config.get(theirs, default) for ours, (theirs, default) in _HF_DROPOUT.items()},
                       "config.json")
