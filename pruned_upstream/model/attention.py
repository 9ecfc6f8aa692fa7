"""WavLM's gated relative-position self-attention, with per-head query/key and value sizes.

    f_ATT^i(X) = softmax( (X W_Q^i) diag(z_qk^i) (X W_K^i)^T / sqrt(64) + B_i ) (X W_V^i) diag(z_vo^i)
    f_MHA(X)   = z_MHA * concat_i f_ATT^i(X) W_O                      (paper Eq. 3)

B_i is WavLM's relative position bias of head i (320 buckets, computed once from
the embedding that lives in layer 0 and shared by every layer), scaled by a gate
each layer computes from its own attention input, cut into the ORIGINAL 64-wide
head slices. The softmax scale stays 1/sqrt(original head size) whatever survives.

Heads keep their original index. A pruned layer's heads may have different qk and
vo sizes (0 included); they are padded to the layer's widest head with zeros, which
adds nothing to q.k and nothing to the output, so the result is exact
(docs/performance.md has the measurements behind this layout).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import LayerArch, WavLMArch


def linear(n_in: int, n_out: int) -> nn.Linear:
    """nn.Linear; a pruned-away size of 0 is legal (its output is the bias, or nothing), and
    torch's initialiser warns that initialising a zero-element tensor does nothing: it does not matter."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op", UserWarning)
        return nn.Linear(n_in, n_out)


def relative_position_bucket(t: int, num_buckets: int, max_distance: int, device=None) -> torch.Tensor:
    """Bidirectional log-spaced buckets of key - query offsets (T5 / WavLM), (T, T) long.

    Half of the buckets for each direction; within a half, offsets below a quarter
    of the buckets are exact, larger ones share buckets spaced logarithmically up to
    `max_distance`, beyond which they all fall in the last bucket.
    """
    pos = torch.arange(t, device=device)
    offset = pos[None, :] - pos[:, None]  # (T, T): key - query
    half = num_buckets // 2
    bucket = (offset > 0).long() * half
    distance = offset.abs()
    exact = half // 2
    scaled = torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
    far = (exact + (scaled * (half - exact)).long()).clamp(max=half - 1)
    return bucket + torch.where(distance < exact, distance, far)


def additive_padding_mask(padding_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) True at padded frames -> (B, 1, 1, T) additive key mask: -inf at padding, 0 elsewhere."""
    pad = torch.zeros(padding_mask.shape, dtype=dtype, device=padding_mask.device)
    return pad.masked_fill(padding_mask, float("-inf"))[:, None, None, :]


def frozen(*tensors: torch.Tensor) -> bool:
    """True when no gradient can flow into `tensors` here (evaluation, a frozen teacher, inference):
    the layers may then run their inference path (the same values, other kernels).

    Under torch.compile always False: the compiler gets the layers as written.
    Nothing derived from the weights is kept from one forward to the next (no
    cache, so none that can be stale: docs/performance.md section 6.6).
    """
    if torch.compiler.is_compiling():
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _pad_index(sizes: list[int], width: int) -> torch.Tensor:
    """Positions of the compact per-head columns inside a (heads * width) padded layout."""
    idx = [h * width + d for h, size in enumerate(sizes) for d in range(size)]
    return torch.tensor(idx, dtype=torch.long)


class SelfAttention(nn.Module):
    """Multi-head self-attention of one WavLM layer (names follow the original release)."""

    def __init__(self, arch: WavLMArch, layer: LayerArch, has_relative_bias: bool):
        super().__init__()
        self.arch, self.layer = arch, layer
        self.head_dim = arch.head_dim
        self.scaling = arch.head_dim**-0.5
        self.has_relative_bias = has_relative_bias and arch.relative_position_embedding
        if self.has_relative_bias:
            self.relative_attention_bias = nn.Embedding(arch.num_buckets, arch.num_heads)
        # optional gates, attached by make_prunable
        self.gate_mha = self.gate_qk = self.gate_vo = None
        self.attention_dropout = 0.0  # on the attention probabilities, train mode only (model/dropout.py)
        if not layer.attn:
            return
        dim, heads = arch.embed_dim, layer.heads
        self.q_proj = linear(dim, layer.qk_total)
        self.k_proj = linear(dim, layer.qk_total)
        self.v_proj = linear(dim, layer.vo_total)
        self.out_proj = linear(layer.vo_total, dim)
        if arch.gru_rel_pos and heads:  # created whenever the checkpoint has it (as s3prl)
            self.grep_linear = nn.Linear(arch.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, len(heads), 1, 1))
        self.qk_width = max((h.qk for h in heads), default=0)
        self.vo_width = max((h.vo for h in heads), default=0)
        self.all_heads = [h.index for h in heads] == list(range(arch.num_heads))
        self.register_buffer("head_index", torch.tensor([h.index for h in heads], dtype=torch.long), persistent=False)
        self.qk_uniform = all(h.qk == self.qk_width for h in heads)
        self.vo_uniform = all(h.vo == self.vo_width for h in heads)
        # q, k and v share one padded width: SDPA's fused CPU kernel needs equal q and v
        # sizes and otherwise falls back to its 3x slower math path (docs/performance.md)
        self.width = max(self.qk_width, self.vo_width)
        self.pad_qk = not (self.qk_uniform and self.qk_width == self.width)
        self.pad_vo = not (self.vo_uniform and self.vo_width == self.width)
        self.register_buffer("qk_index", _pad_index([h.qk for h in heads], self.width), persistent=False)
        self.register_buffer("vo_index", _pad_index([h.vo for h in heads], self.width), persistent=False)

    # ---- position bias -----------------------------------------------------------
    def compute_bias(self, t: int) -> torch.Tensor:
        """The ungated relative position bias of every ORIGINAL head, (heads, T, T)."""
        weight = self.relative_attention_bias.weight
        bucket = relative_position_bucket(t, self.arch.num_buckets, self.arch.max_distance, weight.device)
        # contiguous once here, or SDPA copies the strided mask in every layer (docs/performance.md)
        return F.embedding(bucket, weight).permute(2, 0, 1).contiguous()  # (T, T, H) -> (H, T, T)

    def rel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """WavLM's gate of the position bias from the attention input x (B, T, D), (B, H, T, 1)."""
        b, t, _ = x.shape
        slices = x.view(b, t, self.arch.num_heads, self.head_dim)  # (B, T, H_orig, 64)
        if not self.all_heads:
            slices = slices.index_select(2, self.head_index)  # (B, T, H, 64)
        g = self.grep_linear(slices).view(b, t, -1, 2, 4).sum(-1)  # (B, T, H, 2)
        gate_a, gate_b = torch.sigmoid(g).permute(0, 2, 1, 3).chunk(2, dim=-1)  # (B, H, T, 1) each
        return (gate_a * (gate_b * self.grep_a - 1.0) + 2.0).contiguous()  # so that gate * bias is contiguous

    # ---- forward -----------------------------------------------------------------
    def forward(self, x, padding_mask=None, position_bias=None):
        """x (B, T, D); padding_mask (B, T) True at padded frames; position_bias (H_orig, T, T).

        Returns (output (B, T, D) or None when the block is gone, position_bias).
        """
        if self.has_relative_bias and position_bias is None:
            position_bias = self.compute_bias(x.shape[1])
        if not self.layer.attn:
            return None, position_bias
        z_mha = self.gate_mha() if self.gate_mha is not None else None
        if self.layer.heads and self.gate_qk is None and self.gate_vo is None and frozen(*self._projections()):
            out = self._inference_output(x, padding_mask, position_bias)  # the same values, laid out once
        elif self.layer.heads:
            out = self.out_proj(self._heads_output(x, padding_mask, position_bias))
        else:  # a block with no head left: its output is its bias
            out = self.out_proj.bias.expand_as(x)
        return (out * z_mha if z_mha is not None else out), position_bias

    def _heads_output(self, x, padding_mask, position_bias):
        b, t, _ = x.shape
        h = len(self.layer.heads)
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.gate_qk is not None:
            q = q * self.gate_qk().reshape(-1)  # diag(z_qk) between Q and K^T
        if self.gate_vo is not None:
            v = v * self.gate_vo().reshape(-1)
        v = self._split(v, self.vo_index, self.width, not self.pad_vo, h)  # (B, H, T, width)
        bias = self._bias(x, padding_mask, position_bias)  # (B|1, H|1, T, T) or None
        if self.qk_width > 0:
            q = self._split(q, self.qk_index, self.width, not self.pad_qk, h)  # (B, H, T, width)
            k = self._split(k, self.qk_index, self.width, not self.pad_qk, h)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scaling, dropout_p=self._p())
        else:  # no query/key dims left in any head: softmax of the bias alone
            scores = bias if bias is not None else x.new_zeros(1, 1, t, t)
            o = self._drop(torch.softmax(scores.expand(b, h, t, t), dim=-1)) @ v
        o = o.transpose(1, 2).reshape(b, t, h * self.width)  # (B, T, H * width)
        return o.index_select(2, self.vo_index) if self.pad_vo else o

    # ---- inference: one projection for q, k and v (docs/performance.md section 6.1) --
    def _projections(self) -> tuple:
        return tuple(p for m in (self.q_proj, self.k_proj, self.v_proj, self.out_proj) for p in (m.weight, m.bias))

    def _fused_weights(self):
        """q, k (with qk dims) and v stacked into one compact matrix, and where each of its
        output columns goes in the padded (B, T, [3|1] * H * width) layout SDPA takes."""
        n = len(self.layer.heads) * self.width
        parts = [(self.q_proj, self.qk_index), (self.k_proj, self.qk_index)] if self.qk_width > 0 else []
        parts.append((self.v_proj, self.vo_index))
        weight = torch.cat([proj.weight for proj, _ in parts])
        bias = torch.cat([proj.bias for proj, _ in parts])
        index = torch.cat([index + i * n for i, (_, index) in enumerate(parts)])
        uniform = len(index) == len(parts) * n  # no padding: the columns are already in place
        return weight, bias, (None if uniform else index), len(parts)

    def _inference_output(self, x, padding_mask, position_bias):
        """out_proj(_heads_output(...)) without gates or gradients: uneven heads get one projection
        for q, k and v and one scatter into the padded layout (not three); heads already in
        SDPA's layout (every dense layer) their own projections, nothing stacked. The stacked
        weights are made in each forward, never kept (docs/performance.md section 6.6)."""
        b, t, _ = x.shape
        h, width = len(self.layer.heads), self.width
        if self.pad_vo or (self.qk_width > 0 and self.pad_qk):
            weight, bias_in, index, parts = self._fused_weights()
            y = F.linear(x, weight, bias_in)
            padded = y.new_zeros(b, t, parts * h * width)
            padded[:, :, index] = y
            y = padded.view(b, t, parts, h, width).permute(2, 0, 3, 1, 4)  # (1|3, B, H, T, width)
        else:  # stacking Base's q/k/v weights would copy 7 MB per layer and forward
            projs = (self.q_proj, self.k_proj, self.v_proj) if self.qk_width > 0 else (self.v_proj,)
            y = [proj(x).view(b, t, h, width).transpose(1, 2) for proj in projs]  # (B, H, T, width) each
        v = y[-1]
        bias = self._bias(x, padding_mask, position_bias)
        if self.qk_width > 0:
            o = F.scaled_dot_product_attention(y[0], y[1], v, attn_mask=bias, scale=self.scaling, dropout_p=self._p())
        else:
            scores = bias if bias is not None else x.new_zeros(1, 1, t, t)
            o = self._drop(torch.softmax(scores.expand(b, h, t, t), dim=-1)) @ v
        o = o.transpose(1, 2).reshape(b, t, h * width)
        return self.out_proj(o.index_select(2, self.vo_index) if self.pad_vo else o)

    def _p(self) -> float:
        """The attention-probability dropout SDPA applies now: s3prl's attention_dropout, train mode only."""
        return self.attention_dropout if self.training else 0.0

    def _drop(self, probs):
        p = self._p()
        return F.dropout(probs, p, training=True) if p > 0 else probs

    @staticmethod
    def _split(y, index, width, uniform, heads):
        """(B, T, sum of head sizes) -> (B, H, T, width), zero-padding narrower heads."""
        b, t, _ = y.shape
        if not uniform:
            padded = y.new_zeros(b, t, heads * width)
            padded[:, :, index] = y
            y = padded
        return y.view(b, t, heads, width).transpose(1, 2)

    def _bias(self, x, padding_mask, position_bias):
        bias = None
        if position_bias is not None:
            pb = position_bias if self.all_heads else position_bias.index_select(0, self.head_index)
            if self.arch.gru_rel_pos and self.layer.heads:
                gate = self.rel_gate(x)
                if not self.all_heads and gate.shape[0] == 1 and not torch.is_grad_enabled():
                    bias = pb.mul_(gate[0]).unsqueeze(0)  # pb is this layer's own copy: no second (H, T, T) tensor
                else:
                    bias = gate * pb  # (B, H, T, 1) * (H, T, T) -> (B, H, T, T)
            else:
                bias = pb.unsqueeze(0)
        if padding_mask is not None:  # a (B, T) bool mask, or the encoder's additive one built once
            pad = additive_padding_mask(padding_mask, x.dtype) if padding_mask.dtype == torch.bool else padding_mask
            bias = pad if bias is None else bias + pad
        return bias
