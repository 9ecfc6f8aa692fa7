"""The architecture of a (dense, prunable or pruned) WavLM, as frozen dataclasses.

No torch here: the architecture is plain data that is written as JSON into the
metadata of our `.safetensors` files and read back, so that loading never
guesses the structure from key names.

Heads are kept by their ORIGINAL index: WavLM's relative position bias and its
gate are indexed by head, and a layer's gate keeps reading the original 64-wide
slices of its input whatever survives.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from dataclasses import dataclass, field

FORMAT_VERSION = 1
SAMPLE_RATE = 16000  # the input rate of WavLM, HuBERT and wav2vec 2.0 (Chen et al. 2022, sec. 4.1)

# WavLM Base's CNN: 7 layers, 512 channels, kernels 10,3,3,3,3,2,2, strides
# 5,2,2,2,2,2,2 (docs/method.md section 1; the WavLM release's `conv_feature_layers`).
BASE_CONV = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2

# The model families one class serves (docs/model.md, "Families"): HuBERT's and wav2vec 2.0's
# transformer is WavLM's without the gated relative position bias. The family also picks how
# padded frames are found: s3prl's hubert/wavlm split the sample mask into chunks, its wav2vec2
# computes each utterance's frame count with the CNN's length formula.
FAMILIES = ("wavlm", "hubert", "wav2vec2")


@dataclass(frozen=True)
class HeadArch:
    """One attention head: its original index and its query/key and value sizes."""

    index: int
    qk: int
    vo: int


@dataclass(frozen=True)
class LayerArch:
    """One transformer layer.

    `attn` / `ffn` say whether the block exists at all. A block may exist with no
    heads or no FFN units: its output is then its (constant) output bias.
    """

    heads: tuple[HeadArch, ...]
    ffn_dim: int
    attn: bool = True
    ffn: bool = True

    @staticmethod
    def dense(num_heads: int, head_dim: int, ffn_dim: int) -> "LayerArch":
        heads = tuple(HeadArch(h, head_dim, head_dim) for h in range(num_heads))
        return LayerArch(heads=heads, ffn_dim=ffn_dim)

    @property
    def qk_total(self) -> int:
        return sum(h.qk for h in self.heads)

    @property
    def vo_total(self) -> int:
        return sum(h.vo for h in self.heads)


@dataclass(frozen=True)
class WavLMArch:
    """Everything needed to build the module; the dense model keeps everything."""

    conv_layers: tuple[tuple[int, int, int], ...] = BASE_CONV  # (channels, kernel, stride)
    extractor_mode: str = "default"  # "default": one GroupNorm in conv 0; "layer_norm": LN in every conv
    conv_bias: bool = False
    embed_dim: int = 768
    num_heads: int = 12  # ORIGINAL head count (indexes the position bias)
    head_dim: int = 64  # ORIGINAL head size (sets the softmax scale and the gate slices)
    layers: tuple[LayerArch, ...] = field(default_factory=tuple)
    layer_norm_first: bool = False  # pre-LN (Large) vs post-LN (Base)
    normalize: bool = False  # layer-normalise each waveform before the CNN
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = True
    num_buckets: int = 320
    max_distance: int = 800
    gru_rel_pos: bool = True
    conv_channels: tuple[int, ...] | None = None  # kept CNN channels per conv layer (None: all)
    post_extract_proj: bool = True  # the release has it only when conv dim != embed dim; HF always
    family: str = "wavlm"  # one of FAMILIES; files written before the field existed are WavLM

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if self.family != "wavlm" and (self.relative_position_embedding or self.gru_rel_pos):
            raise ValueError(f"a {self.family} model has no relative position bias: "
                             "relative_position_embedding and gru_rel_pos must be false")
        if self.extractor_mode not in ("default", "layer_norm"):
            raise ValueError(f"extractor_mode must be 'default' or 'layer_norm', got {self.extractor_mode!r}")
        if self.num_heads * self.head_dim != self.embed_dim:
            raise ValueError(
                f"num_heads * head_dim must equal embed_dim: {self.num_heads} * {self.head_dim} != {self.embed_dim}"
            )
        for i, layer in enumerate(self.layers):
            idx = [h.index for h in layer.heads]
            if len(set(idx)) != len(idx) or any(not 0 <= j < self.num_heads for j in idx):
                raise ValueError(f"layer {i}: bad head indices {idx} for {self.num_heads} heads")
            if any(not 0 <= h.qk <= self.head_dim or not 1 <= h.vo <= self.head_dim for h in layer.heads):
                # a head without value dims contributes nothing: export drops it whole
                raise ValueError(f"layer {i}: head qk sizes must lie in [0, {self.head_dim}], vo sizes in [1, {self.head_dim}]")
        if self.conv_channels is not None and len(self.conv_channels) != len(self.conv_layers):
            raise ValueError("conv_channels needs one entry per conv layer")

    # ---- derived -----------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def conv_dim(self) -> int:
        return self.conv_layers[-1][0]

    def channels(self) -> tuple[int, ...]:
        """Output channels of each conv layer, after any CNN pruning."""
        return self.conv_channels or tuple(c for c, _, _ in self.conv_layers)

    @property
    def downsample(self) -> int:
        rate = 1
        for _, _, stride in self.conv_layers:
            rate *= stride
        return rate

    def is_dense(self) -> bool:
        """Every head whole, every block present, one FFN size for all layers, the CNN whole."""
        if not self.layers:
            return self.conv_channels is None
        dense = LayerArch.dense(self.num_heads, self.head_dim, self.layers[0].ffn_dim)
        return self.conv_channels is None and all(layer == dense for layer in self.layers)

    # ---- serialisation -----------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"format_version": FORMAT_VERSION, "arch": dataclasses.asdict(self)})

    @staticmethod
    def from_json(text: str) -> "WavLMArch":
        blob = json.loads(text)
        version = blob.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported architecture format version {version!r} (this tool reads {FORMAT_VERSION})")
        return WavLMArch.from_dict(blob["arch"])

    @staticmethod
    def from_dict(d: dict) -> "WavLMArch":
        d = dict(d)
        d["conv_layers"] = tuple(tuple(int(v) for v in c) for c in d["conv_layers"])
        d["layers"] = tuple(
            LayerArch(
                heads=tuple(HeadArch(**h) for h in layer["heads"]),
                ffn_dim=int(layer["ffn_dim"]),
                attn=bool(layer["attn"]),
                ffn=bool(layer["ffn"]),
            )
            for layer in d["layers"]
        )
        if d.get("conv_channels") is not None:
            d["conv_channels"] = tuple(int(c) for c in d["conv_channels"])
        known = {f.name for f in dataclasses.fields(WavLMArch)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown architecture fields: {sorted(unknown)}")
        return WavLMArch(**d)


MAX_DECLARED_LAYERS = 1000
MAX_DECLARED_HEADS = 10_000  # per layer; the largest released models have 16 (Hugging Face configs: same bound)


def dense_arch(
    num_layers: int = 12,
    embed_dim: int = 768,
    num_heads: int = 12,
    ffn_dim: int = 3072,
    **kw,
) -> WavLMArch:
    """A dense architecture; `kw` sets the other WavLMArch fields.

    For family hubert or wav2vec2 the position-bias fields default to off."""
    # A file's configuration declares these: bound them before anything is built from them
    # (a few bytes must not make us build a billion layers; the largest released model has 24).
    if not 0 <= num_layers <= MAX_DECLARED_LAYERS:
        raise ValueError(f"num_layers {num_layers} is outside [0, {MAX_DECLARED_LAYERS}]")
    if not 0 < num_heads <= min(embed_dim, MAX_DECLARED_HEADS):
        # one HeadArch object per head is built here: bounded by a constant, not only by embed_dim
        raise ValueError(f"num_heads {num_heads} is outside [1, min(embed_dim = {embed_dim}, {MAX_DECLARED_HEADS:,})]")
    if kw.get("family", "wavlm") != "wavlm":
        kw.setdefault("relative_position_embedding", False)
        kw.setdefault("gru_rel_pos", False)
    layer = LayerArch.dense(num_heads, embed_dim // num_heads, ffn_dim)
    return WavLMArch(
        embed_dim=embed_dim,
        num_heads=num_heads,
        head_dim=embed_dim // num_heads,
        layers=(layer,) * num_layers,
        **kw,
    )


# Presets. Sources: the configurations stored in the released checkpoints
# (WavLM-Base.pt / WavLM-Base+.pt / WavLM-Large.pt `cfg`), as read by s3prl's
# WavLMConfig, and Hugging Face's microsoft/wavlm-* config.json files.
# HuBERT and wav2vec 2.0: the defaults of s3prl's HubertConfig / Wav2Vec2Config
# (upstream/hubert/hubert_model.py, upstream/wav2vec2/wav2vec2_model.py) are the
# Base models; the Large ones are the models SUPERB scores (s3prl hubconf
# hubert_large_ll60k, wav2vec2_large_ll60k): layer-norm CNN, pre-LN, normalised
# waveforms, 24 x 1024 with 16 heads and FFN 4096 (fairseq's
# examples/hubert/config/pretrain/hubert_large_librivox.yaml: conv_bias left at its
# default, false; examples/wav2vec/config/pretraining/wav2vec2_large_librivox.yaml:
# conv_bias true).
PRESETS = ("base", "base_plus", "large", "hubert_base", "hubert_large", "wav2vec2_base", "wav2vec2_large")
_LARGE = dict(extractor_mode="layer_norm", layer_norm_first=True, normalize=True)


def preset(name: str) -> WavLMArch:
    if name in ("base", "base_plus"):
        return dense_arch(12, 768, 12, 3072, max_distance=800)
    if name == "large":
        return dense_arch(24, 1024, 16, 4096, max_distance=800, **_LARGE)
    family, _, size = name.partition("_")
    if family in ("hubert", "wav2vec2") and size == "base":
        return dense_arch(12, 768, 12, 3072, family=family)
    if family in ("hubert", "wav2vec2") and size == "large":
        return dense_arch(24, 1024, 16, 4096, family=family, conv_bias=family == "wav2vec2", **_LARGE)
    raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")


# ---- the original release's `conv_feature_layers` string ---------------------------------
# Bounds on what the string may describe (the releases: 7 layers, 512 channels, kernel 10, stride 5).
# Every intermediate list is checked before it is built: `[(1,1,1)] * 1000 * 1000 * 100` multiplies
# factors that are each small into 1e8 tuples, 30 s and 2 GB, unless the product is bounded.
MAX_CONV_LAYERS = MAX_DECLARED_LAYERS
MAX_CONV_VALUE = 2**31 - 1
_MAX_CONV_TEXT = 10_000  # characters


def parse_conv_layers(text: str) -> tuple[tuple[int, int, int], ...]:
    """Parse e.g. "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2" without `eval`.

    Only list/tuple displays of integers, `+` of lists and `*` of a list by an
    integer are accepted; anything else is refused with the offending text. No list
    longer than MAX_CONV_LAYERS is ever built, and every value lies in [1, MAX_CONV_VALUE].
    """
    if not isinstance(text, str):
        raise ValueError(f"conv_feature_layers must be a string, found {type(text).__name__}")
    if len(text) > _MAX_CONV_TEXT:
        raise ValueError(f"conv_feature_layers is {len(text):,} characters long (at most {_MAX_CONV_TEXT:,})")
    try:
        tree = ast.parse(text, mode="eval")
        value = _literal(tree.body, text)
    except SyntaxError as err:
        raise ValueError(f"conv_feature_layers is not a valid expression: {text[:200]!r}") from err
    except (RecursionError, MemoryError):
        raise ValueError(f"conv_feature_layers is nested too deeply: {text[:200]!r}") from None
    if not isinstance(value, list) or not all(
        isinstance(c, tuple) and len(c) == 3 and all(isinstance(v, int) and 1 <= v <= MAX_CONV_VALUE for v in c)
        for c in value
    ):
        raise ValueError(f"conv_feature_layers must be a list of (dim, kernel, stride), each in "
                         f"[1, {MAX_CONV_VALUE}]: {text[:200]!r}")
    return tuple(value)


def _literal(node: ast.AST, text: str):
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e, text) for e in node.elts)
    if isinstance(node, ast.List):
        return [_literal(e, text) for e in node.elts]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _literal(node.left, text), _literal(node.right, text)
        if isinstance(left, list) and isinstance(right, list):
            return _bounded(left, len(left) + len(right), text) + right
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        left, right = _literal(node.left, text), _literal(node.right, text)
        if isinstance(left, list) and isinstance(right, int) and not isinstance(right, bool) and 0 <= right:
            return _bounded(left, len(left) * right, text) * right
    raise ValueError(f"unsupported element in conv_feature_layers {text[:200]!r}: {ast.dump(node)[:80]}")


def _bounded(items: list, length: int, text: str) -> list:
    """`items` when the list about to be built from it has at most MAX_CONV_LAYERS entries."""
    if length > MAX_CONV_LAYERS:
        raise ValueError(f"conv_feature_layers describes {length:,} conv layers (at most {MAX_CONV_LAYERS:,}): "
                         f"{text[:200]!r}")
    return items
