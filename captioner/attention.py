"""Attention over annotation vectors: the scoring function f_att and the softmax weights alpha.

Dimensions:
    B  batch (or batch*beam)    L  annotation vectors (grid cells)    D  encoder_dim
    n  hidden_dim (LSTM state)  A  attention_dim                      K  heads (multihead)

Xu et al. (2015), sec. 3.1.2: e_ti = f_att(a_i, h_{t-1}), alpha_ti = softmax_i(e_ti).
The paper's f_att is Bahdanau's additive MLP; the other scores are Luong et al. (2015)'s
dot and general, Vaswani et al. (2017)'s scaled dot product, and several such heads.

The annotation-side projections do not depend on t, so `keys()` computes them once per
image and every decoding step reuses them.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dim; positions where `mask` is False get exactly zero weight."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


class Attention(nn.Module):
    """h_{t-1} (B, n) and annotations (B, L, D) -> alphas (B, L) and expected context (B, D)."""

    def __init__(self, score: str, encoder_dim: int, hidden_dim: int, attention_dim: int, num_heads: int = 4):
        super().__init__()
        self.score = score
        self.encoder_dim = encoder_dim
        if score == "additive":
            self.key_proj = nn.Linear(encoder_dim, attention_dim)            # W_a a_i + b (precomputed)
            self.query_proj = nn.Linear(hidden_dim, attention_dim, bias=False)  # W_h h_{t-1}
            self.energy = nn.Linear(attention_dim, 1)                       # w^T tanh(.)
        elif score in ("dot", "scaled-dot"):
            if hidden_dim != encoder_dim:
                raise ValueError(f"score={score!r} compares h with a_i directly (no parameters), so "
                                 f"hidden_dim ({hidden_dim}) must equal encoder_dim ({encoder_dim})")
        elif score == "general":
            self.bilinear = nn.Linear(encoder_dim, hidden_dim, bias=False)   # h^T W a_i
        elif score == "multihead":
            if encoder_dim % num_heads:
                raise ValueError(f"encoder_dim ({encoder_dim}) must be divisible by num_heads ({num_heads})")
            self.num_heads = num_heads
            self.query_proj = nn.Linear(hidden_dim, encoder_dim)
            self.key_proj = nn.Linear(encoder_dim, encoder_dim)
            self.value_proj = nn.Linear(encoder_dim, encoder_dim)
            self.out_proj = nn.Linear(encoder_dim, encoder_dim)
        else:
            raise ValueError(f"unknown score {score!r}")

    def keys(self, annotations: torch.Tensor) -> torch.Tensor:
        """The per-image part of the score, computed once before decoding."""
        if self.score == "additive":
            return self.key_proj(annotations)                                 # (B, L, A)
        if self.score == "general":
            return self.bilinear(annotations)                                 # (B, L, n)
        if self.score == "multihead":
            return torch.cat([self.key_proj(annotations), self.value_proj(annotations)], dim=-1)  # (B, L, 2D)
        return annotations                                                    # (B, L, D)

    def forward(self, keys: torch.Tensor, annotations: torch.Tensor, h: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns alphas (B, L), summing to 1 over unmasked cells, and the expected context (B, D)."""
        if self.score == "multihead":
            return self._multihead(keys, h, mask)
        if self.score == "additive":
            scores = self.energy(torch.tanh(keys + self.query_proj(h).unsqueeze(1))).squeeze(-1)  # (B, L, 1) -> (B, L)
        else:
            scores = torch.bmm(keys, h.unsqueeze(-1)).squeeze(-1)            # (B, L, n) @ (B, n, 1) -> (B, L)
            if self.score == "scaled-dot":
                scores = scores / math.sqrt(self.encoder_dim)
        alphas = masked_softmax(scores, mask)
        context = torch.bmm(alphas.unsqueeze(1), annotations).squeeze(1)     # (B, 1, L) @ (B, L, D) -> (B, D)
        return alphas, context

    def _multihead(self, keys, h, mask):
        B, L, _ = keys.shape
        K, d = self.num_heads, self.encoder_dim // self.num_heads
        k, v = keys.split(self.encoder_dim, dim=-1)                          # (B, L, D) each
        k = k.view(B, L, K, d).transpose(1, 2)                               # (B, L, D) -> (B, K, L, d)
        v = v.view(B, L, K, d).transpose(1, 2)                               # (B, L, D) -> (B, K, L, d)
        q = self.query_proj(h).view(B, K, d, 1)                              # (B, D) -> (B, K, d, 1)
        scores = torch.matmul(k, q).squeeze(-1) / math.sqrt(d)               # (B, K, L)
        head_alphas = masked_softmax(scores, None if mask is None else mask.unsqueeze(1))
        heads = torch.matmul(head_alphas.unsqueeze(2), v).squeeze(2)         # (B, K, 1, L) @ (B, K, L, d) -> (B, K, d)
        context = self.out_proj(heads.reshape(B, self.encoder_dim))          # (B, K, d) -> (B, D)
        # One map per word for display and for the doubly stochastic term: the heads' mean (sums to 1).
        return head_alphas.mean(dim=1), context


def sinusoidal_2d(grid: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """2-D sinusoidal positional encoding (Vaswani et al. 2017, per axis): (L, dim), row-major cells.

    Half the channels encode the row, half the column. Added to annotation vectors so that
    the context vector tells the LSTM *where* it looked, which spatial words need.
    """
    if dim % 4:
        raise ValueError(f"positional encoding needs a dimension divisible by 4, got {dim}")
    quarter = dim // 4
    freqs = torch.exp(torch.arange(quarter, dtype=torch.float32) * (-math.log(10000.0) / quarter))
    pos = torch.arange(grid, dtype=torch.float32)
    angles = pos[:, None] * freqs[None, :]                                   # (G, dim/4)
    axis = torch.cat([angles.sin(), angles.cos()], dim=1)                    # (G, dim/2)
    rows = axis[:, None, :].expand(grid, grid, dim // 2)                     # (G, G, dim/2)
    cols = axis[None, :, :].expand(grid, grid, dim // 2)                     # (G, G, dim/2)
    pe = torch.cat([rows, cols], dim=-1).reshape(grid * grid, dim)           # (G, G, dim) -> (L, dim)
    return pe.to(device=device, dtype=dtype)


def entropy(alphas: torch.Tensor) -> torch.Tensor:
    """Entropy of each attention distribution over the last dim (0 log 0 = 0)."""
    return -(alphas * torch.log(alphas.clamp_min(1e-12))).sum(-1)


__all__ = ["Attention", "masked_softmax", "sinusoidal_2d", "entropy"]
