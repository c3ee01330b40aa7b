"""Caption metrics computed the way the coco-caption toolkit (pycocoevalcap) computes them.

BLEU here is corpus-level with the toolkit's "closest reference length" brevity penalty and its
smoothing constants, so that numbers match its tables. Inputs are already tokenised.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

_TINY, _SMALL = 1e-15, 1e-9  # the toolkit's constants (bleu_scorer.py)


def _ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def bleu_stats(hypothesis: Sequence[str], references: Sequence[Sequence[str]], n: int = 4):
    """(test length, closest reference length, guesses per order, matches per order)."""
    max_ref = Counter()
    for ref in references:
        for gram, count in _ngrams(ref, n).items():
            max_ref[gram] = max(max_ref[gram], count)
    hyp = _ngrams(hypothesis, n)
    length = len(hypothesis)
    # Closest reference length; ties go to the shorter reference, as in the toolkit.
    ref_len = min((abs(len(r) - length), len(r)) for r in references)[1]
    guess = [max(0, length - k) for k in range(n)]
    correct = [0] * n
    for gram, count in hyp.items():
        correct[len(gram) - 1] += min(count, max_ref.get(gram, 0))
    return length, ref_len, guess, correct


def corpus_bleu(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]],
                n: int = 4) -> list[float]:
    """BLEU-1..n over a corpus, each image's hypothesis scored against all its references."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference sets")
    test_len = ref_len = 0
    guess, correct = [0] * n, [0] * n
    for hyp, refs in zip(hypotheses, references):
        if not refs:
            raise ValueError("an image has no references")
        t, r, g, c = bleu_stats(hyp, refs, n)
        test_len += t
        ref_len += r
        guess = [a + b for a, b in zip(guess, g)]
        correct = [a + b for a, b in zip(correct, c)]
    scores, product = [], 1.0
    for k in range(n):
        product *= (correct[k] + _TINY) / (guess[k] + _SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + _TINY) / (ref_len + _SMALL)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores
