"""The vocabulary (words <-> ids) and caption tokenisation (offline: nothing downloaded).

The vocabulary is built from training captions only and travels inside every
checkpoint as plain data (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)

_PUNCT = re.compile(r"^[^\w]+$")
_tokenizer = None


def tokenize(text: str) -> list[str]:
    """Lower-case, Penn-Treebank word split (no downloaded data needed), punctuation dropped."""
    global _tokenizer
    if _tokenizer is None:
        from nltk.tokenize import TreebankWordTokenizer  # imported on first use: keeps `import captioner` cheap

        _tokenizer = TreebankWordTokenizer()
    return [t for t in _tokenizer.tokenize(text.lower().strip()) if not _PUNCT.match(t)]


class Vocabulary:
    """Words <-> ids. Ids 0..3 are <pad> <start> <end> <unk>."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        if len(set(words)) != len(words):
            raise ValueError("vocabulary has repeated words")
        self.itos = words
        self.stoi = {w: i for i, w in enumerate(words)}

    pad = property(lambda self: 0)
    start = property(lambda self: 1)
    end = property(lambda self: 2)
    unk = property(lambda self: 3)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    @classmethod
    def build(cls, captions: Iterable[Sequence[str]], min_count: int = 5) -> Vocabulary:
        """From tokenised *training* captions; words seen fewer than `min_count` times become <unk>."""
        counts = Counter(w for caption in captions for w in caption)
        kept = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                      key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + kept)

    def encode(self, tokens: Sequence[str], max_len: int | None = None) -> list[int]:
        """<start> w1 .. wn <end>, truncated to `max_len` words."""
        if max_len is not None:
            tokens = tokens[:max_len]
        return [self.start] + [self.stoi.get(w, self.unk) for w in tokens] + [self.end]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words up to (not including) the first <end>; <start> and <pad> are skipped."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end:
                break
            if i in (self.pad, self.start):
                continue
            words.append(self.itos[i])
        return words

    def to_dict(self) -> dict:
        return {"itos": list(self.itos)}

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        if not isinstance(data, dict) or not isinstance(data.get("itos"), list):
            raise ValueError("vocabulary must be a dict with a list 'itos'")
        return cls(data["itos"])
