"""Attention over image regions (soft, hard, local, multihead): the score f_att and the weights alpha.

Dimensions:
    B  images                   L  annotation vectors (grid cells)    D  encoder_dim
    N  rows (B, or B*R)         R  rows per image (beam search: beams) K  heads (multihead)
    n  hidden_dim (LSTM state)  A  attention_dim

Xu et al. (2015), sec. 3.1.2: e_ti = f_att(a_i, h_{t-1}), alpha_ti = softmax_i(e_ti).
The paper's f_att is Bahdanau's additive MLP; the other scores are Luong et al. (2015)'s
dot and general, Vaswani et al. (2017)'s scaled dot product, and several such heads.

The annotation-side projections do not depend on t, so `keys()` computes them once per
image and every decoding step reuses them. Beam search decodes R rows (its beams) per image; they
all read the same image, so keys and annotations stay one per image (B, L, *) while the query h
has a row per beam (N = B*R, rows of one image consecutive): each step reads an image's keys and
annotations once for all its beams, not once per beam.

The module is split the way the three mechanisms need it (decoder.py picks the mechanism):
    distributions(keys, h, mask, bias)  -> one attention distribution per head (B, K, L)
    read(weights, keys, annotations)    -> the context those weights give (B, D)
Soft attention (sec. 4.2) reads with the distributions themselves (the expected context);
hard attention (sec. 4.1) reads with a one-hot sample s_t of them, so `read` returns a_{s_t};
local attention adds `LocalWindow`'s log-window as `bias` (Luong et al. 2015, local-p).
K = 1 for every score but multihead, whose heads each have their own distribution (and, with
hard attention, each sample their own location).
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Images per chunk in the beam search's additive scores on the CPU: about this many bytes of the
# (images, R, L, A) temporary, so that it stays in cache from the sum through the product.
CHUNK_BYTES = 4 << 20
# On a GPU the temporary does not stay in cache anyway and every chunk is another round of kernel
# launches (decoding 256 images at beam 3 on an H200 ran at 3,281 images/s with one chunk, 1,451 with
# the CPU's chunks), so it is made whole when it takes at most this share of the free device memory,
# else in the fewest equal chunks that do.
DEVICE_SHARE = 0.25


def chunk_images(device_type: str, images: int, bytes_per_image: int, free_bytes: int | None = None) -> int:
    """How many images the beam search's additive scores compute at a time: `images` (B) images whose
    (R, L, A) temporaries take `bytes_per_image` each. The CPU: as many as fit CHUNK_BYTES (cache).
    Other devices: all of them in one chunk when that takes at most DEVICE_SHARE of `free_bytes`
    (None: unknown, one chunk), else equal chunks that each do. At least 1, at most `images`."""
    if device_type == "cpu":
        budget = CHUNK_BYTES
    elif free_bytes is None:
        return max(1, images)
    else:
        budget = int(free_bytes * DEVICE_SHARE)
    fit = max(1, min(images, budget // max(1, bytes_per_image)))
    if device_type != "cpu" and fit < images:                # the fewest chunks, then spread evenly
        chunks = -(-images // fit)
        fit = -(-images // chunks)
    return fit


def free_device_memory(device: torch.device) -> int | None:
    """Bytes free on a CUDA device (torch.cuda.mem_get_info, plus what torch's allocator holds
    unused, which it hands out again first); None for other devices."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def rows_per_image(keys: torch.Tensor, h: torch.Tensor) -> int:
    """R: how many query rows (beams) share each image's keys; rows of one image are consecutive."""
    if h.shape[0] % keys.shape[0]:
        raise ValueError(f"{h.shape[0]} query rows for {keys.shape[0]} images: not a whole number per image")
    return h.shape[0] // keys.shape[0]


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
        self.num_heads = num_heads if score == "multihead" else 1   # K: distributions per step
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
            self.query_proj = nn.Linear(hidden_dim, encoder_dim)
            self.key_proj = nn.Linear(encoder_dim, encoder_dim)
            self.value_proj = nn.Linear(encoder_dim, encoder_dim)
            self.out_proj = nn.Linear(encoder_dim, encoder_dim)
        else:
            raise ValueError(f"unknown score {score!r}")

    def keys(self, annotations: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        """The per-image part of the score, computed once before decoding. `values` (default: the
        annotations themselves) are what multihead's value projection reads."""
        if self.score == "additive":
            return self.key_proj(annotations)                                 # (B, L, A)
        if self.score == "general":
            return self.bilinear(annotations)                                 # (B, L, n)
        if self.score == "multihead":
            values = annotations if values is None else values
            return torch.cat([self.key_proj(annotations), self.value_proj(values)], dim=-1)  # (B, L, 2D)
        return annotations                                                    # (B, L, D)

    def scores(self, keys: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """e_ti = f_att(a_i, h_{t-1}) for every cell and head: keys (B, L, *), h (N, n) -> (N, K, L).
        Sec. 3.1.2, eq. (4)."""
        R = rows_per_image(keys, h)
        N, L = h.shape[0], keys.shape[1]
        if self.score == "multihead":
            keys = keys.repeat_interleave(R, dim=0) if R > 1 else keys           # (B, L, 2D) -> (N, L, 2D)
            K, d = self.num_heads, self.encoder_dim // self.num_heads
            k = keys[..., :self.encoder_dim].reshape(N, L, K, d).transpose(1, 2)  # (N, L, D) -> (N, K, L, d)
            q = self.query_proj(h).view(N, K, d, 1)                              # (N, D) -> (N, K, d, 1)
            return torch.matmul(k, q).squeeze(-1) / math.sqrt(d)                 # (N, K, L, 1) -> (N, K, L)
        B = keys.shape[0]
        if self.score == "additive":
            query = self.query_proj(h).view(B, R, 1, -1)                         # (N, A) -> (B, R, 1, A)
            if R > 1 and not torch.is_grad_enabled():
                return self._beam_additive_scores(keys, query).view(N, 1, L)
            u = torch.tanh(keys.unsqueeze(1) + query)                            # (B, 1, L, A) + (B, R, 1, A)
            return self.energy(u).view(N, 1, L)                                  # (B, R, L, 1) -> (N, 1, L)
        queries = h.view(B, R, -1).transpose(1, 2)                               # (N, n) -> (B, n, R)
        scores = torch.bmm(keys, queries).transpose(1, 2)                        # (B, L, R) -> (B, R, L)
        if self.score == "scaled-dot":
            scores = scores / math.sqrt(self.encoder_dim)
        return scores.reshape(N, 1, L)

    def _beam_additive_scores(self, keys: torch.Tensor, query: torch.Tensor, images: int | None = None
                              ) -> torch.Tensor:
        """Additive scores for the beam search (no gradient, R beams per image): keys (B, L, A),
        query (B, R, 1, A) -> (B, R, L), the same numbers as `scores` to about 1e-6, about twice as fast.

        The (B, R, L, A) temporary is the search's largest, so it is made `images` images at a time
        (default: `chunk_images` for this device: on the CPU a few, in one reused buffer that stays
        in cache; on a GPU all at once where memory allows), and tanh goes through the identity
        tanh(u) = 2 sigmoid(2u) - 1 (torch's float sigmoid is about twice as fast as its tanh on the
        CPU): e = w^T tanh(k + q) + b = (2w)^T sigmoid(2k + 2q) + (b - sum w). Doubling is exact."""
        B, R, _, A = query.shape
        L = keys.shape[1]
        # The buffers are written with out=, which autocast cannot follow: the work runs outside it,
        # in the wider of the two inputs' dtypes (bf16 keys and query under bf16 autocast).
        dtype = torch.promote_types(keys.dtype, query.dtype)
        with torch.autocast(keys.device.type, enabled=False):
            keys, query = keys.to(dtype), query.to(dtype)
            w = self.energy.weight.view(A).to(dtype)
            scores = keys.new_empty(B, R, L)
            if images is None:
                images = chunk_images(keys.device.type, B, R * L * A * keys.element_size(),
                                      free_device_memory(keys.device))
            buffer = keys.new_empty(images, R, L, A)
            query2 = query * 2
            for start in range(0, B, images):
                stop = min(B, start + images)
                u = buffer[:stop - start]
                torch.add(query2[start:stop], keys[start:stop].unsqueeze(1), alpha=2, out=u)  # 2q + 2k
                torch.matmul(u.sigmoid_(), w * 2, out=scores[start:stop])            # (b, R, L, A) @ (A,)
            return scores.add_(self.energy.bias.to(dtype) - w.sum())

    def distributions(self, keys: torch.Tensor, h: torch.Tensor, mask: torch.Tensor | None = None,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
        """alpha_t per head, (B, K, L): softmax_i(e_ti + bias_i) over the cells that `mask` (B, L) allows.

        `bias` (B, L) is added to every head's scores before the softmax (local attention's
        log-Gaussian window); masked cells get exactly zero weight. Eq. (5)."""
        scores = self.scores(keys, h)                                        # (B, K, L)
        if bias is not None:
            scores = scores + bias.unsqueeze(1)                              # (B, K, L) + (B, 1, L)
        return masked_softmax(scores, None if mask is None else mask.unsqueeze(1))

    def read(self, weights: torch.Tensor, keys: torch.Tensor, annotations: torch.Tensor) -> torch.Tensor:
        """The context for per-head weights (N, K, L) over annotations (B, L, D): sum_i w_i a_i, eq.
        (6) (multihead: per-head values, concatenated and projected), (N, D). With soft weights this
        is phi of sec. 4.2, the expected context; with one-hot weights (hard attention's sample s_t)
        it is a_{s_t}, sec. 4.1, eq. (8)."""
        N, K, L = weights.shape
        B = annotations.shape[0]
        if self.score != "multihead":                                        # one (R, L) @ (L, D) per image
            return torch.bmm(weights.view(B, N // B, L), annotations).view(N, -1)  # (B, R, L) @ (B, L, D)
        keys = keys.repeat_interleave(N // B, dim=0) if N > B else keys        # (B, L, 2D) -> (N, L, 2D)
        d = self.encoder_dim // K
        v = keys[..., self.encoder_dim:].reshape(N, L, K, d).transpose(1, 2)  # (N, L, D) -> (N, K, L, d)
        heads = torch.matmul(weights.unsqueeze(2), v).squeeze(2)             # (N, K, 1, L) @ (N, K, L, d) -> (N, K, d)
        return self.out_proj(heads.reshape(N, self.encoder_dim))             # (N, K, d) -> (N, D)

    def forward(self, keys: torch.Tensor, annotations: torch.Tensor, h: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft attention: alphas (B, L), summing to 1 over unmasked cells, and the expected context (B, D).

        For multihead the one map per word (for display and the doubly stochastic term) is the
        heads' mean, which also sums to 1."""
        weights = self.distributions(keys, h, mask)                          # (B, K, L)
        return weights.mean(dim=1), self.read(weights, keys, annotations)


class LocalWindow(nn.Module):
    """Luong et al. (2015)'s local-p attention, adapted to the 2-D annotation grid.

    From h_{t-1} the decoder predicts a centre p_t = (p_r, p_c) on the grid, one coordinate per axis:
        p_t = G * sigmoid(v_p^T tanh(W_p h_{t-1}))                 (Luong eq. (9), per axis)
    in continuous grid coordinates: cell (r, c) spans [r, r+1) x [c, c+1), its centre is (r+.5, c+.5).
    The attention weights are the global ones times a Gaussian around p_t, truncated to the square
    window |r+.5 - p_r| <= D, |c+.5 - p_c| <= D with D = 2 sigma (Luong sets sigma = D / 2),
        alpha_ti  ∝  softmax_i(e_ti) * exp(-((r_i - p_r)^2 + (c_i - p_c)^2) / (2 sigma^2))   inside the window,
    and **renormalised to sum to 1 over the window** (Luong leaves the product unnormalised; we
    renormalise so that alpha stays a distribution: the context stays an average of annotations,
    the doubly stochastic term and the attention maps mean the same as for global attention, and
    hard sampling stays possible). Since softmax's normaliser cancels in the renormalisation,
    this is exactly softmax over the window of e_ti - d_i^2 / (2 sigma^2): `bias` below.
    The Gaussian makes alpha differentiable in p_t; the truncation does not (as in Luong).
    Scores for all L cells are still computed (on small grids gathering the window costs more
    than it saves), so the cost is that of global attention plus the window.
    """

    def __init__(self, hidden_dim: int, attention_dim: int, grid_size: int, sigma: float):
        super().__init__()
        self.grid_size, self.sigma = grid_size, float(sigma)
        self.W_p = nn.Linear(hidden_dim, attention_dim, bias=False)
        self.v_p = nn.Linear(attention_dim, 2, bias=False)                  # one v_p per axis: (row, col)
        cells = torch.arange(grid_size * grid_size)
        centres = torch.stack([cells // grid_size, cells % grid_size], dim=-1).float() + 0.5  # (L, 2) (row, col)
        self.register_buffer("cell_centres", centres, persistent=False)

    def centre(self, h: torch.Tensor) -> torch.Tensor:
        """p_t (B, 2) = (row, col) in [0, G], from h_{t-1} (B, n)."""
        return self.grid_size * torch.sigmoid(self.v_p(torch.tanh(self.W_p(h))))

    def restrict(self, centre: torch.Tensor, mask: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The log-Gaussian `bias` (B, L) and the cells allowed (B, L): the window, within `mask`.

        If a padding mask leaves no cell of the window, the row falls back to `mask` alone."""
        offset = self.cell_centres.to(centre.dtype).unsqueeze(0) - centre.unsqueeze(1)  # (1, L, 2) - (B, 1, 2) -> (B, L, 2)
        bias = -(offset ** 2).sum(-1) / (2 * self.sigma ** 2)               # (B, L) log of the Gaussian
        window = (offset.abs() <= 2 * self.sigma).all(dim=-1)                # (B, L): |dr| <= D and |dc| <= D
        if mask is not None:
            allowed = window & mask
            window = torch.where(allowed.any(-1, keepdim=True), allowed, mask)
        return bias, window


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


__all__ = ["Attention", "LocalWindow", "masked_softmax", "rows_per_image", "sinusoidal_2d", "entropy"]
