"""What a set of generated captions looks like beyond n-gram scores: length, vocabulary used,
repeated phrases, the most frequent captions, and which words carry content.

A *content* word is any word outside `FUNCTION_WORDS` (articles, prepositions, conjunctions,
pronouns, auxiliaries, numerals' stand-ins such as "some"): the words that say what is in the
photo, and the ones whose attention a user reads. A *repeated content bigram* is a pair of
consecutive words occurring twice in one caption where at least one of the two is a content word
("a blue shirt and a blue shirt", "riding a horse on a horse"), so "in a ... in a" does not count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every another other
in on at of to from with without by for into onto over under above below behind beside between
near through across along around up down out off about against toward towards while during after
before past inside outside upon next front top
and or but so as than then
is are was were be been being am has have had does do did can could will would should may might
it its it's he she they them their his her him we us our you your i me my one ones
there here who whom which what where when
""".split())


def is_content(word: str) -> bool:
    return word not in FUNCTION_WORDS and word.isalpha()


def has_repeated_content_bigram(words: Sequence[str]) -> bool:
    """True when some bigram with a content word occurs at least twice in `words`."""
    seen = set()
    for pair in zip(words, words[1:]):
        if not (is_content(pair[0]) or is_content(pair[1])):
            continue
        if pair in seen:
            return True
        seen.add(pair)
    return False


def caption_statistics(captions: Sequence[Sequence[str]], top: int = 10) -> dict:
    """Statistics of a set of captions (each a list of words): share with a repeated content
    bigram, mean length in words, distinct words, share starting "a man", and the `top` most
    frequent captions with their counts."""
    n = max(1, len(captions))
    counts = Counter(" ".join(c) for c in captions)
    return {
        "captions": len(captions),
        "repeated_content_bigram": sum(has_repeated_content_bigram(c) for c in captions) / n,
        "mean_length": sum(len(c) for c in captions) / n,
        "distinct_words": len({w for c in captions for w in c}),
        "starts_a_man": sum(list(c[:2]) == ["a", "man"] for c in captions) / n,
        "most_frequent": counts.most_common(top),
    }
