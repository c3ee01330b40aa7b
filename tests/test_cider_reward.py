"""The self-critical reward: CIDEr-D with fixed document frequencies equals the toolkit's."""

from __future__ import annotations

import random

import pytest
from pycocoevalcap.cider.cider import Cider

from captioner.cider import CiderD

WORDS = "a man dog red ball runs on the grass two people in white shirt street".split()


def _random_caption(rng: random.Random) -> list[str]:
    return [rng.choice(WORDS) for _ in range(rng.randint(1, 12))]


def _corpus(seed: int, images: int = 30):
    rng = random.Random(seed)
    refs = [[_random_caption(rng) for _ in range(rng.randint(1, 5))] for _ in range(images)]
    hyps = [_random_caption(rng) for _ in range(images)]
    return hyps, refs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reward_equals_the_toolkits_cider_d(seed):
    hyps, refs = _corpus(seed)
    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(h)] for i, h in enumerate(hyps)}
    overall, each = Cider().compute_score(gts, res)
    ours = CiderD.from_references(refs).scores(hyps, refs)
    assert ours == pytest.approx(list(each), abs=1e-6)
    assert sum(ours) / len(ours) == pytest.approx(overall, abs=1e-6)


def test_end_token_is_counted_in_the_reward():
    refs = [[["a", "dog", "runs", "on", "the", "grass"]] * 3, [["two", "people", "in", "white"]] * 2]
    with_end = CiderD.from_references(refs, end="<end>")
    without = CiderD.from_references(refs)
    whole, cut = ["a", "dog", "runs", "on", "the", "grass"], ["a", "dog", "runs", "on", "the"]
    # A caption cut off before its last word loses more with <end> counted: its final n-grams
    # ("the grass <end>") are what the references end with.
    assert with_end.score(whole, refs[0]) > with_end.score(cut, refs[0])
    assert (with_end.score(whole, refs[0]) - with_end.score(cut, refs[0])
            > without.score(whole, refs[0]) - without.score(cut, refs[0]))


def test_document_frequencies_come_from_the_corpus_not_the_batch():
    _, refs = _corpus(5)
    scorer = CiderD.from_references(refs)
    caption = refs[3][0]
    alone = scorer.scores([caption], [refs[3]])[0]
    in_batch = scorer.scores([caption, caption], [refs[3], refs[4]])[0]
    assert alone == in_batch > 0
