"""Training objective, kept apart from the model (Xu et al. 2015, eq. (14)).

Dimensions: B batch, T steps, V vocabulary, L annotation vectors.

    L_d = -sum_t log p(y_t | a, y_<t)  +  lambda * sum_i (1 - sum_t alpha_ti)^2

per caption, with padded steps left out of both sums. We divide the batch's total by its
number of target tokens, so `nll` reads as the per-word cross-entropy (about ln V at
initialisation) while the gradient keeps the paper's direction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def doubly_stochastic(alphas: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """sum_i (1 - sum_t alpha_ti)^2 for each caption: (B, T, L), (B, T) -> (B,). Sec. 4.2.1."""
    coverage = (alphas * valid.unsqueeze(-1).to(alphas.dtype)).sum(dim=1)           # (B, T, L) -> (B, L)
    return ((1.0 - coverage) ** 2).sum(dim=-1)


def caption_loss(logits: torch.Tensor, alphas: torch.Tensor, targets: torch.Tensor, pad_id: int,
                 doubly_stochastic_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """logits (B, T, V), alphas (B, T, L), targets (B, T) -> {'loss', 'nll', 'reg', 'tokens'}."""
    valid = targets != pad_id                                                        # (B, T)
    tokens = valid.sum().clamp_min(1)
    nll_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),          # (B*T, V)
                              targets.reshape(-1), ignore_index=pad_id, reduction="sum")
    reg = doubly_stochastic(alphas.float(), valid)                                   # (B,)
    loss = (nll_sum + doubly_stochastic_weight * reg.sum()) / tokens
    return {"loss": loss, "nll": nll_sum / tokens, "reg": reg.mean(), "tokens": tokens}
