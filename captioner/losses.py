"""Training objective, kept apart from the model (Xu et al. 2015, eq. (14)).

Dimensions: B batch, T steps, V vocabulary, L annotation vectors.

    L_d = -sum_t log p(y_t | a, y_<t)  +  lambda * sum_i (1 - sum_t alpha_ti)^2

per caption, with padded steps left out of both sums. We divide the batch's total by its
number of target tokens, so `nll` reads as the per-word cross-entropy (about ln V at
initialisation) while the gradient keeps the paper's direction.

Hard (stochastic) attention, sec. 4.1, trains on a surrogate of the variational lower bound
instead: `hard_attention_loss` (REINFORCE with a moving-average baseline, `update_baseline`,
and an entropy bonus), scaled the same way.
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


# -- hard attention (sec. 4.1) -----------------------------------------------------------------
def sentence_log_likelihood(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """log p(y | s, a) of each caption, padded steps left out: (B, T, V), (B, T) -> (B,)."""
    token_nll = F.cross_entropy(logits.transpose(1, 2).float(), targets, ignore_index=pad_id,
                                reduction="none")                                    # (B, V, T) -> (B, T)
    return -token_nll.sum(dim=1)


def hard_attention_loss(logits: torch.Tensor, alphas: torch.Tensor, targets: torch.Tensor, pad_id: int,
                        entropies: torch.Tensor, log_p_locations: torch.Tensor | None, baseline: float | None,
                        doubly_stochastic_weight: float = 1.0, reinforce_weight: float = 1.0,
                        entropy_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """The surrogate loss whose gradient is eq. (12)'s estimator of the variational lower bound
    L_s = sum_s p(s | a) log p(y | s, a) (sec. 4.1), negated, for one batch of sampled locations s~:

        dL_s/dW ~ 1/N sum_n [ d log p(y | s~_n, a)/dW
                              + lambda_r (log p(y | s~_n, a) - b) d log p(s~_n | a)/dW
                              + lambda_e dH[s~_n]/dW ]

    log p(s~ | a) = sum_t log alpha_{t, s~_t} and H = sum_t H[alpha_t] run over each caption's valid
    steps. The reward log p(y | s~, a) and the baseline b are constants (detached): only the score
    function log p(s~ | a) carries the REINFORCE term's gradient. `log_p_locations` (B, T) is None
    when the batch used the expected context instead of a sample (the paper's "with probability
    0.5, set s~ to its expected value"): the gradient is then soft attention's, plus the entropy
    bonus. `b` is the moving average of update_baseline; None (no sampled batch yet) uses this
    batch's mean. The doubly stochastic term of eq. (14) is added as for soft attention.
    As `caption_loss`, everything is divided by the number of target tokens.

    logits (B, T, V), alphas (B, T, L), targets (B, T), entropies (B, T) -> {'loss', 'nll', 'reg',
    'tokens', 'log_likelihood' (mean log p(y | s~, a), detached), 'entropy' (mean H per word)}.
    """
    valid = targets != pad_id                                                        # (B, T)
    tokens = valid.sum().clamp_min(1)
    log_likelihood = sentence_log_likelihood(logits, targets, pad_id)               # (B,)
    nll_sum = -log_likelihood.sum()
    reg = doubly_stochastic(alphas.float(), valid)                                   # (B,)
    weights = valid.to(torch.float32)
    entropy_sum = (entropies.float() * weights).sum()                                # sum_n H[s~_n]
    loss = nll_sum + doubly_stochastic_weight * reg.sum() - entropy_weight * entropy_sum
    if log_p_locations is not None:
        reward = log_likelihood.detach()                                             # (B,) log p(y | s~_n, a)
        b = reward.mean() if baseline is None else torch.as_tensor(baseline, dtype=reward.dtype,
                                                                   device=reward.device)
        log_p_s = (log_p_locations.float() * weights).sum(dim=1)                     # (B, T) -> (B,) log p(s~_n | a)
        loss = loss - reinforce_weight * ((reward - b) * log_p_s).sum()
    return {"loss": loss / tokens, "nll": nll_sum.detach() / tokens, "reg": reg.mean(), "tokens": tokens,
            "log_likelihood": log_likelihood.detach().mean(), "entropy": entropy_sum.detach() / tokens}


def update_baseline(baseline: float | None, log_likelihood: float, decay: float = 0.9) -> float:
    """b_k = decay * b_{k-1} + (1 - decay) * log p(y | s~_k, a) (sec. 4.1, below eq. (12));
    log_likelihood is the batch's mean. The first sampled batch starts the average at its value."""
    if baseline is None:
        return float(log_likelihood)
    return decay * baseline + (1.0 - decay) * float(log_likelihood)
