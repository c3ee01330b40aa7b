"""The coco-caption metrics in captioner.metrics: the toolkit's BLEU, ROUGE-L and CIDEr-D against
hand-computed values and its quirks, the PTB tokenisations (Java and pure Python) and the no-Java path."""

from __future__ import annotations

import math
import random
import shutil

import pytest

from captioner import metrics
from captioner.metrics import BLEU, coco_scores, ptb_tokenize, toolkit_scores

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java (the toolkit's tokeniser)")


def words(text: str) -> list[str]:
    return text.split()


def bleu_scores(hypotheses, references):
    """(corpus BLEU-1..4, each image's BLEU-1..4) of tokenised captions, by `toolkit_scores`."""
    overall, rows = toolkit_scores(hypotheses, references, BLEU)
    return [overall[m] for m in BLEU], [[row[m] for m in BLEU] for row in rows]


def sentence_bleu(hypothesis, references):
    return bleu_scores([hypothesis], [references])[0]


def rouge_l(hypothesis, references):
    return toolkit_scores([hypothesis], [references], ["ROUGE_L"])[0]["ROUGE_L"]


def cider_d(hypotheses, references):
    overall, rows = toolkit_scores(hypotheses, references, ["CIDEr"])
    return overall["CIDEr"], [row["CIDEr"] for row in rows]


# ---------------------------------------------------------------------------------------- BLEU


def test_bleu_matches_hand_computed_precisions():
    # 1-grams 5/6, 2-grams 3/5, 3-grams 1/4, 4-grams 0/3; equal lengths, so no brevity penalty.
    b1, b2, b3, b4 = sentence_bleu(words("the cat sat on the mat"), [words("the cat is on the mat")])
    assert b1 == pytest.approx(5 / 6)
    assert b2 == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert b3 == pytest.approx(0.5)
    # No 4-gram matches: the toolkit's 1e-15 smoothing leaves a tiny positive number, not zero.
    assert b4 == pytest.approx((0.125 * 1e-15 / 3) ** 0.25, rel=1e-6)


def test_bleu_brevity_penalty_uses_closest_reference_length():
    hyp = words("the cat")
    b1, b2, _, _ = sentence_bleu(hyp, [words("the cat is on the mat")])
    assert b1 == pytest.approx(math.exp(1 - 6 / 2))
    assert b2 == pytest.approx(math.exp(1 - 6 / 2))
    # 6 words: a 7-word reference is closer than a 4-word one, so BP = exp(1 - 7/6).
    b1, *_ = sentence_bleu(words("a b c d e f"), [words("a b c d"), words("a b c d e f g")])
    assert b1 == pytest.approx(math.exp(1 - 7 / 6))
    # A tie (5 and 7 words around 6) goes to the shorter one: no penalty.
    b1, *_ = sentence_bleu(words("a b c d e f"), [words("a b c d e"), words("a b c d e f g")])
    assert b1 == pytest.approx(1.0)


def test_identical_hypotheses_and_references_give_bleu_one():
    caption = "a man riding a wave on top of a surfboard"
    scores = coco_scores([caption, "two dogs play in the snow"], [[caption], ["two dogs play in the snow"]],
                         java=False)
    for k in range(1, 5):
        assert scores.overall[f"Bleu_{k}"] == pytest.approx(1.0, abs=1e-9)
        assert all(row[f"Bleu_{k}"] == pytest.approx(1.0, abs=1e-9) for row in scores.per_image)


def test_corpus_bleu_pools_counts_rather_than_averaging_images():
    hyps = [words("a b c d"), words("x y")]
    refs = [[words("a b c d")], [words("x z")]]
    corpus, per_image = bleu_scores(hyps, refs)
    # Pooled 1-gram precision (4 + 1) / (4 + 2), not the mean of 1 and 1/2.
    assert corpus[0] == pytest.approx(5 / 6)
    assert per_image[1][0] == pytest.approx(0.5)


def test_bleu_equals_the_toolkit_scorer():
    from pycocoevalcap.bleu.bleu import Bleu

    rng = random.Random(0)
    vocab = "a the man dog red ball runs on grass field".split()
    gts, res = {}, {}
    for i in range(30):
        gts[i] = [" ".join(rng.choices(vocab, k=rng.randint(3, 9))) for _ in range(rng.randint(1, 5))]
        res[i] = [" ".join(rng.choices(vocab, k=rng.randint(1, 9)))]
    expected, expected_each = Bleu(4).compute_score(gts, res, verbose=0)
    ours, ours_each = bleu_scores([words(res[i][0]) for i in gts], [[words(r) for r in gts[i]] for i in gts])
    assert ours == pytest.approx(expected, abs=1e-12)
    for k in range(4):
        assert [row[k] for row in ours_each] == pytest.approx(expected_each[k], abs=1e-12)


# ------------------------------------------------------------------------------------- ROUGE-L


def test_rouge_l_matches_hand_computed_f_measure():
    # LCS "a c d" = 3: precision 3/4, recall 3/5, beta 1.2.
    p, r = 3 / 4, 3 / 5
    assert rouge_l(words("a b c d"), [words("a c d e f")]) == pytest.approx((1 + 1.44) * p * r / (r + 1.44 * p))


def test_rouge_l_maximises_precision_and_recall_over_references_separately():
    hyp = words("a b")
    # Best precision 1 (from "a b c d"), best recall 1 (from "a"): F = 1, as in the toolkit.
    assert rouge_l(hyp, [words("a b c d"), words("a")]) == pytest.approx(1.0)


def test_rouge_l_equals_the_toolkit_scorer_including_empty_captions():
    from pycocoevalcap.rouge.rouge import Rouge

    cases = [("a man on a horse", ["a man rides a horse", "a horse"]), ("", ["a dog"]), ("", ["", "a cat"]),
             ("a dog", [""]), ("the the the", ["the cat"])]
    toolkit = Rouge()
    for hyp, refs in cases:
        assert rouge_l(words(hyp), [words(r) for r in refs]) == pytest.approx(toolkit.calc_score([hyp], refs))


# --------------------------------------------------------------------------------------- CIDEr


def test_cider_identical_two_word_captions_score_five():
    # Every n-gram has document frequency 1 of 2 images, so weight log 2. Orders 1 and 2 have
    # cosine 1, orders 3 and 4 have no n-grams (0): mean 0.5, times 10.
    score, each = cider_d([words("a b"), words("c d")], [[words("a b")], [words("c d")]])
    assert each == pytest.approx([5.0, 5.0])
    assert score == pytest.approx(5.0)


def test_cider_clips_repeated_words():
    # Hypothesis "a a" vs reference "a b", weights all log 2: unigram vectors (2w) and (w, w);
    # clipped dot min(2w, w) * w = w^2 over norms 2w * sqrt(2) w = 1 / (2 sqrt 2); no bigram match.
    _, each = cider_d([words("a a"), words("c d")], [[words("a b")], [words("c d")]])
    assert each[0] == pytest.approx(10 * (1 / (2 * math.sqrt(2))) / 4)


def test_cider_applies_gaussian_length_penalty_sigma_six():
    # "a" vs "a a": unigram cosine 1, no hypothesis bigrams; one word apart: exp(-1 / 72).
    _, each = cider_d([words("a"), words("c d")], [[words("a a")], [words("c d")]])
    assert each[0] == pytest.approx(10 * math.exp(-1 / 72) / 4)


def test_cider_document_frequency_comes_from_the_evaluated_set():
    # "a dog" vs "a cat": with "a" in one image's references of two, unigram cosine 1/2 -> 1.25;
    # once every image's references contain "a", its weight log(2/2) is 0 and nothing matches.
    _, rare = cider_d([words("a dog"), words("x y")], [[words("a cat")], [words("x y")]])
    _, common = cider_d([words("a dog"), words("a y")], [[words("a cat")], [words("a y")]])
    assert rare[0] == pytest.approx(1.25)
    assert common[0] == pytest.approx(0.0)


def test_cider_equals_the_toolkit_scorer():
    from pycocoevalcap.cider.cider import Cider

    rng = random.Random(2)
    vocab = "a the man dog red ball runs on grass field with".split()
    gts = {i: [" ".join(rng.choices(vocab, k=rng.randint(2, 10))) for _ in range(rng.randint(1, 5))]
           for i in range(40)}
    res = {i: [" ".join(rng.choices(vocab, k=rng.randint(1, 10)))] for i in range(40)}
    expected, expected_each = Cider().compute_score(gts, res)
    ours, ours_each = cider_d([words(res[i][0]) for i in gts], [[words(r) for r in gts[i]] for i in gts])
    assert ours == pytest.approx(float(expected), abs=1e-12)
    assert ours_each == pytest.approx(list(expected_each), abs=1e-12)


# -------------------------------------------------------------------------------- tokenisation

PTB_CASES = {
    "A man's hat.": ["a", "man", "'s", "hat"],
    "They don't, can't and won't.": ["they", "do", "n't", "ca", "n't", "and", "wo", "n't"],
    "A dog (a puppy) runs!!": ["a", "dog", "-lrb-", "a", "puppy", "-rrb-", "runs", "!!"],
    'A sign that reads "STOP".': ["a", "sign", "that", "reads", "stop"],
    "Traffic on St. Louis Ave. in the U.S.": ["traffic", "on", "st.", "louis", "ave.", "in", "the", "u.s."],
    "10,000 people at 6:40pm; wow": ["10,000", "people", "at", "6:40", "pm", "wow"],
    "A black-and-white photo -- of a T.V.": ["a", "black-and-white", "photo", "of", "a", "t.v."],
    "I cannot go, gonna stay": ["i", "can", "not", "go", "gon", "na", "stay"],
    "Rock'n'roll at O'Neil's, y'all": ["rock", "'n'", "roll", "at", "o'neil", "'s", "y'", "all"],
    "\u201cQuoted\u201d caf\u00e9\u2026": ["quoted", "caf\u00e9"],
}


@pytest.mark.parametrize("text", list(PTB_CASES))
def test_python_ptb_tokenisation_follows_the_java_tokeniser_rules(text):
    assert ptb_tokenize(text) == PTB_CASES[text]


@needs_java
def test_java_and_python_tokenisations_agree():
    texts = list(PTB_CASES) + ["A group of people standing around a table.", "Two giraffes, one eating.",
                               "The boys' bikes are parked outside a cafe!"]
    assert metrics.ptb_tokenize_java(texts) == [ptb_tokenize(t) for t in texts]


@needs_java
def test_java_tokenisation_keeps_one_line_per_caption_whatever_the_line_breaks():
    texts = ["a dog\ron grass", "", "two\u2028cats", "   ", "a bird"]
    assert metrics.ptb_tokenize_java(texts) == [["a", "dog", "on", "grass"], [], ["two", "cats"], [], ["a", "bird"]]


# ------------------------------------------------------------------------------- the no-Java path


def test_without_java_meteor_is_omitted_with_a_warning_naming_java(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name, *a, **k: None)

    def no_java_here(*args, **kwargs):
        raise AssertionError("Java was started although it is hidden")

    monkeypatch.setattr(metrics.subprocess, "run", no_java_here)
    monkeypatch.setattr(metrics.subprocess, "Popen", no_java_here)
    scores = coco_scores(["A man rides a horse."], [["A man riding a horse.", "A horse and its rider."]])
    assert scores.tokenizer == "python-ptb"
    assert "METEOR" not in scores.overall
    assert set(scores.overall) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    assert any("METEOR" in w and "Java" in w for w in scores.warnings)


def test_meteor_without_java_raises_a_one_line_java_error(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(metrics.JavaError, match="java"):
        metrics.meteor([words("a dog")], [[words("a dog")]])


def test_coco_scores_requires_references_for_every_image():
    with pytest.raises(ValueError, match="no references"):
        coco_scores(["a dog"], [[]], java=False)


def test_a_failing_java_tokeniser_falls_back_to_python_and_says_so(monkeypatch):
    def broken(*args, **kwargs):
        raise metrics.JavaError("the PTB tokeniser failed (java exit status 1)")

    monkeypatch.setattr(metrics.shutil, "which", lambda name, *a, **k: "/usr/bin/java")
    monkeypatch.setattr(metrics, "ptb_tokenize_java", broken)
    monkeypatch.setattr(metrics, "_start_meteor", broken)
    scores = coco_scores(["A dog runs."], [["A dog is running."]])
    assert scores.tokenizer == "python-ptb" and "METEOR" not in scores.overall
    assert any("PTB tokeniser failed" in w for w in scores.warnings)
    with pytest.raises(metrics.JavaError):
        coco_scores(["A dog runs."], [["A dog is running."]], java=True)
