"""CIDEr-D as a training reward (self-critical sequence training, Rennie et al. 2017).

Dimensions: B images, S samples per image, R references of an image.

The score is pycocoevalcap's CIDEr-D (`pycocoevalcap.cider.cider_scorer`: tf-idf vectors of 1- to
4-grams, the clipped cosine similarity with a Gaussian length penalty, sigma 6, averaged over the
references and the four n, times 10), with two differences that a reward needs and the package
lacks:

- the document frequencies are computed once, from a fixed corpus of references (the training
  split's), not from the set being scored, so a sample's reward does not depend on its batch;
- the n-gram counts are the package's own (`precook`), and every reference's tf-idf vector is
  computed once and kept.

Given the same document frequencies (those of the scored set, as `CiderD.from_references(refs)`
over that set), it equals the package's score; a test checks that to 1e-6.
Captions are lists of words. `end` (e.g. "<end>") is appended to every caption and reference when
given: counting the end of a caption in the n-grams is what keeps the reward from favouring
captions cut off mid-phrase (Rennie et al. 2017 count it; without it CIDEr rises for truncation).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

from pycocoevalcap.cider.cider_scorer import precook

N = 4           # n-grams of 1..4 words
SIGMA = 6.0     # the Gaussian length penalty of CIDEr-D


class _Vector:
    """A caption's tf-idf vector per n, its norms, and its "length" as the package counts it (the
    number of bigrams, a quirk of cider_scorer.counts2vec kept so the scores agree)."""

    __slots__ = ("vec", "norm", "length")

    def __init__(self, counts: dict, df: dict, log_corpus: float):
        self.vec = [dict() for _ in range(N)]
        norm = [0.0] * N
        self.length = 0
        for ngram, tf in counts.items():
            n = len(ngram) - 1
            value = float(tf) * (log_corpus - math.log(max(1.0, df.get(ngram, 0.0))))
            self.vec[n][ngram] = value
            norm[n] += value * value
            if n == 1:
                self.length += tf
        self.norm = [math.sqrt(x) for x in norm]


def _similarity(hyp: _Vector, ref: _Vector) -> list[float]:
    delta = float(hyp.length - ref.length)
    penalty = math.exp(-(delta ** 2) / (2 * SIGMA ** 2))
    values = []
    for n in range(N):
        ref_n = ref.vec[n]
        value = sum(min(h, ref_n.get(g, 0.0)) * ref_n.get(g, 0.0) for g, h in hyp.vec[n].items())
        if hyp.norm[n] != 0 and ref.norm[n] != 0:
            value /= hyp.norm[n] * ref.norm[n]
        values.append(value * penalty)
    return values


class CiderD:
    """CIDEr-D with document frequencies fixed from a corpus of reference sets (one per image)."""

    def __init__(self, document_frequency: dict, num_images: int, end: str | None = None):
        self.df = dict(document_frequency)
        self.log_corpus = math.log(float(num_images))
        self.end = end
        self._refs: dict = {}

    @classmethod
    def from_references(cls, references: Iterable[Sequence[Sequence[str]]], end: str | None = None) -> CiderD:
        """Document frequencies of the n-grams of `references` (per image, a list of word lists):
        in how many images' reference sets each n-gram occurs."""
        df: dict = defaultdict(float)
        count = 0
        for refs in references:
            count += 1
            seen = set()
            for ref in refs:
                seen.update(precook(" ".join(_with_end(ref, end)), N))
            for ngram in seen:
                df[ngram] += 1
        if count == 0:
            raise ValueError("CIDEr-D needs at least one reference set")
        return cls(df, count, end)

    def _vector(self, words: Sequence[str]) -> _Vector:
        return _Vector(precook(" ".join(_with_end(words, self.end)), N), self.df, self.log_corpus)

    def _reference_vectors(self, refs: Sequence[Sequence[str]]) -> list[_Vector]:
        key = tuple(tuple(r) for r in refs)
        vectors = self._refs.get(key)
        if vectors is None:
            if len(self._refs) > 100_000:  # a bound on memory over a long run
                self._refs.clear()
            vectors = self._refs[key] = [self._vector(r) for r in refs]
        return vectors

    def score(self, caption: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
        """CIDEr-D of one caption against its image's references."""
        if not refs:
            raise ValueError("an image has no references")
        hyp = self._vector(caption)
        total = [0.0] * N
        for ref in self._reference_vectors(refs):
            total = [t + s for t, s in zip(total, _similarity(hyp, ref))]
        return sum(total) / N / len(refs) * 10.0

    def scores(self, captions: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]]) -> list[float]:
        """One score per caption; `references[i]` are caption i's image's references."""
        if len(captions) != len(references):
            raise ValueError(f"{len(captions)} captions but {len(references)} reference sets")
        return [self.score(c, r) for c, r in zip(captions, references)]


def _with_end(words: Sequence[str], end: str | None) -> list[str]:
    return list(words) + ([end] if end else [])
