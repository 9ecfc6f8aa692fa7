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
from .attention import SelfAttention, additive_padding_mask, frozen, linear


def _group_norm(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """GroupNorm in at least float32 (fairseq's Fp32GroupNorm for bf16/fp16, float64 kept),
    weights cast alike, result in x's dtype: a float32 input with a bf16 or float64 model
    was torch's "mixed dtype (CPU)" error."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    weight, bias = (None if t is None else t.to(dtype) for t in (norm.weight, norm.bias))
    return F.group_norm(x.to(dtype), norm.num_groups, weight, bias, norm.eps).to(x.dtype)


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
        if self._normalised_by_stats(x):
            x = self._conv_norm_from_stats(x)
        else:
            x = self._conv_norm(x)
        x = F.gelu(x)
        if self.gate_conv is not None:
            x = x * self.gate_conv()[None, :, None]
        return x

    def _conv_norm(self, x):
        x = getattr(self, "0")(x)
        if self.has_norm:
            norm = getattr(self, "2")
            x = _group_norm(norm, x) if isinstance(norm, nn.GroupNorm) else norm(x)
        return x

    def _normalised_by_stats(self, x) -> bool:
        """The first layer of WavLM Base's CNN (one input channel, a GroupNorm per channel), at
        inference, in any floating dtype outside autocast: its conv and norm become one matmul
        (`_conv_norm_from_stats`)."""
        conv, norm = getattr(self, "0"), getattr(self, "2", None)
        return (
            conv.in_channels == 1 and isinstance(norm, nn.GroupNorm) and norm.num_groups == conv.out_channels
            and norm.affine and x.is_floating_point() and not torch.is_autocast_enabled(x.device.type)
            and frozen(*self.parameters())
        )

    def normalised_frames(self, x):
        """GroupNorm(conv(x)) of a one-channel conv as a matmul: (weight (B, C, K), shift (B, C, 1),
        frames (B, T', K)), the output being weight @ frames^T + shift.

        The conv is linear in each frame f (the `kernel` samples it reads): y_c = w_c.f + b_c,
        so over the frames of an utterance mean(y_c) = w_c.mean(f) + b_c and
        var(y_c) = w_c^T cov(f) w_c (population variance, as GroupNorm). With
        s_c = gamma_c / sqrt(var(y_c) + eps) the normalised output is (s_c w_c).f
        + beta_c - s_c w_c.mean(f): one (C, K) x (K, T') matmul per utterance instead of
        a conv and a norm over the (C, T') output, which ran at 3 GMACs/s and took
        90 ms for 10 s of audio on one CPU thread (docs/performance.md section 6).
        Statistics in float64; the values equal the conv + GroupNorm's to the rounding of
        x's dtype (weight and shift are returned in it).
        """
        conv, norm = getattr(self, "0"), getattr(self, "2")
        frames = x[:, 0].unfold(1, conv.kernel_size[0], conv.stride[0])  # (B, T', K)
        f64 = frames.double()
        mean = f64.mean(1)  # (B, K)
        cov = f64.transpose(1, 2) @ f64 / f64.shape[1] - mean[:, :, None] * mean[:, None, :]  # (B, K, K)
        w = conv.weight[:, 0].double()  # (C, K)
        var = torch.einsum("ck,bkl,cl->bc", w, cov, w)  # (B, C)
        scale = norm.weight.double() / torch.sqrt(var + norm.eps)  # (B, C)
        shift = norm.bias.double() - scale * (mean @ w.T)  # the conv's bias cancels in y - mean(y)
        return (scale[:, :, None] * w).to(x.dtype), shift.to(x.dtype)[:, :, None], frames

    def _conv_norm_from_stats(self, x):
        weight, shift, frames = self.normalised_frames(x)
        return torch.baddbmm(shift, weight, frames.transpose(1, 2))

    def gate_values(self):
        return None if self.gate_conv is None else self.gate_conv()[None, :, None]


CHUNKED_LAYERS = 3  # the CNN's first layers that FeatureExtractor._front runs a slice of time at a time
CHUNK_FRAMES = 1024  # output frames of the last of them per slice


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
        blocks = list(self.conv_layers)
        m = self._chunked_layers(x)
        if m:
            x, blocks = self._front(x, m), blocks[m:]
        for block in blocks:
            x = block(x)
        return x

    def _chunked_layers(self, x) -> int:
        """How many of the first layers `_front` runs (0: none): the first and those after it
        without a norm, at most CHUNKED_LAYERS, when each still has an output frame."""
        blocks = self.conv_layers
        if len(blocks) < 2 or not blocks[0]._normalised_by_stats(x):
            return 0
        m = 1
        while m < min(CHUNKED_LAYERS, len(blocks)) and not blocks[m].has_norm and frozen(*blocks[m].parameters()):
            m += 1
        frames = x.shape[-1]
        for block in blocks[:m]:
            conv = getattr(block, "0")
            frames = (frames - conv.kernel_size[0]) // conv.stride[0] + 1
        return m if m > 1 and frames >= 1 else 0

    def _front(self, x, m: int):
        """The first m conv blocks at inference, a slice of time at a time (CHUNK_FRAMES).

        Neither the first layer's output (512 x 32,000 floats, 65 MB, for 10 s) nor the
        second's is ever held whole: each slice of the m-th layer's output is made from
        the frames it needs (`ConvBlock.normalised_frames` for the first layer), while
        they are in cache. Tensors that large are also allocated fresh by the C library
        on every forward (above its mmap threshold) and paid for in page faults: 23 ms
        per 65 MB on one thread (docs/performance.md section 6). Neighbouring slices
        overlap by kernel - stride frames per layer (recomputed); the values are those
        of the m blocks.
        """
        weight, shift, frames = self.conv_layers[0].normalised_frames(x)
        convs = [getattr(b, "0") for b in self.conv_layers[1:m]]
        gates = [b.gate_values() for b in self.conv_layers[:m]]
        t_out = frames.shape[1]
        for conv in convs:
            t_out = (t_out - conv.kernel_size[0]) // conv.stride[0] + 1
        out = x.new_empty(x.shape[0], convs[-1].out_channels, t_out)
        for a in range(0, t_out, CHUNK_FRAMES):
            lo, hi = a, min(t_out, a + CHUNK_FRAMES)
            for conv in reversed(convs):  # the input frames each output range needs
                lo, hi = lo * conv.stride[0], (hi - 1) * conv.stride[0] + conv.kernel_size[0]
            h = F.gelu(torch.baddbmm(shift, weight, frames[:, lo:hi].transpose(1, 2)))
            h = h if gates[0] is None else h * gates[0]
            for conv, gate in zip(convs, gates[1:]):
                h = F.gelu(conv(h))
                h = h if gate is None else h * gate
            out[:, :, a : min(t_out, a + CHUNK_FRAMES)] = h
        return out


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

    def weight(self) -> torch.Tensor:
        """g * v / ||v|| (torch's own weight-norm kernel, as torch.nn.utils.weight_norm runs it).

        Computed in every forward, never kept: 2-3 ms for Base on one CPU thread, and a
        kept copy could go stale under `.data` writes or fused optimizer steps, which
        torch does not count (docs/performance.md section 6.6).
        """
        return torch._weight_norm(self.weight_v, self.weight_g, 2)

    def forward(self, x):  # (B, D, T) -> (B, D, T + 1 - kernel % 2)
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, groups=self.groups)


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
        self.dropout = self.activation_dropout = 0.0  # train mode only (model/dropout.py)

    def feed_forward(self, x):
        if self.layer.ffn_dim == 0:  # no unit left: the block's output is its bias
            y = self.fc2.bias.expand_as(x)
        else:
            h = F.gelu(self.fc1(x))
            if self.gate_int is not None:
                h = h * self.gate_int()
            y = self.fc2(self._drop(h, self.activation_dropout))
        return self._drop(y * self.gate_ffn() if self.gate_ffn is not None else y, self.dropout)

    def _drop(self, x, p: float):
        """s3prl's dropout1/2/3 of a layer: in train mode only (model/dropout.py)."""
        return F.dropout(x, p, training=True) if self.training and p > 0 else x

    def forward(self, x, padding_mask=None, position_bias=None):
        """x (B, T, D) -> (B, T, D), and the shared position bias."""
        if self.pre_ln:
            if self.layer.attn:
                a, position_bias = self.self_attn(self.self_attn_layer_norm(x), padding_mask, position_bias)
                x = x + self._drop(a, self.dropout)
            else:
                _, position_bias = self.self_attn(x, padding_mask, position_bias)
            if self.layer.ffn:
                x = x + self.feed_forward(self.final_layer_norm(x))
            return x, position_bias
        a, position_bias = self.self_attn(x, padding_mask, position_bias)
        x = self.self_attn_layer_norm(x + self._drop(a, self.dropout) if a is not None else x)
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
        self.dropout = 0.0  # on the layers' input, training mode only (model/dropout.py)

    def forward(self, x, padding_mask=None):
        """x (B, T, D) -> hidden states: the input of every layer, then the output."""
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x)
        if not self.pre_ln:
            x = self.layer_norm(x)
        if self.training and self.dropout > 0:
            x = F.dropout(x, self.dropout, training=True)
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
