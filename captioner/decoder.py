"""LSTM decoder with attention (Xu et al. 2015, sec. 3.1.2, 4.1, 4.2, 5.2).

Dimensions:
    B  batch (or batch*beam)   T  decoding steps   L  annotation vectors   D  encoder_dim
    m  embed_dim               n  hidden_dim       V  vocabulary size      K  attention heads

One step t, given the previous word y_{t-1} and state (h_{t-1}, c_{t-1}):
    alpha_t   = softmax(f_att(a, h_{t-1}))                       eq. (4)-(5)
    beta_t    = sigmoid(f_beta(h_{t-1}))          a scalar        sec. 4.2.1
    z_t       = beta_t * sum_i alpha_ti a_i                       eq. (6), sec. 4.2.1
    h_t, c_t  = LSTM([E y_{t-1}; z_t], (h_{t-1}, c_{t-1}))        eq. (1)-(3)
    p(y_t)   ~ exp(L_o(tanh(E y_{t-1} + L_h h_t + L_z z_t)))     eq. (7), the deep output layer
with h_0 = f_init,h(mean_i a_i), c_0 = f_init,c(mean_i a_i) (sec. 3.1.2) and dropout on the
deep output's input (sec. 5.2). Eq. (7) prints no non-linearity, but without one L_o after
(E, L_h, L_z) is a single linear map; the authors' code (capgen.py) applies tanh to the sum,
and so do we (ModelConfig.deep_output = "tanh"; "linear" keeps older checkpoints as trained).

Initialisation follows the authors' code too: weights N(0, 0.01^2), square matrices and the
LSTM's four recurrent blocks orthogonal, biases zero (`Decoder.reset_parameters`; ModelConfig.init
"pytorch" keeps PyTorch's defaults, which the shapes demo measured better at its budget).

The mechanism (ModelConfig.attention) decides what the LSTM reads as sum_i alpha_ti a_i above:
    soft   the expected context phi = sum_i alpha_ti a_i                       sec. 4.2
    hard   the annotation a_{s_t} of one location s_t ~ Multinoulli(alpha_t)    sec. 4.1, eq. (8)
           ("sample", training); at test time the expected context ("expected", sec. 4.1's
           approximation) or the most likely location ("argmax"), ModelConfig.hard_test
    local  soft attention inside a Gaussian window around a predicted centre p_t (Luong et al.
           2015's local-p on the grid; `attention.LocalWindow`)
Hard attention's training objective (the REINFORCE estimator of eq. (12)) lives in losses.py;
it needs log p(s_t | a) and H[alpha_t] of every step, which `forward(..., return_trace=True)` gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, LocalWindow, entropy, sinusoidal_2d
from .config import ModelConfig

HARD_MODES = ("sample", "expected", "argmax")


@dataclass
class DecoderState:
    """What one decoding step needs. `annotations` and `keys` are fixed, one per image (B, ...);
    h and c change, one per row (N, n): N = B, or B*R when beam search decodes R beams per image
    (rows of one image consecutive), which then all read their image's annotations and keys."""

    h: torch.Tensor            # (N, n)
    c: torch.Tensor            # (N, n)
    annotations: torch.Tensor  # (B, L, D), position-encoded if configured
    keys: torch.Tensor         # (B, L, *) the attention's precomputed annotation projection

    def with_rows(self, index: torch.Tensor) -> DecoderState:
        """Recurrent state rows `index` (beam expansion and reordering; a row only ever takes the
        state of a row of the same image), the per-image tensors as they are."""
        return DecoderState(self.h.index_select(0, index), self.c.index_select(0, index),
                            self.annotations, self.keys)


@dataclass
class Attended:
    """One step's attention: what the LSTM reads, and what hard attention's objective needs."""

    alphas: torch.Tensor                        # (B, L) alpha_t (multihead: the heads' mean)
    context: torch.Tensor                       # (B, D) ungated: expected context, or a_{s_t} (hard)
    entropy: torch.Tensor                       # (B,) H[alpha_t] (multihead: summed over heads)
    location: torch.Tensor | None = None        # (B,) long, the cell shown: hard s_t (or argmax), local p_t's cell
    log_p_location: torch.Tensor | None = None  # (B,) log p(s_t | a), hard attention when sampling only
    centre: torch.Tensor | None = None          # (B, 2) local: the window centre p_t (row, col)


@dataclass
class AttentionTrace:
    """Per-step attention extras of a teacher-forced pass (`forward(..., return_trace=True)`)."""

    mode: str | None                            # hard: "sample" | "expected" | "argmax"; None otherwise
    entropies: torch.Tensor                     # (B, T) H[alpha_t]
    log_p_locations: torch.Tensor | None        # (B, T) log p(s_t | a) when sampling, else None
    locations: torch.Tensor | None              # (B, T) long cell shown per word (hard, local), else None
    centres: torch.Tensor | None                # (B, T, 2) local window centres, else None


@dataclass
class StepOutput:
    logits: torch.Tensor       # (B, V)
    alphas: torch.Tensor       # (B, L) attention weights used for this word
    beta: torch.Tensor         # (B,) gating scalar
    context: torch.Tensor      # (B, D) z_t, gated
    location: torch.Tensor | None = None  # (B,) long: hard, the location read (s_t or argmax); local, p_t's cell
    centre: torch.Tensor | None = None    # (B, 2) local: the window centre p_t (row, col)


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        self.config = c
        self.embedding = nn.Embedding(c.vocab_size, c.embed_dim)                      # E
        self.init_h = nn.Sequential(nn.Linear(c.encoder_dim, c.hidden_dim), nn.Tanh())  # f_init,h
        self.init_c = nn.Sequential(nn.Linear(c.encoder_dim, c.hidden_dim), nn.Tanh())  # f_init,c
        self.attention = Attention(c.score, c.encoder_dim, c.hidden_dim, c.attention_dim, c.num_heads)
        # Local attention only: predicts the window centre p_t (Luong's W_p, v_p).
        self.window = (LocalWindow(c.hidden_dim, c.attention_dim, c.grid_size, c.local_sigma)
                       if c.attention == "local" else None)
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
        if c.init == "authors":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The authors' initialisation (capgen.py's norm_weight / ortho_weight): every weight
        N(0, 0.01^2) except square matrices, which are orthogonal, as is each of the LSTM's four
        n x n recurrent blocks; biases zero. PyTorch's defaults differ most for the embedding
        (N(0, 1), 100 times larger), which enters the deep output's sum unscaled."""
        for module in self.modules():
            if isinstance(module, nn.LSTMCell):
                nn.init.normal_(module.weight_ih, std=0.01)
                for block in module.weight_hh.chunk(4, dim=0):                      # (4n, n) -> 4 x (n, n)
                    nn.init.orthogonal_(block)
                nn.init.zeros_(module.bias_ih)
                nn.init.zeros_(module.bias_hh)
            elif isinstance(module, (nn.Linear, nn.Embedding)):
                w = module.weight
                if w.dim() == 2 and w.shape[0] == w.shape[1] and not isinstance(module, nn.Embedding):
                    nn.init.orthogonal_(w)
                else:
                    nn.init.normal_(w, std=0.01)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    # -- state ---------------------------------------------------------------------------------
    def init_state(self, annotations: torch.Tensor) -> DecoderState:
        """annotations (B, L, D) from the encoder -> the state before the first word.

        With a positional encoding, the code of each cell is added to what attention *reads* (the
        context z_t, so the LSTM learns where it looked: spatial words need that), not to what it
        *scores*: the scores see content only, so the weights go to the cells that show the object
        rather than to a guess of where it is."""
        mean = annotations.mean(dim=1)                                              # (B, L, D) -> (B, D)
        values = annotations
        if self.position is not None:
            if self.position.shape[0] != annotations.shape[1]:
                raise ValueError(f"positional encoding is for {self.position.shape[0]} cells, "
                                 f"got {annotations.shape[1]} annotation vectors")
            values = annotations + self.position.to(annotations.dtype)             # (B, L, D) + (L, D)
        return DecoderState(self.init_h(mean), self.init_c(mean), values,
                            self.attention.keys(annotations, values))

    # -- one step ------------------------------------------------------------------------------
    def hard_mode(self, mode: str | None = None) -> str | None:
        """How hard attention reads in this pass: `mode` if given, else "sample" in training and
        ModelConfig.hard_test ("expected" or "argmax") in eval mode. None for soft and local."""
        if self.config.attention != "hard":
            return None
        if mode is None:
            return "sample" if self.training else self.config.hard_test
        if mode not in HARD_MODES:
            raise ValueError(f"hard attention mode must be one of {', '.join(HARD_MODES)}, got {mode!r}")
        return mode

    def glimpse(self, state: DecoderState, mask: torch.Tensor | None = None, mode: str | None = None) -> Attended:
        """alpha_t from h_{t-1}, and the context the LSTM reads at this step (see the module docstring)."""
        centre = bias = None
        if self.window is not None:                                                 # local-p
            centre = self.window.centre(state.h)                                    # p_t (B, 2)
            bias, mask = self.window.restrict(centre, mask)                         # (B, L), (B, L)
        weights = self.attention.distributions(state.keys, state.h, mask, bias)     # (B, K, L), eq. (4)-(5)
        alphas = weights.mean(dim=1)                                                # (B, K, L) -> (B, L)
        ent = entropy(weights).sum(dim=1)                                           # (B, K) -> (B,)
        mode = self.hard_mode(mode)
        if mode is None or mode == "expected":                                      # soft, local; hard "expected"
            context = self.attention.read(weights, state.keys, state.annotations)  # (B, D), phi of sec. 4.2
            location = None
            if mode == "expected":
                location = alphas.argmax(dim=-1)                                    # (B,) the most likely cell
            elif centre is not None:
                G = self.config.grid_size
                cell = centre.detach().floor().long().clamp_(0, G - 1)              # (B, 2) cell holding p_t
                location = cell[:, 0] * G + cell[:, 1]                              # (B, 2) -> (B,) row-major
            return Attended(alphas, context, ent, location, None, centre)
        B, K, L = weights.shape
        if mode == "sample":
            # s_t ~ Multinoulli(alpha_t), eq. (8); torch's global RNG, so exact resume replays it.
            picks = torch.multinomial(weights.detach().float().reshape(B * K, L), 1).view(B, K)  # (B*K, 1) -> (B, K)
        else:
            picks = weights.argmax(dim=-1)                                          # (B, K)
        one_hot = F.one_hot(picks, L).to(weights.dtype)                             # (B, K) -> (B, K, L)
        context = self.attention.read(one_hot, state.keys, state.annotations)      # (B, D) = a_{s_t}
        log_p = None
        if mode == "sample":
            chosen = weights.gather(-1, picks.unsqueeze(-1)).squeeze(-1)            # (B, K, 1) -> (B, K)
            log_p = torch.log(chosen.clamp_min(torch.finfo(chosen.dtype).tiny)).sum(dim=1)  # (B, K) -> (B,)
        # The cell shown per word: the sample (multihead: the cell most heads picked).
        location = picks[:, 0] if K == 1 else one_hot.sum(dim=1).argmax(dim=-1)    # (B,)
        return Attended(alphas, context, ent, location, log_p, centre)

    def attend(self, state: DecoderState, mask: torch.Tensor | None = None, mode: str | None = None):
        """alphas (B, L) and the ungated context (B, D) that the LSTM will read at this step."""
        attended = self.glimpse(state, mask, mode)
        return attended.alphas, attended.context

    def gate(self, h: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """beta = sigmoid(f_beta(h_{t-1})), one scalar per sample, and z = beta * context."""
        if self.f_beta is None:
            beta = context.new_ones(context.shape[0])
        else:
            beta = torch.sigmoid(self.f_beta(h)).squeeze(-1)                       # (B, 1) -> (B,)
        return beta, context * beta.unsqueeze(-1)

    def advance(self, state: DecoderState, embedded: torch.Tensor, mask: torch.Tensor | None = None,
                mode: str | None = None):
        """Attention, gate and LSTM for one step; returns (Attended, beta, z, new state)."""
        attended = self.glimpse(state, mask, mode)
        beta, z = self.gate(state.h, attended.context)
        h, c = self.lstm(torch.cat([embedded, z], dim=-1), (state.h, state.c))
        return attended, beta, z, DecoderState(h, c, state.annotations, state.keys)

    def output(self, embedded: torch.Tensor, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The deep output layer, eq. (7): logits = L_o(tanh(E y_{t-1} + L_h h_t + L_z z_t)).

        Dropout (sec. 5.2) goes where the authors' code puts it: on h_t before L_h, and on the sum
        before L_o. Dropping h_t keeps the word from resting on the LSTM's memory alone, so the
        context z_t, and with it the attention, has to carry what the image shows."""
        hidden = embedded + self.L_h(self.dropout(h)) + self.L_z(z)
        if self.config.deep_output == "tanh":
            hidden = torch.tanh(hidden)
        return self.L_o(self.dropout(hidden))

    def step(self, tokens: torch.Tensor, state: DecoderState, mask: torch.Tensor | None = None,
             hard_mode: str | None = None):
        """Previous words (B,) -> StepOutput for the next word and the new state."""
        embedded = self.embedding(tokens)                                           # (B, m)
        attended, beta, z, state = self.advance(state, embedded, mask, hard_mode)
        return StepOutput(self.output(embedded, state.h, z), attended.alphas, beta, z,
                          attended.location, attended.centre), state

    # -- teacher forcing -----------------------------------------------------------------------
    def forward(self, annotations: torch.Tensor, inputs: torch.Tensor, mask: torch.Tensor | None = None,
                hard_mode: str | None = None, return_trace: bool = False):
        """Teacher-forced decoding.

        annotations (B, L, D); inputs (B, T): <start> w1 .. w_{T-1} (the targets shifted right).
        Returns logits (B, T, V), alphas (B, T, L), betas (B, T). Rows stay in input order.
        `hard_mode` (hard attention): "sample" | "expected" | "argmax" for the whole pass (default:
        sample in training, ModelConfig.hard_test in eval). `return_trace`: also return an
        `AttentionTrace` (log p(s_t | a), H[alpha_t], ... per step) as a fourth element.
        """
        mode = self.hard_mode(hard_mode)
        state = self.init_state(annotations)
        embedded = self.embedding(inputs)                                           # (B, T, m)
        hs, zs, alphas, betas, steps = [], [], [], [], []
        for t in range(inputs.shape[1]):
            a, b, z, state = self.advance(state, embedded[:, t], mask, mode)
            hs.append(state.h)
            zs.append(z)
            alphas.append(a.alphas)
            betas.append(b)
            steps.append(a)
        # The output layer has no recurrence: apply it to all steps at once.
        logits = self.output(embedded, torch.stack(hs, 1), torch.stack(zs, 1))       # (B, T, V)
        if not return_trace:
            return logits, torch.stack(alphas, 1), torch.stack(betas, 1)

        def stacked(name):                                                          # T x (B, ...) -> (B, T, ...)
            values = [getattr(a, name) for a in steps]
            return None if not values or values[0] is None else torch.stack(values, 1)

        trace = AttentionTrace(mode, stacked("entropy"), stacked("log_p_location"), stacked("location"),
                               stacked("centre"))
        return logits, torch.stack(alphas, 1), torch.stack(betas, 1), trace
