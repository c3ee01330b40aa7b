"""Batched beam search: the one decoding implementation (validation, CLI, notebook, evaluation).

Dimensions:
    B  images   K  beam size   N = B*K rows fed to the decoder   V  vocabulary
    L  annotation vectors      S  decoding steps so far

All images advance together as (B, K) tensors; there is no Python loop over images or beams.
Greedy decoding is beam size 1. A hypothesis stops at <end> or after `max_len` steps (the
<end> token counts as a step). As in the authors' code (arctic-captions, capgen.py gen_sample), a
hypothesis that emits <end> leaves the beam for a pool of finished ones and the image's beam
narrows to K - (number finished): a finished caption can never be pushed out by extensions of
better live beams, which would let the search return an unfinished caption worse than one it had
found. The search of an image ends when K have finished or at `max_len`; the caption is the best
(after the optional length normalisation) of the pool and of the live beams left at `max_len`
(those are returned unfinished), and `candidates` lists all of them, at most K.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .vocab import Vocabulary


@dataclass
class Caption:
    """The best hypothesis for one image, with the search's other candidates (the finished ones and
    the live ones left at max_len, at most the beam size)."""

    words: list[str]
    log_prob: float                  # sum of the log-probabilities of the emitted tokens (<end> included)
    score: float                     # log_prob after length normalisation (equal when it is off)
    alphas: torch.Tensor             # (len(words), L) attention map of every word
    betas: torch.Tensor              # (len(words),) gating scalar of every word
    finished: bool                   # False when max_len was reached without <end>
    candidates: list[tuple[list[str], float]] = field(default_factory=list)  # (words, log_prob), best (score) first
    # (len(words),) long: the grid cell (row-major) each word attended, where the mechanism has one:
    # hard attention's location (argmax, or the sample in training mode), local attention's window
    # centre cell; None for soft attention.
    locations: torch.Tensor | None = None

    @property
    def text(self) -> str:
        return " ".join(self.words)


def _normalise(log_prob: torch.Tensor, length: torch.Tensor, length_penalty: float) -> torch.Tensor:
    """score = log_prob / length**alpha (alpha = 0: no normalisation)."""
    if length_penalty == 0:
        return log_prob
    return log_prob / length.to(log_prob.dtype).clamp_min(1) ** length_penalty


@torch.no_grad()
def beam_search(model, annotations: torch.Tensor, vocab: Vocabulary, beam_size: int = 3,
                max_len: int | None = None, length_penalty: float = 0.0,
                mask: torch.Tensor | None = None) -> list[Caption]:
    """Decode every image of `annotations` (B, L, D) at once; returns one `Caption` per image, in order."""
    if beam_size < 1:
        raise ValueError(f"beam size must be at least 1, got {beam_size}")
    max_len = max_len or model.config.max_len
    B, L, _ = annotations.shape
    K, V = beam_size, len(vocab)
    device = annotations.device
    inf = float("-inf")

    rows = torch.arange(B, device=device).repeat_interleave(K)                    # (N,) image of each row
    # The K beams of an image start from the same state and word, so the first step runs once per
    # image and its output and new state are copied to the image's K rows.
    first, state = model.step(torch.full((B,), vocab.start, dtype=torch.long, device=device),
                              model.init_state(annotations), mask)
    first = dataclasses.replace(first, **{f.name: getattr(first, f.name).index_select(0, rows)
                                          for f in dataclasses.fields(first)
                                          if isinstance(getattr(first, f.name), torch.Tensor)})
    state = state.with_rows(rows)                                                 # h, c: one row per beam
    if mask is not None:
        mask = mask.index_select(0, rows)

    # Live hypotheses: K slots per image; a slot with score -inf holds none. Only beam 0 is alive
    # at first, so the first step does not pick K copies of one word.
    scores = torch.full((B, K), inf, device=device)
    scores[:, 0] = 0.0
    history = torch.zeros(B, K, 0, dtype=torch.long, device=device)
    alpha_hist = torch.zeros(B, K, 0, L, device=device)
    beta_hist = torch.zeros(B, K, 0, device=device)
    loc_hist = torch.zeros(B, K, 0, dtype=torch.long, device=device)              # -1: no location
    # The pool of finished hypotheses (arctic-captions' gen_sample: `sample`, `dead_k`): a
    # hypothesis that emits <end> leaves the beam for good, so extensions of other beams can never
    # push it out, and the image's live beam narrows to K - (number finished). Up to K per image.
    done = torch.zeros(B, dtype=torch.long, device=device)                         # (B,) dead_k
    pool_scores = torch.full((B, K), inf, device=device)
    pool_tokens = torch.full((B, K, max_len), vocab.pad, dtype=torch.long, device=device)
    pool_alphas = torch.zeros(B, K, max_len, L, device=device)
    pool_betas = torch.zeros(B, K, max_len, device=device)
    pool_locs = torch.full((B, K, max_len), -1, dtype=torch.long, device=device)
    pool_length = torch.zeros(B, K, dtype=torch.long, device=device)
    rank = torch.arange(K, device=device)
    image_offset = (torch.arange(B, device=device) * K).unsqueeze(1)              # (B, 1)

    for step in range(max_len):
        out, state = (first, state) if step == 0 else model.step(tokens, state, mask)
        log_probs = torch.log_softmax(out.logits.float(), dim=-1)                 # (N, V)
        log_probs[:, vocab.pad] = inf                                             # never generated
        log_probs[:, vocab.start] = inf
        candidates = (scores.unsqueeze(-1) + log_probs.view(B, K, V)).view(B, K * V)  # (B, K, V) -> (B, K*V)
        scores, flat = candidates.topk(K, dim=1)                                  # (B, K), best first
        scores = scores.masked_fill(rank >= (K - done).unsqueeze(1), inf)         # keep the K - dead_k best
        # Which beam each survivor extends, and with which word. Floor division on integer
        # tensors, never true division: float indices would silently be wrong.
        parent = torch.div(flat, V, rounding_mode="floor")                        # (B, K)
        word = flat % V                                                           # (B, K)

        state = state.with_rows((image_offset + parent).view(-1))                 # (B, K) -> (N,)
        history = torch.cat([history.gather(1, parent.unsqueeze(-1).expand_as(history)),
                             word.unsqueeze(-1)], dim=2)
        step_alphas = out.alphas.float().view(B, K, L).gather(1, parent.unsqueeze(-1).expand(B, K, L))
        alpha_hist = torch.cat([alpha_hist.gather(1, parent[..., None, None].expand_as(alpha_hist)),
                                step_alphas.unsqueeze(2)], dim=2)
        step_betas = out.beta.float().view(B, K).gather(1, parent)
        beta_hist = torch.cat([beta_hist.gather(1, parent.unsqueeze(-1).expand_as(beta_hist)),
                               step_betas.unsqueeze(-1)], dim=2)
        location = getattr(out, "location", None)
        step_locs = (location.view(B, K).gather(1, parent) if location is not None
                     else torch.full((B, K), -1, dtype=torch.long, device=device))  # (N,) -> (B, K)
        loc_hist = torch.cat([loc_hist.gather(1, parent.unsqueeze(-1).expand_as(loc_hist)),
                              step_locs.unsqueeze(-1)], dim=2)

        ended = (word == vocab.end) & (scores > inf)                              # (B, K)
        alive = (word != vocab.end) & (scores > inf)
        any_ended, any_alive = torch.stack([ended.any(), alive.any()]).tolist()   # one sync per step
        if any_ended:                                                             # into the pool
            b, k = ended.nonzero(as_tuple=True)
            slot = (done.unsqueeze(1) + ended.long().cumsum(dim=1) - 1)[b, k]     # next free places, in rank order
            n = step + 1                                                          # tokens, <end> included
            pool_scores[b, slot] = scores[b, k]
            pool_length[b, slot] = n
            pool_tokens[b, slot, :n] = history[b, k]
            pool_alphas[b, slot, :n] = alpha_hist[b, k]
            pool_betas[b, slot, :n] = beta_hist[b, k]
            pool_locs[b, slot, :n] = loc_hist[b, k]
            done = done + ended.sum(dim=1)
            scores = scores.masked_fill(ended, inf)
        if not any_alive:                                                         # every image has K finished
            break
        tokens = word.view(-1)

    # What is left alive reached max_len without <end>: it joins the finished ones (gen_sample
    # "dumps every remaining one"), and the best of them all is the caption. Together at most K.
    S = history.shape[2]
    grow = max_len - S                                                            # 0 unless the loop broke
    every = torch.cat([pool_scores, scores], dim=1)                               # (B, 2K)
    length = torch.cat([pool_length, torch.full_like(pool_length, S)], dim=1)
    tokens_all = torch.cat([pool_tokens, F.pad(history, (0, grow), value=vocab.pad)], dim=1)
    alphas_all = torch.cat([pool_alphas, F.pad(alpha_hist, (0, 0, 0, grow))], dim=1)
    betas_all = torch.cat([pool_betas, F.pad(beta_hist, (0, grow))], dim=1)
    locs_all = torch.cat([pool_locs, F.pad(loc_hist, (0, grow), value=-1)], dim=1)
    finished = torch.cat([torch.ones_like(pool_scores, dtype=torch.bool),
                          torch.zeros_like(scores, dtype=torch.bool)], dim=1)
    ranked = _normalise(every, length, length_penalty)
    # Empty slots rank last whatever the normalisation (their score stays -inf).
    order = ranked.masked_fill(every == inf, inf).argsort(dim=1, descending=True)  # (B, 2K)

    every, ranked, order, tokens_all = every.cpu(), ranked.cpu(), order.cpu(), tokens_all.cpu()
    alphas_all, betas_all, locs_all, finished = alphas_all.cpu(), betas_all.cpu(), locs_all.cpu(), finished.cpu()
    has_locations = bool((locs_all >= 0).any())
    results = []
    for b in range(B):  # unpacking into Python objects only; the search itself is batched
        cands = []
        for k in order[b].tolist():
            if every[b, k] == inf:
                break
            cands.append((vocab.decode(tokens_all[b, k].tolist()), float(every[b, k])))
        best = int(order[b, 0])
        words = vocab.decode(tokens_all[b, best].tolist())
        n = len(words)
        results.append(Caption(words=words, log_prob=float(every[b, best]), score=float(ranked[b, best]),
                               alphas=alphas_all[b, best, :n], betas=betas_all[b, best, :n],
                               finished=bool(finished[b, best]), candidates=cands,
                               locations=locs_all[b, best, :n] if has_locations else None))
    return results
