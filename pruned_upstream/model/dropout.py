"""Fine-tuning as s3prl's experts do it: a model file's dropout rates, and a CNN that gets no gradient.

    model = load_model(path)                  # model.dropout_rates: what the file says; nothing active
    finetune_like_s3prl(model)                # the s3prl upstream does this (s3prl_plugin/expert.py)
    model.train()                             # now dropout applies where s3prl's models apply it

s3prl's wavlm, hubert and wav2vec2 experts (s3prl/upstream/*/expert.py) set
`feature_grad_mult = 0.0` (the CNN runs under no_grad: no gradient reaches it) and
`encoder.layerdrop = 0.0`, and keep the checkpoint's dropouts, which act in train
mode only. The places, from s3prl/upstream/wavlm/WavLM.py and
s3prl/upstream/wav2vec2/wav2vec2_model.py (HuBERT uses the latter's encoder):

| rate | where |
| --- | --- |
| `dropout_input` | the CNN features after `post_extract_proj` |
| `dropout` | the encoder input after the positional conv (and LayerNorm, post-LN); each layer's attention output and FFN output before their residual adds |
| `attention_dropout` | the attention probabilities, after the softmax |
| `activation_dropout` | the FFN's hidden units after the GELU |

A model built by load_model only RECORDS the file's rates (`model.dropout_rates`);
every active rate is 0 until `apply_dropout` (or `finetune_like_s3prl`) sets it, so the
pruning and distillation trainer, which builds its teacher and student with the same
loaders, trains exactly as before (docs/model.md, "Fine-tuning through s3prl").
"""

from __future__ import annotations

import json
import math

import torch

RATE_NAMES = ("dropout", "attention_dropout", "activation_dropout", "dropout_input")


def check_rates(rates, where: str = "dropout rates") -> dict[str, float]:
    """A mapping of some of RATE_NAMES to numbers in [0, 1] -> all four as floats (missing: 0)."""
    if not isinstance(rates, dict):
        raise ValueError(f"{where}: expected a mapping of rates, found {type(rates).__name__}")
    # messages show a bounded text of what a file holds, never str() of an untrusted value
    unknown = [k[:40] if isinstance(k, str) else f"a {type(k).__name__}" for k in rates if k not in RATE_NAMES]
    if unknown:
        raise ValueError(f"{where}: unknown rates {unknown[:4]} (known: {', '.join(RATE_NAMES)})")
    out = {}
    for name in RATE_NAMES:
        value = rates.get(name, 0.0)
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int beyond float's range
                pass
        if number is None or not 0.0 <= number <= 1.0:  # NaN fails the comparison too
            found = f"a {type(value).__name__}" if number is None else f"{number:.6g}"
            raise ValueError(f"{where}: {name} must be a number in [0, 1], found {found}")
        out[name] = number
    return out


# ---------------------------------------------------------------------------- our files' metadata
# The rates in our safetensors files (and training checkpoints), apart from the architecture: JSON
# of the four rates. An export records its teacher's, so that fine-tuning the compact model through
# s3prl applies them as s3prl's experts apply a release's own. A file without the entry: no dropout.
METADATA_KEY = "pruned_upstream_dropout"
_MAX_JSON = 4096


def rates_metadata(model) -> dict[str, str]:
    """The metadata entry recording `model.dropout_rates` (none when it records none)."""
    rates = getattr(model, "dropout_rates", None)
    return {METADATA_KEY: json.dumps(check_rates(rates))} if rates else {}


def rates_from_metadata(meta: dict) -> dict[str, float]:
    """The rates a file's metadata records ({} without the entry); ValueError when malformed."""
    if METADATA_KEY not in meta:
        return {}
    text = meta[METADATA_KEY]
    if not isinstance(text, str) or len(text) > _MAX_JSON:
        raise ValueError(f"{METADATA_KEY}: expected a JSON object of at most {_MAX_JSON} characters")
    try:
        rates = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{METADATA_KEY}: not JSON ({type(err).__name__})") from None
    return check_rates(rates, METADATA_KEY)


def apply_dropout(model, rates=None) -> None:
    """Make `rates` (default: the model's recorded `dropout_rates`) the ones train mode applies.

    Evaluation mode never applies dropout, whatever is set here.
    """
    r = check_rates(model.dropout_rates if rates is None else rates)
    model.dropout_input = r["dropout_input"]
    model.encoder.dropout = r["dropout"]
    for layer in model.encoder.layers:
        layer.dropout, layer.activation_dropout = r["dropout"], r["activation_dropout"]
        layer.self_attn.attention_dropout = r["attention_dropout"]


def active_dropout(model) -> dict[str, float]:
    """The rates train mode applies now (all layers share them; layer 0's are reported)."""
    layer = model.encoder.layers[0]
    return {"dropout": model.encoder.dropout, "attention_dropout": layer.self_attn.attention_dropout,
            "activation_dropout": layer.activation_dropout, "dropout_input": model.dropout_input}


def finetune_like_s3prl(model) -> None:
    """What s3prl's experts do to their model: CNN frozen, no layer drop, the file's dropouts."""
    model.feature_grad_mult = 0.0
    model.encoder.layer_drop = None
    apply_dropout(model)


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient times `scale` backward (fairseq's feature_grad_mult)."""

    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"feature_grad_mult must be a finite number >= 0, got {scale}")
    return x if scale == 1.0 else _ScaleGradient.apply(x, scale)
