"""LSTM decoder with attention (Xu et al. 2015, sec. 3.1.2, 4.2, 5.2).

Dimensions:
    B  batch (or batch*beam)   T  decoding steps   L  annotation vectors   D  encoder_dim
    m  embed_dim               n  hidden_dim       V  vocabulary size

One step t, given the previous word y_{t-1} and state (h_{t-1}, c_{t-1}):
    alpha_t   = softmax(f_att(a, h_{t-1}))                       eq. (4)-(5)
    beta_t    = sigmoid(f_beta(h_{t-1}))          a scalar        sec. 4.2.1
    z_t       = beta_t * sum_i alpha_ti a_i                       eq. (6), sec. 4.2.1
    h_t, c_t  = LSTM([E y_{t-1}; z_t], (h_{t-1}, c_{t-1}))        eq. (1)-(3)
    p(y_t)   ~ exp(L_o(E y_{t-1} + L_h h_t + L_z z_t))           eq. (7), the deep output layer
with h_0 = f_init,h(mean_i a_i), c_0 = f_init,c(mean_i a_i) (sec. 3.1.2) and dropout on the
deep output's input (sec. 5.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import Attention, sinusoidal_2d
from .config import ModelConfig


@dataclass
class DecoderState:
    """What one decoding step needs. `annotations` and `keys` are fixed per image; h, c change."""

    h: torch.Tensor            # (B, n)
    c: torch.Tensor            # (B, n)
    annotations: torch.Tensor  # (B, L, D), position-encoded if configured
    keys: torch.Tensor         # (B, L, *) the attention's precomputed annotation projection

    def index_select(self, index: torch.Tensor) -> "DecoderState":
        """Rows `index` of every tensor (beam expansion and reordering)."""
        return DecoderState(self.h.index_select(0, index), self.c.index_select(0, index),
                            self.annotations.index_select(0, index), self.keys.index_select(0, index))

    def reorder_within_image(self, index: torch.Tensor) -> "DecoderState":
        """Beam reordering: a beam only ever inherits from a beam of the same image, so the
        per-image tensors stay as they are and only the recurrent state moves."""
        return DecoderState(self.h.index_select(0, index), self.c.index_select(0, index),
                            self.annotations, self.keys)


@dataclass
class StepOutput:
    logits: torch.Tensor       # (B, V)
    alphas: torch.Tensor       # (B, L) attention weights used for this word
    beta: torch.Tensor         # (B,) gating scalar
    context: torch.Tensor      # (B, D) z_t, gated


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        self.config = c
        self.embedding = nn.Embedding(c.vocab_size, c.embed_dim)                      # E
        self.init_h = nn.Sequential(nn.Linear(c.encoder_dim, c.hidden_dim), nn.Tanh())  # f_init,h
        self.init_c = nn.Sequential(nn.Linear(c.encoder_dim, c.hidden_dim), nn.Tanh())  # f_init,c
        self.attention = Attention(c.score, c.encoder_dim, c.hidden_dim, c.attention_dim, c.num_heads)
        self.f_beta = nn.Linear(c.hidden_dim, 1) if c.gate else None                  # scalar gate, sec. 4.2.1
        self.lstm = nn.LSTMCell(c.embed_dim + c.encoder_dim, c.hidden_dim)
        self.L_h = nn.Linear(c.hidden_dim, c.embed_dim)
        self.L_z = nn.Linear(c.encoder_dim, c.embed_dim, bias=False)
        self.dropout = nn.Dropout(c.dropout)
        self.L_o = nn.Linear(c.embed_dim, c.vocab_size)
        if c.positional == "sine":
            self.register_buffer("position", sinusoidal_2d(c.grid_size, c.encoder_dim), persistent=False)
        else:
            self.position = None

    # -- state ---------------------------------------------------------------------------------
    def init_state(self, annotations: torch.Tensor) -> DecoderState:
        """annotations (B, L, D) from the encoder -> the state before the first word."""
        if self.position is not None:
            if self.position.shape[0] != annotations.shape[1]:
                raise ValueError(f"positional encoding is for {self.position.shape[0]} cells, "
                                 f"got {annotations.shape[1]} annotation vectors")
            annotations = annotations + self.position.to(annotations.dtype)        # (B, L, D) + (L, D)
        mean = annotations.mean(dim=1)                                              # (B, L, D) -> (B, D)
        return DecoderState(self.init_h(mean), self.init_c(mean), annotations,
                            self.attention.keys(annotations))

    # -- one step ------------------------------------------------------------------------------
    def attend(self, state: DecoderState, mask: torch.Tensor | None = None):
        """alphas (B, L) and the ungated context (B, D) that the LSTM will read at this step."""
        return self.attention(state.keys, state.annotations, state.h, mask)

    def gate(self, h: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """beta = sigmoid(f_beta(h_{t-1})), one scalar per sample, and z = beta * context."""
        if self.f_beta is None:
            beta = context.new_ones(context.shape[0])
        else:
            beta = torch.sigmoid(self.f_beta(h)).squeeze(-1)                       # (B, 1) -> (B,)
        return beta, context * beta.unsqueeze(-1)

    def advance(self, state: DecoderState, embedded: torch.Tensor, mask: torch.Tensor | None = None):
        """Attention, gate and LSTM for one step; returns (alphas, beta, z, new state)."""
        alphas, context = self.attend(state, mask)
        beta, z = self.gate(state.h, context)
        h, c = self.lstm(torch.cat([embedded, z], dim=-1), (state.h, state.c))
        return alphas, beta, z, DecoderState(h, c, state.annotations, state.keys)

    def output(self, embedded: torch.Tensor, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The deep output layer, eq. (7): logits = L_o(E y_{t-1} + L_h h_t + L_z z_t)."""
        return self.L_o(self.dropout(embedded + self.L_h(h) + self.L_z(z)))

    def step(self, tokens: torch.Tensor, state: DecoderState, mask: torch.Tensor | None = None):
        """Previous words (B,) -> StepOutput for the next word and the new state."""
        embedded = self.embedding(tokens)                                           # (B, m)
        alphas, beta, z, state = self.advance(state, embedded, mask)
        return StepOutput(self.output(embedded, state.h, z), alphas, beta, z), state

    # -- teacher forcing -----------------------------------------------------------------------
    def forward(self, annotations: torch.Tensor, inputs: torch.Tensor, mask: torch.Tensor | None = None):
        """Teacher-forced decoding.

        annotations (B, L, D); inputs (B, T): <start> w1 .. w_{T-1} (the targets shifted right).
        Returns logits (B, T, V), alphas (B, T, L), betas (B, T). Rows stay in input order.
        """
        state = self.init_state(annotations)
        embedded = self.embedding(inputs)                                           # (B, T, m)
        hs, zs, alphas, betas = [], [], [], []
        for t in range(inputs.shape[1]):
            a, b, z, state = self.advance(state, embedded[:, t], mask)
            hs.append(state.h)
            zs.append(z)
            alphas.append(a)
            betas.append(b)
        # The output layer has no recurrence: apply it to all steps at once.
        logits = self.output(embedded, torch.stack(hs, 1), torch.stack(zs, 1))       # (B, T, V)
        return logits, torch.stack(alphas, 1), torch.stack(betas, 1)
