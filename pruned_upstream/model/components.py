"""WavLM's building blocks: CNN feature extractor, positional convolution, encoder layer.

Module and parameter names follow the original release's state dict
(`feature_extractor.conv_layers.0.0.weight`, `encoder.pos_conv.0.weight_g`,
`encoder.layers.3.fc1.weight`, ...), so an original checkpoint loads strictly
without renames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import LayerArch, WavLMArch
from .attention import SelfAttention, additive_padding_mask, linear


class TransposeLast(nn.Module):
    def forward(self, x):
        return x.transpose(-2, -1)


class ConvBlock(nn.Module):
    """conv -> [GroupNorm | LayerNorm over channels] -> GELU -> optional channel gate.

    Children are named "0" (conv) and "2" (norm) as in the release's
    nn.Sequential(conv, dropout, norm, gelu).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, norm: str | None, bias: bool):
        super().__init__()
        self.add_module("0", nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=bias))
        if norm == "group":  # one group per channel: each channel normalised over time
            self.add_module("2", nn.GroupNorm(c_out, c_out, affine=True))
        elif norm == "layer":
            self.add_module("2", nn.Sequential(TransposeLast(), nn.LayerNorm(c_out), TransposeLast()))
        self.has_norm = norm is not None
        self.gate_conv = None  # optional output-channel gate (make_prunable)

    def forward(self, x):  # (B, C_in, S) -> (B, C_out, S')
        x = getattr(self, "0")(x)
        if self.has_norm:
            norm = getattr(self, "2")
            x = norm(x.float()).type_as(x) if isinstance(norm, nn.GroupNorm) else norm(x)
        x = F.gelu(x)
        if self.gate_conv is not None:
            x = x * self.gate_conv()[None, :, None]
        return x


class FeatureExtractor(nn.Module):
    """The waveform CNN: (B, S) -> (B, C, T'), 320x downsampling for WavLM."""

    def __init__(self, arch: WavLMArch):
        super().__init__()
        c_in, blocks = 1, []
        for i, ((_, kernel, stride), c_out) in enumerate(zip(arch.conv_layers, arch.channels())):
            if arch.extractor_mode == "layer_norm":
                norm = "layer"
            else:
                norm = "group" if i == 0 else None
            blocks.append(ConvBlock(c_in, c_out, kernel, stride, norm, arch.conv_bias))
            c_in = c_out
        self.conv_layers = nn.ModuleList(blocks)

    def forward(self, wav):
        x = wav.unsqueeze(1)  # (B, 1, S)
        for block in self.conv_layers:
            x = block(x)
        return x


class WeightNormConv1d(nn.Module):
    """Conv1d with weight = g * v / ||v||, the norm taken over all dims but the kernel axis.

    This is `torch.nn.utils.weight_norm(conv, dim=2)` as WavLM's positional
    convolution uses it; kept explicit so the parameter names (`weight_g`,
    `weight_v`) match the release on every torch version.
    """

    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.empty(dim, dim // groups, kernel))
        self.bias = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.weight_v, std=0.02)
        self.padding, self.groups = kernel // 2, groups

    def forward(self, x):  # (B, D, T) -> (B, D, T + 1 - kernel % 2)
        norm = self.weight_v.norm(dim=(0, 1), keepdim=True)  # (1, 1, K)
        weight = self.weight_v * (self.weight_g / norm)
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


class PositionalConv(nn.Module):
    """Convolutional relative positional embedding: grouped conv, 'same' trim, GELU."""

    def __init__(self, arch: WavLMArch):
        super().__init__()
        self.add_module("0", WeightNormConv1d(arch.embed_dim, arch.conv_pos, arch.conv_pos_groups))
        self.trim = 1 if arch.conv_pos % 2 == 0 else 0

    def forward(self, x):  # (B, T, D) -> (B, T, D)
        y = getattr(self, "0")(x.transpose(1, 2))
        if self.trim:
            y = y[:, :, : -self.trim]
        return F.gelu(y).transpose(1, 2)


class EncoderLayer(nn.Module):
    """A post-LN (Base) or pre-LN (Large) transformer layer with optional gates.

        f_FFN(X) = z_FFN * gelu(X W_U) diag(z_int) W_D        (paper Eq. 3)
    """

    def __init__(self, arch: WavLMArch, layer: LayerArch, index: int):
        super().__init__()
        self.layer, self.pre_ln = layer, arch.layer_norm_first
        dim = arch.embed_dim
        self.self_attn = SelfAttention(arch, layer, has_relative_bias=index == 0)
        # A pre-LN layer's norm feeds its block only: gone with the block. A post-LN
        # layer's norm sits on the residual path and always stays.
        if layer.attn or not self.pre_ln:
            self.self_attn_layer_norm = nn.LayerNorm(dim)
        if layer.ffn:
            self.fc1 = linear(dim, layer.ffn_dim)
            self.fc2 = linear(layer.ffn_dim, dim)
        if layer.ffn or not self.pre_ln:
            self.final_layer_norm = nn.LayerNorm(dim)
        self.gate_ffn = self.gate_int = None

    def feed_forward(self, x):
        if self.layer.ffn_dim == 0:  # no unit left: the block's output is its bias
            y = self.fc2.bias.expand_as(x)
        else:
            h = F.gelu(self.fc1(x))
            if self.gate_int is not None:
                h = h * self.gate_int()
            y = self.fc2(h)
        return y * self.gate_ffn() if self.gate_ffn is not None else y

    def forward(self, x, padding_mask=None, position_bias=None):
        """x (B, T, D) -> (B, T, D), and the shared position bias."""
        if self.pre_ln:
            if self.layer.attn:
                a, position_bias = self.self_attn(self.self_attn_layer_norm(x), padding_mask, position_bias)
                x = x + a
            else:
                _, position_bias = self.self_attn(x, padding_mask, position_bias)
            if self.layer.ffn:
                x = x + self.feed_forward(self.final_layer_norm(x))
            return x, position_bias
        a, position_bias = self.self_attn(x, padding_mask, position_bias)
        x = self.self_attn_layer_norm(x + a if a is not None else x)
        if self.layer.ffn:
            x = x + self.feed_forward(x)
        return self.final_layer_norm(x), position_bias


def layer_drop_probs(p: float, num_layers: int, schedule: str = "constant") -> list[float]:
    """Stochastic depth: each layer's probability of being skipped in a training step.

    "constant": p for every layer; "linear": rising with depth, p * (l + 1) / L for
    layer l (0-based), so the last layer is skipped with probability p (Huang et
    al. 2016, "Deep Networks with Stochastic Depth", linear decay rule).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"layer_drop must lie in [0, 1), got {p}")
    if schedule == "constant":
        return [p] * num_layers
    if schedule == "linear":
        return [p * (i + 1) / num_layers for i in range(num_layers)]
    raise ValueError(f"layer_drop schedule must be 'constant' or 'linear', got {schedule!r}")


class Encoder(nn.Module):
    """Positional convolution, LayerNorm and the transformer layers."""

    def __init__(self, arch: WavLMArch):
        super().__init__()
        self.pre_ln = arch.layer_norm_first
        self.pos_conv = PositionalConv(arch)
        self.layer_norm = nn.LayerNorm(arch.embed_dim)
        self.layers = nn.ModuleList(EncoderLayer(arch, layer, i) for i, layer in enumerate(arch.layers))
        self.layer_drop: list[float] | None = None  # stochastic depth, training mode only (layer_drop_probs)

    def forward(self, x, padding_mask=None):
        """x (B, T, D) -> hidden states: the input of every layer, then the output."""
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x)
        if not self.pre_ln:
            x = self.layer_norm(x)
        states, position_bias = [], None
        key_mask = None if padding_mask is None else additive_padding_mask(padding_mask, x.dtype)  # once, not per layer
        skip = self._skipped_layers()
        for i, layer in enumerate(self.layers):
            states.append(x)
            if skip[i]:  # the layer is an identity this step; the state count stays constant
                if position_bias is None and layer.self_attn.has_relative_bias:
                    position_bias = layer.self_attn.compute_bias(x.shape[1])
                continue
            x, position_bias = layer(x, key_mask, position_bias)
        if self.pre_ln:
            x = self.layer_norm(x)
        states.append(x)
        return states

    def _skipped_layers(self) -> list[bool]:
        """Which layers stochastic depth skips in this forward (drawn from torch's RNG)."""
        if not self.training or not self.layer_drop:
            return [False] * len(self.layers)
        draws = torch.rand(len(self.layers))
        return [bool(u < p) for u, p in zip(draws, self.layer_drop)]
