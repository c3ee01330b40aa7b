"""Batched beam search: the one decoding implementation (validation, CLI, notebook, evaluation).

Dimensions:
    B  images   K  beam size   N = B*K rows fed to the decoder   V  vocabulary
    L  annotation vectors      S  decoding steps so far

All images advance together as (B, K) tensors; there is no Python loop over images or beams.
Greedy decoding is beam size 1. No caption contains <unk> (a word the vocabulary lacks is not a
sentence a user can read): its log-probability is set to -inf after the softmax, as <pad>'s and
<start>'s, so other words keep their probabilities. A hypothesis stops at <end> or after `max_len`
steps (the <end> token counts as a step). As in the authors' code (arctic-captions, capgen.py gen_sample), a
hypothesis that emits <end> leaves the beam for a pool of finished ones and the image's beam
narrows to K - (number finished): a finished caption can never be pushed out by extensions of
better live beams, which would let the search return an unfinished caption worse than one it had
found. The search of an image ends when K have finished or at `max_len`; the caption is the best
(after the optional length normalisation) of the pool and of the live beams left at `max_len`
(those are returned unfinished), and `candidates` lists all of them, at most K.

The bookkeeping stays on the device: no step asks Python which beams ended (finished hypotheses
go into the pool by one scatter per tensor), and on a GPU the loop looks only every few steps
whether any beam is still alive (`steps_between_checks`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .vocab import Vocabulary

# On a GPU every look at a tensor's value from Python waits for the device to finish all the work
# queued before it. The search's bookkeeping stays on the device, and whether any beam is still
# alive (the only value the loop needs) is looked at every this many steps there; after every step on
# the CPU, where looking costs nothing and stopping at once saves the most. Steps taken after every
# beam has finished change nothing (every score is -inf), so the captions are the same either way.
CHECK_EVERY_ON_DEVICE = 4


def steps_between_checks(device_type: str) -> int:
    """How often (in steps) the beam search on `device_type` asks whether any beam is alive."""
    return 1 if device_type == "cpu" else CHECK_EVERY_ON_DEVICE


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
    """GNMT's length normalisation (Wu et al. 2016, eq. 14): score = log_prob / lp(length), with
    lp = ((5 + length) / 6) ** alpha; alpha = 0 is no normalisation, larger alpha favours longer
    captions. `length` counts the tokens, <end> included."""
    if length_penalty == 0:
        return log_prob
    return log_prob / ((5.0 + length.to(log_prob.dtype)) / 6.0) ** length_penalty


def _banned_repeats(tokens: torch.Tensor, n: int, V: int) -> torch.Tensor:
    """Hugging Face `generate`'s no_repeat_ngram_size on a batch of hypotheses: tokens (N, S) so far
    -> (N, V) bool, the words that would complete an n-gram the hypothesis already holds. Batched:
    every window of n tokens is compared with the hypothesis's last n - 1 at once."""
    N, S = tokens.shape
    banned = torch.zeros(N, V, dtype=torch.bool, device=tokens.device)
    if n < 1 or S < n:
        return banned
    if n == 1:
        return banned.scatter_(1, tokens, True)
    windows = tokens.unfold(1, n, 1)                                                 # (N, S - n + 1, n)
    prefix = tokens[:, S - n + 1:]                                                   # (N, n - 1)
    match = (windows[..., :-1] == prefix.unsqueeze(1)).all(dim=-1)                   # (N, S - n + 1)
    # scatter_add, not scatter: a word may follow the prefix in one window and not in another.
    hits = torch.zeros(N, V, device=tokens.device).scatter_add_(1, windows[..., -1], match.float())
    return hits > 0


@dataclass
class _Hypotheses:
    """K hypotheses per image, (B, K, S, ...): the tokens, attention maps, gates and attended cells
    (-1: none) of each step so far. The live beams, and (with S = max_len) the finished pool."""

    tokens: torch.Tensor     # (B, K, S) long
    alphas: torch.Tensor     # (B, K, S, L)
    betas: torch.Tensor      # (B, K, S)
    locations: torch.Tensor  # (B, K, S) long

    @classmethod
    def empty(cls, B: int, K: int, S: int, L: int, pad: int, device) -> _Hypotheses:
        return cls(torch.full((B, K, S), pad, dtype=torch.long, device=device), torch.zeros(B, K, S, L, device=device),
                   torch.zeros(B, K, S, device=device), torch.full((B, K, S), -1, dtype=torch.long, device=device))

    def parts(self) -> tuple[torch.Tensor, ...]:
        """(tokens, alphas, betas, locations): the tensors themselves. Not dataclasses.astuple, which
        deep-copies them, so the finished pool's in-place writes would land in copies and be lost."""
        return self.tokens, self.alphas, self.betas, self.locations

    def extend(self, parent: torch.Tensor, word: torch.Tensor, out) -> _Hypotheses:
        """Each survivor (B, K) is its `parent` beam's hypothesis plus `word` and this step's output."""
        B, K, _ = self.tokens.shape
        location = getattr(out, "location", None)
        step = (word, out.alphas.float().view(B, K, -1), out.beta.float().view(B, K),
                location.view(B, K) if location is not None else torch.full_like(word, -1))
        grown = []
        for history, new in zip(self.parts(), step):
            index = parent.view(B, K, *[1] * (history.dim() - 2)).expand_as(history)
            new = new if new is word else new.gather(1, parent.view(B, K, *[1] * (new.dim() - 2)).expand_as(new))
            grown.append(torch.cat([history.gather(1, index), new.unsqueeze(2)], dim=2))
        return _Hypotheses(*grown)

    def padded(self, length: int, pad: int) -> _Hypotheses:
        grow = length - self.tokens.shape[2]
        return _Hypotheses(F.pad(self.tokens, (0, grow), value=pad), F.pad(self.alphas, (0, 0, 0, grow)),
                           F.pad(self.betas, (0, grow)), F.pad(self.locations, (0, grow), value=-1))


def _first_step(model, annotations, vocab, K: int, mask):
    """The K beams of an image start from the same state and word, so the first step runs once
    per image and its output and new state are copied to the image's K rows."""
    B = annotations.shape[0]
    rows = torch.arange(B, device=annotations.device).repeat_interleave(K)         # (N,) image of each row
    start = torch.full((B,), vocab.start, dtype=torch.long, device=annotations.device)
    first, state = model.step(start, model.init_state(annotations), mask)
    first = dataclasses.replace(first, **{f.name: getattr(first, f.name).index_select(0, rows)
                                          for f in dataclasses.fields(first)
                                          if isinstance(getattr(first, f.name), torch.Tensor)})
    return first, state.with_rows(rows), None if mask is None else mask.index_select(0, rows)


@torch.no_grad()
def beam_search(model, annotations: torch.Tensor, vocab: Vocabulary, beam_size: int = 3,
                max_len: int | None = None, length_penalty: float = 0.0,
                mask: torch.Tensor | None = None, no_repeat_ngram_size: int = 0,
                min_length: int = 0) -> list[Caption]:
    """Decode every image of `annotations` (B, L, D) at once; returns one `Caption` per image, in order.

    The controls follow Hugging Face `generate`: `length_penalty` is GNMT's alpha (see `_normalise`;
    it ranks the finished captions), `no_repeat_ngram_size` n > 0 forbids any n-gram of words a
    hypothesis already holds, `min_length` forbids <end> before that many words. All off (0), the
    search is the plain one."""
    if beam_size < 1:
        raise ValueError(f"beam size must be at least 1, got {beam_size}")
    if no_repeat_ngram_size < 0 or min_length < 0:
        raise ValueError("no_repeat_ngram_size and min_length must be zero or more")
    max_len = max_len or model.config.max_len
    B, L, _ = annotations.shape
    K, V = beam_size, len(vocab)
    device = annotations.device
    inf = float("-inf")
    check_every = steps_between_checks(device.type)
    never = torch.tensor([vocab.pad, vocab.start, vocab.unk], device=device)      # words never written
    out, state, mask = _first_step(model, annotations, vocab, K, mask)
    # Live hypotheses: K slots per image; a slot with score -inf holds none. Only beam 0 is alive
    # at first, so the first step does not pick K copies of one word.
    scores = torch.full((B, K), inf, device=device)
    scores[:, 0] = 0.0
    live = _Hypotheses.empty(B, K, 0, L, vocab.pad, device)
    # The pool of finished hypotheses (arctic-captions' gen_sample: `sample`, `dead_k`): a
    # hypothesis that emits <end> leaves the beam for good, so extensions of other beams can never
    # push it out, and the image's live beam narrows to K - (number finished). Up to K per image,
    # in slots 0 .. K-1; every step writes all K survivors at once, the ones that did not end into
    # the scratch slots K .. 2K-1 (one each), so no step has to ask which ones ended.
    done = torch.zeros(B, dtype=torch.long, device=device)                         # (B,) dead_k
    pool = _Hypotheses.empty(B, 2 * K, max_len, L, vocab.pad, device)
    pool_scores = torch.full((B, 2 * K), inf, device=device)
    pool_length = torch.zeros(B, 2 * K, dtype=torch.long, device=device)
    rank = torch.arange(K, device=device)
    scratch = K + rank                                                             # (K,) slots K .. 2K-1
    image_offset = (torch.arange(B, device=device) * K).unsqueeze(1)              # (B, 1)
    for step in range(max_len):
        log_probs = torch.log_softmax(out.logits.float(), dim=-1)                 # (N, V)
        log_probs.index_fill_(1, never, inf)                                      # never written (see above)
        if step < min_length:                                                     # too short to end
            log_probs[:, vocab.end] = inf
        if no_repeat_ngram_size:
            log_probs.masked_fill_(_banned_repeats(live.tokens.view(B * K, step), no_repeat_ngram_size, V), inf)
        candidates = (scores.unsqueeze(-1) + log_probs.view(B, K, V)).view(B, K * V)  # (B, K, V) -> (B, K*V)
        scores, flat = candidates.topk(K, dim=1)                                  # (B, K), best first
        scores = scores.masked_fill(rank >= (K - done).unsqueeze(1), inf)         # keep the K - dead_k best
        # Which beam each survivor extends, and with which word. Floor division on integer
        # tensors, never true division: float indices would silently be wrong.
        parent, word = torch.div(flat, V, rounding_mode="floor"), flat % V        # (B, K), (B, K)
        state = state.with_rows((image_offset + parent).view(-1))                 # (B, K) -> (N,)
        live = live.extend(parent, word, out)
        ended = (word == vocab.end) & (scores > inf)                              # (B, K)
        # Into the pool: the ended ones to the next free places, in rank order; the others to scratch.
        slot = torch.where(ended, done.unsqueeze(1) + ended.long().cumsum(dim=1) - 1, scratch)  # (B, K)
        pool_scores.scatter_(1, slot, scores)
        pool_length.scatter_(1, slot, torch.full_like(slot, step + 1))           # tokens, <end> included
        for kept, new in zip(pool.parts(), live.parts()):
            kept[:, :, :step + 1].scatter_(1, slot.view(B, K, *[1] * (new.dim() - 2)).expand_as(new), new)
        done = done + ended.sum(dim=1)
        scores = scores.masked_fill(ended, inf)
        if step + 1 == max_len:
            break
        if (step + 1) % check_every == 0 and not bool((scores > inf).any()):     # every image has K finished
            break
        out, state = model.step(word.view(-1), state, mask)
    finished = _Hypotheses(*(t[:, :K] for t in pool.parts()))                     # without the scratch slots
    return _captions(vocab, finished, pool_scores[:, :K], pool_length[:, :K], live, scores, max_len, length_penalty)


def _captions(vocab, pool: _Hypotheses, pool_scores, pool_length, live: _Hypotheses, scores, max_len: int,
              length_penalty: float) -> list[Caption]:
    """What is left alive reached max_len without <end>: it joins the finished ones (gen_sample
    "dumps every remaining one"), and the best of them all is the caption. Together at most K."""
    inf = float("-inf")
    S = live.tokens.shape[2]
    every = torch.cat([pool_scores, scores], dim=1)                               # (B, 2K)
    length = torch.cat([pool_length, torch.full_like(pool_length, S)], dim=1)
    both = _Hypotheses(*(torch.cat([p, s], dim=1) for p, s in zip(pool.parts(),
                                                                  live.padded(max_len, vocab.pad).parts())))
    finished = torch.cat([torch.ones_like(pool_scores, dtype=torch.bool),
                          torch.zeros_like(scores, dtype=torch.bool)], dim=1)
    ranked = _normalise(every, length, length_penalty)
    # Empty slots rank last whatever the normalisation (their score stays -inf).
    order = ranked.masked_fill(every == inf, inf).argsort(dim=1, descending=True)  # (B, 2K)
    every, ranked, order, finished = every.cpu(), ranked.cpu(), order.cpu(), finished.cpu()
    tokens, alphas, betas, locations = (t.cpu() for t in both.parts())
    has_locations = bool((locations >= 0).any())
    results = []
    for b in range(every.shape[0]):  # unpacking into Python objects only; the search itself is batched
        cands = [(vocab.decode(tokens[b, k].tolist()), float(every[b, k])) for k in order[b].tolist()
                 if every[b, k] != inf]
        best = int(order[b, 0])
        words = vocab.decode(tokens[b, best].tolist())
        n = len(words)
        results.append(Caption(words=words, log_prob=float(every[b, best]), score=float(ranked[b, best]),
                               alphas=alphas[b, best, :n], betas=betas[b, best, :n],
                               finished=bool(finished[b, best]), candidates=cands,
                               locations=locations[b, best, :n] if has_locations else None))
    return results


@torch.no_grad()
def sample_captions(model, annotations: torch.Tensor, vocab: Vocabulary, num_samples: int = 5,
                    max_len: int | None = None) -> torch.Tensor:
    """Draw `num_samples` captions per image of `annotations` (B, L, D) from the model's own
    distribution (torch's global RNG, so an exact resume replays them), under the search's rules:
    <pad>, <start> and <unk> are never written. Returns tokens (B * num_samples, T) long, the
    samples of image b in rows b*S .. b*S + S - 1, each ending with <end> (or cut at max_len) and
    then <pad>. Self-critical training scores these (losses.self_critical_loss)."""
    max_len = max_len or model.config.max_len
    B, S = annotations.shape[0], num_samples
    out, state, _ = _first_step(model, annotations, vocab, S, None)
    tokens = torch.full((B * S, max_len), vocab.pad, dtype=torch.long, device=annotations.device)
    running = torch.ones(B * S, dtype=torch.bool, device=annotations.device)
    for step in range(max_len):
        logits = out.logits.float()
        logits[:, [vocab.pad, vocab.start, vocab.unk]] = float("-inf")
        word = torch.multinomial(torch.softmax(logits, dim=-1), 1).squeeze(1)       # (N,)
        tokens[:, step] = torch.where(running, word, torch.full_like(word, vocab.pad))
        running = running & (word != vocab.end)
        if step + 1 == max_len or not bool(running.any()):
            break
        out, state = model.step(word, state)
    return tokens
