"""Batched beam search: the one decoding implementation (validation, CLI, notebook, evaluation).

Dimensions:
    B  images   K  beam size   N = B*K rows fed to the decoder   V  vocabulary
    L  annotation vectors      S  decoding steps so far

All images advance together as (B, K) tensors; there is no Python loop over images or beams.
Greedy decoding is beam size 1. A hypothesis stops at <end> or after `max_len` steps (the
<end> token counts as a step); one that never emits <end> is returned as it stands.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from .vocab import Vocabulary


@dataclass
class Caption:
    """The best hypothesis for one image, with the beam's other candidates."""

    words: list[str]
    log_prob: float                  # sum of the log-probabilities of the emitted tokens (<end> included)
    score: float                     # log_prob after length normalisation (equal when it is off)
    alphas: torch.Tensor             # (len(words), L) attention map of every word
    betas: torch.Tensor              # (len(words),) gating scalar of every word
    finished: bool                   # False when max_len was reached without <end>
    candidates: list[tuple[list[str], float]] = field(default_factory=list)  # (words, log_prob), best first
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

    rows = torch.arange(B, device=device).repeat_interleave(K)                    # (N,) image of each row
    # The K beams of an image start from the same state and word, so the first step runs once per
    # image and its output and new state are copied to the image's K rows.
    first, state = model.step(torch.full((B,), vocab.start, dtype=torch.long, device=device),
                              model.init_state(annotations), mask)
    first = dataclasses.replace(first, **{f.name: getattr(first, f.name).index_select(0, rows)
                                          for f in dataclasses.fields(first)
                                          if isinstance(getattr(first, f.name), torch.Tensor)})
    state = state.index_select(rows)
    if mask is not None:
        mask = mask.index_select(0, rows)

    # Only beam 0 is alive at first, so the first step does not pick K copies of one word.
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0
    finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    history = torch.zeros(B, K, 0, dtype=torch.long, device=device)
    alpha_hist = torch.zeros(B, K, 0, L, device=device)
    beta_hist = torch.zeros(B, K, 0, device=device)
    loc_hist = torch.zeros(B, K, 0, dtype=torch.long, device=device)              # -1: no location

    # A finished hypothesis may only "emit" <pad>, at no cost: its score stays frozen.
    frozen = torch.full((V,), float("-inf"), device=device)
    frozen[vocab.pad] = 0.0
    image_offset = (torch.arange(B, device=device) * K).unsqueeze(1)              # (B, 1)

    for step in range(max_len):
        out, state = (first, state) if step == 0 else model.step(tokens, state, mask)
        log_probs = torch.log_softmax(out.logits.float(), dim=-1)                 # (N, V)
        log_probs[:, vocab.pad] = float("-inf")                                   # never generated
        log_probs[:, vocab.start] = float("-inf")
        log_probs = log_probs.view(B, K, V)                                       # (N, V) -> (B, K, V)
        log_probs = torch.where(finished.unsqueeze(-1), frozen, log_probs)
        candidates = (scores.unsqueeze(-1) + log_probs).view(B, K * V)            # (B, K, V) -> (B, K*V)
        scores, flat = candidates.topk(K, dim=1)                                  # (B, K)
        # Which beam each survivor extends, and with which word. Floor division on integer
        # tensors, never true division: float indices would silently be wrong.
        parent = torch.div(flat, V, rounding_mode="floor")                        # (B, K)
        word = flat % V                                                           # (B, K)

        state = state.reorder_within_image((image_offset + parent).view(-1))      # (B, K) -> (N,)
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
        finished = finished.gather(1, parent) | (word == vocab.end)
        tokens = word.view(-1)
        if bool(finished.all()):
            break

    # Length of each hypothesis in tokens, <end> included (pads after it are not counted).
    emitted = (history != vocab.pad).sum(dim=2)                                    # (B, K)
    ranked = _normalise(scores, emitted, length_penalty)
    order = ranked.argsort(dim=1, descending=True)                                 # (B, K)

    history, scores, ranked = history.cpu(), scores.cpu(), ranked.cpu()
    alpha_hist, beta_hist, finished, order = alpha_hist.cpu(), beta_hist.cpu(), finished.cpu(), order.cpu()
    loc_hist = loc_hist.cpu()
    has_locations = bool((loc_hist >= 0).any())
    results = []
    for b in range(B):  # unpacking into Python objects only; the search itself is batched
        cands = []
        for k in order[b].tolist():
            if scores[b, k] == float("-inf"):
                continue
            cands.append((vocab.decode(history[b, k].tolist()), float(scores[b, k])))
        best = int(order[b, 0])
        words = vocab.decode(history[b, best].tolist())
        n = len(words)
        results.append(Caption(words=words, log_prob=float(scores[b, best]), score=float(ranked[b, best]),
                               alphas=alpha_hist[b, best, :n], betas=beta_hist[b, best, :n],
                               finished=bool(finished[b, best]), candidates=cands,
                               locations=loc_hist[b, best, :n] if has_locations else None))
    return results
