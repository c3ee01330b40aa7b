"""Training objective, kept apart from the model (Xu et al. 2015, eq. (14)).

Dimensions: B batch, T steps, V vocabulary, L annotation vectors.

    L_d = -sum_t log p(y_t | a, y_<t)  +  lambda * sum_i (1 - sum_t alpha_ti)^2

per caption, with padded steps left out of both sums. We divide the batch's total by its
number of target tokens, so `nll` reads as the per-word cross-entropy (about ln V at
initialisation) while the gradient keeps the paper's direction.

Hard (stochastic) attention, sec. 4.1, trains on a surrogate of the variational lower bound
instead: `hard_attention_loss` (REINFORCE with a moving-average baseline, `update_baseline`,
and an entropy bonus), scaled the same way.

Both take optional `owners`, the image of each caption: with TrainConfig.reference_loss = "any"
(see `reference_weights`) a batch holds every reference of each image, and the objective is
-log sum_r p(y_r | a), the probability that the model writes *one* of the image's references.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def doubly_stochastic(alphas: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """sum_i (1 - sum_t alpha_ti)^2 for each caption: (B, T, L), (B, T) -> (B,). Sec. 4.2.1."""
    coverage = (alphas * valid.unsqueeze(-1).to(alphas.dtype)).sum(dim=1)           # (B, T, L) -> (B, L)
    return ((1.0 - coverage) ** 2).sum(dim=-1)


def caption_loss(logits: torch.Tensor, alphas: torch.Tensor, targets: torch.Tensor, pad_id: int,
                 doubly_stochastic_weight: float = 1.0, owners: torch.Tensor | None = None,
                 num_images: int | None = None) -> dict[str, torch.Tensor]:
    """logits (B, T, V), alphas (B, T, L), targets (B, T) -> {'loss', 'nll', 'reg', 'tokens'}.

    `owners` (B,): the image of each caption when the batch holds all references of `num_images`
    images (reference_loss "any"): `nll` is then -sum_i log sum_{r of i} p(y_r | a_i) over the
    images, divided by their mean reference length summed (one reference per image gives the
    usual per-word cross-entropy)."""
    valid = targets != pad_id                                                        # (B, T)
    log_likelihood = sentence_log_likelihood(logits, targets, pad_id)               # (B,)
    caption_weight, nll_sum, tokens = _caption_weights(log_likelihood, valid, owners, num_images)
    reg = doubly_stochastic(alphas.float(), valid)                                   # (B,)
    # With owners, d/dW log sum_r p(y_r) = sum_r w_r d/dW log p(y_r), w_r the posterior over the
    # image's references; without, every w_r is 1 and this is the summed cross-entropy.
    loss = (caption_weight * (-log_likelihood + doubly_stochastic_weight * reg)).sum() / tokens
    return {"loss": loss, "nll": nll_sum / tokens, "reg": reg.mean(), "tokens": tokens}


def _caption_weights(log_likelihood: torch.Tensor, valid: torch.Tensor, owners: torch.Tensor | None,
                     num_images: int | None, posterior_log_likelihood: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What both objectives weight and divide by: (per-caption weight (B,), the negative
    log-likelihood summed, the divisor). Each caption on its own (`owners` None): weights 1,
    -sum log p(y), the number of target tokens. With `owners`: `reference_weights`, computed from
    `posterior_log_likelihood` where given (hard attention: a pass with independent samples)."""
    if owners is None:
        return torch.ones_like(log_likelihood), -log_likelihood.sum(), valid.sum().clamp_min(1)
    lengths = valid.sum(dim=1)
    weights, image_ll, tokens = reference_weights(log_likelihood, lengths, owners, num_images)
    if posterior_log_likelihood is not None:
        weights = reference_weights(posterior_log_likelihood.detach(), lengths, owners, num_images)[0]
    return weights, -image_ll.sum(), tokens


def reference_weights(log_likelihood: torch.Tensor, lengths: torch.Tensor, owners: torch.Tensor,
                      num_images: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For captions grouped by image (`owners` (R,) in [0, num_images)): the posterior weight of
    each reference within its image, w_r = p(y_r) / sum_{r' of the same image} p(y_r') (R,),
    detached; log sum_r p(y_r) per image (num_images,); and the loss's divisor, the images' mean
    reference lengths summed. Computed in log space (captions' likelihoods underflow otherwise)."""
    ll = log_likelihood.float()
    # scatter_reduce "amax" over each image's references: the log-sum-exp's shift
    peak = ll.new_full((num_images,), float("-inf")).scatter_reduce(0, owners, ll.detach(), "amax")
    shifted = torch.exp(ll - peak[owners])                                            # (R,) in (0, 1]
    total = ll.new_zeros(num_images).index_add(0, owners, shifted)                    # (n,)
    image_ll = peak + torch.log(total)                                                # (n,) log sum_r p(y_r)
    weights = (shifted / total[owners]).detach()
    counts = torch.bincount(owners, minlength=num_images).clamp_min(1).to(ll.dtype)
    mean_lengths = ll.new_zeros(num_images).index_add(0, owners, lengths.to(ll.dtype)) / counts
    return weights, image_ll, mean_lengths.sum().clamp_min(1.0)


# -- hard attention (sec. 4.1) -----------------------------------------------------------------
def sentence_log_likelihood(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """log p(y | s, a) of each caption, padded steps left out: (B, T, V), (B, T) -> (B,)."""
    token_nll = F.cross_entropy(logits.transpose(1, 2).float(), targets, ignore_index=pad_id,
                                reduction="none")                                    # (B, V, T) -> (B, T)
    return -token_nll.sum(dim=1)


def hard_attention_loss(logits: torch.Tensor, alphas: torch.Tensor, targets: torch.Tensor, pad_id: int,
                        entropies: torch.Tensor, log_p_locations: torch.Tensor | None, baseline: float | None,
                        doubly_stochastic_weight: float = 1.0, reinforce_weight: float = 1.0,
                        entropy_weight: float = 0.0, owners: torch.Tensor | None = None,
                        num_images: int | None = None,
                        posterior_log_likelihood: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
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
    As `caption_loss`, everything is divided by the number of target tokens. With `owners`
    (reference_loss "any", see `caption_loss`) each caption's terms are weighted by its posterior
    weight among its image's references (`reference_weights`), which turns every per-caption
    gradient above into one of -log sum_r p(y_r | a); the reward stays each caption's own.
    Those weights must not come from the sampled locations s~ whose score function carries the
    REINFORCE term: w_r(s~) (log p(y_r | s~, a) - b) d log p(s~ | a)/dW has an expectation other
    than E[w_r] times eq. (12)'s, since the weight rises exactly where the reward does (a biased
    estimator). `posterior_log_likelihood` (R,), log p(y_r | s', a) under independent samples s'
    (`training.batch_loss` runs a second, gradient-free pass), gives them instead; None uses this
    pass's (right for the expected context, which samples nothing).

    logits (B, T, V), alphas (B, T, L), targets (B, T), entropies (B, T) -> {'loss', 'nll', 'reg',
    'tokens', 'log_likelihood' (mean log p(y | s~, a), detached), 'entropy' (mean H per word)}.
    """
    valid = targets != pad_id                                                        # (B, T)
    log_likelihood = sentence_log_likelihood(logits, targets, pad_id)               # (B,)
    caption_weight, nll_sum, tokens = _caption_weights(log_likelihood, valid, owners, num_images,
                                                       posterior_log_likelihood)
    reg = doubly_stochastic(alphas.float(), valid)                                   # (B,)
    weights = valid.to(torch.float32)
    entropy = (entropies.float() * weights).sum(dim=1)                               # (B,) sum_t H[alpha_t]
    loss = (caption_weight * (-log_likelihood + doubly_stochastic_weight * reg - entropy_weight * entropy)).sum()
    if log_p_locations is not None:
        reward = log_likelihood.detach()                                             # (B,) log p(y | s~_n, a)
        b = reward.mean() if baseline is None else torch.as_tensor(baseline, dtype=reward.dtype,
                                                                   device=reward.device)
        log_p_s = (log_p_locations.float() * weights).sum(dim=1)                     # (B, T) -> (B,) log p(s~_n | a)
        loss = loss - reinforce_weight * (caption_weight * (reward - b) * log_p_s).sum()
    return {"loss": loss / tokens, "nll": nll_sum.detach() / tokens, "reg": reg.mean(), "tokens": tokens,
            "log_likelihood": log_likelihood.detach().mean(), "entropy": entropy.sum().detach() / tokens}


def update_baseline(baseline: float | None, log_likelihood: float, decay: float = 0.9) -> float:
    """b_k = decay * b_{k-1} + (1 - decay) * log p(y | s~_k, a) (sec. 4.1, below eq. (12));
    log_likelihood is the batch's mean. The first sampled batch starts the average at its value."""
    if baseline is None:
        return float(log_likelihood)
    return decay * baseline + (1.0 - decay) * float(log_likelihood)


# -- self-critical sequence training (Rennie et al. 2017) ----------------------------------------
def leave_one_out_baseline(rewards: torch.Tensor) -> torch.Tensor:
    """rewards (B, S) of S samples per image -> each sample's baseline, the mean reward of the
    image's other samples (B, S): unbiased, and no greedy decode needed (Kool et al. 2019's form)."""
    S = rewards.shape[1]
    if S < 2:
        raise ValueError("the leave-one-out baseline needs at least two samples per image")
    return (rewards.sum(dim=1, keepdim=True) - rewards) / (S - 1)


def self_critical_loss(logits: torch.Tensor, targets: torch.Tensor, pad_id: int, rewards: torch.Tensor,
                       baselines: torch.Tensor) -> dict[str, torch.Tensor]:
    """REINFORCE with a baseline on sampled captions (SCST): the surrogate whose gradient is
    -mean_n (r_n - b_n) d log p(y_n | a)/dW. logits (N, T, V) of the teacher-forced samples,
    targets (N, T) the samples (<end> included, <pad> after), rewards and baselines (N,), constants.
    Returns {'loss', 'nll' (per word, of the samples), 'reg' (0), 'tokens', 'reward', 'baseline'}."""
    valid = targets != pad_id
    log_likelihood = sentence_log_likelihood(logits, targets, pad_id)               # (N,)
    advantage = (rewards - baselines).to(log_likelihood.dtype).detach()
    tokens = valid.sum().clamp_min(1)
    return {"loss": -(advantage * log_likelihood).mean(), "nll": -log_likelihood.detach().sum() / tokens,
            "reg": log_likelihood.new_zeros(()), "tokens": tokens, "reward": rewards.float().mean(),
            "baseline": baselines.float().mean()}
