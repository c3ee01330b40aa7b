"""Attention faithfulness: does a word depend on where its attention looks?

Dimensions: B images, L annotation vectors (cells), T steps of a caption, D encoder_dim.

For each content word w_t of a caption (`caption_stats.is_content`), teacher-forced on that
caption, from the same decoder state before step t: log p(w_t) as the model computes it, then
again with the `fraction` (10%) of cells that step attends most forbidden (attention's mask, so
their weight goes to the other cells, eq. (5) over the allowed cells), and again with as many
cells drawn at random forbidden. A model whose words rest on what attention reads loses much
of log p(w_t) in the first case and little in the second; a model whose every cell carries the
whole photo loses little in both. Also reported: the attention mass the top `fraction` of cells
hold (uniform attention: `fraction`).

The targets of the attention work: mean drop >= 0.5 nats, >= 25% of content words
losing more than 0.5 nats, random drop near 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .caption_stats import is_content


@dataclass
class WordEffects:
    """One row per content word measured."""

    words: list[str]
    drop_top: torch.Tensor      # (W,) log p(w) - log p(w | top cells forbidden), nats
    drop_random: torch.Tensor   # (W,) the same with random cells forbidden
    top_mass: torch.Tensor      # (W,) attention weight on the top cells at that step

    def summary(self, threshold: float = 0.5) -> dict:
        n = len(self.words)
        if n == 0:
            return {"content_words": 0}
        return {"content_words": n, "drop_top": float(self.drop_top.mean()),
                "drop_random": float(self.drop_random.mean()),
                "share_over_threshold": float((self.drop_top > threshold).float().mean()),
                "threshold": threshold, "top_mass": float(self.top_mass.mean())}

    @staticmethod
    def join(parts: Sequence[WordEffects]) -> WordEffects:
        return WordEffects([w for p in parts for w in p.words], torch.cat([p.drop_top for p in parts]),
                           torch.cat([p.drop_random for p in parts]), torch.cat([p.top_mass for p in parts]))


def forbidden_count(L: int, fraction: float) -> int:
    """How many of L cells `fraction` forbids (at least one, never all)."""
    return min(L - 1, max(1, math.ceil(fraction * L - 1e-9)))


@torch.no_grad()
def word_effects(model, annotations: torch.Tensor, captions: Sequence[Sequence[str]], vocab,
                 fraction: float = 0.1, generator: torch.Generator | None = None) -> WordEffects:
    """Measure every content word of `captions` (one list of words per image of `annotations`
    (B, L, D)); see the module docstring. `model` has `init_state` and `step` (a Captioner)."""
    B, L, _ = annotations.shape
    k = forbidden_count(L, fraction)
    ids = [[vocab.stoi.get(w, vocab.unk) for w in c] for c in captions]
    T = max((len(c) for c in ids), default=0)
    state = model.init_state(annotations)
    prev = torch.full((B,), vocab.start, dtype=torch.long, device=annotations.device)
    words, top_drops, random_drops, masses = [], [], [], []
    for t in range(T):
        out, next_state = model.step(prev, state)
        alphas = out.alphas.float()                                                  # (B, L)
        top = alphas.topk(k, dim=-1).indices                                         # (B, k)
        keep_top = torch.ones(B, L, dtype=torch.bool, device=alphas.device).scatter_(1, top, False)
        noise = torch.rand(B, L, generator=generator).to(alphas.device)
        random_cells = noise.topk(k, dim=-1).indices
        keep_random = torch.ones_like(keep_top).scatter_(1, random_cells, False)
        target = torch.tensor([c[t] if t < len(c) else vocab.pad for c in ids], device=annotations.device)
        base = _log_p(out.logits, target)
        without_top = _log_p(model.step(prev, state, keep_top)[0].logits, target)
        without_random = _log_p(model.step(prev, state, keep_random)[0].logits, target)
        mass = top_mass(alphas, fraction)
        for b, caption in enumerate(captions):
            if t < len(caption) and is_content(caption[t]):
                words.append(caption[t])
                top_drops.append(base[b] - without_top[b])
                random_drops.append(base[b] - without_random[b])
                masses.append(mass[b])
        prev, state = target.clamp_min(0), next_state
    def stack(values):
        return torch.stack(values).cpu() if values else torch.zeros(0)
    return WordEffects(words, stack(top_drops), stack(random_drops), stack(masses))


def _log_p(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).gather(1, target.unsqueeze(1)).squeeze(1)


def top_mass(alphas: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    """The attention weight the most attended `fraction` of cells hold, per map: alphas (..., L) ->
    (...). What the overlays print under each word: 0.1 for a uniform map, near 1 for a focused one."""
    k = forbidden_count(alphas.shape[-1], fraction)
    return alphas.float().topk(k, dim=-1).values.sum(dim=-1)
