"""`python -m captioner.evaluate`: results files scored like the official toolkit, checkpoint
evaluation through the same scorer, the no-Java path, and one-line errors for bad input.
Every fixture is made here, in tmp_path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captioner import evaluate, metrics
from captioner.metrics import BLEU, ptb_tokenize, toolkit_scores

ROOT = Path(__file__).resolve().parent.parent
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java (the toolkit's tokeniser, METEOR)")

REFERENCES = {
    1: ["A man riding a horse on a beach.", "A person rides a brown horse along the shore!",
        "Man on horseback (at sunset)."],
    2: ["Two dogs play with a red ball in the grass.", "A couple of dogs chasing a ball.",
        "The dogs' toys are on the lawn."],
    3: ["A kitchen with a stove, a sink and a fridge.", "A small kitchen that's clean and white.",
        "\"Modern\" kitchen interior."],
    4: ["A plate of food with broccoli and rice.", "Broccoli, rice & chicken on a plate.",
        "A healthy meal, isn't it?"],
}
RESULTS = {1: "A man rides a horse on the beach.", 2: "Two dogs playing with a ball.",
           3: "A kitchen with a white stove and sink.", 4: "A plate of rice and broccoli."}
METRIC_KEYS = {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}


def write_references(path: Path, references: dict) -> Path:
    annotations = [{"id": n, "image_id": image_id, "caption": caption}
                   for n, (image_id, caption) in enumerate((i, c) for i, caps in references.items() for c in caps)]
    path.write_text(json.dumps({"images": [{"id": i} for i in references], "annotations": annotations}))
    return path


def write_results(path: Path, results) -> Path:
    path.write_text(json.dumps(results if isinstance(results, list)
                               else [{"image_id": i, "caption": c} for i, c in results.items()]))
    return path


@pytest.fixture
def files(tmp_path):
    return write_references(tmp_path / "refs.json", REFERENCES), write_results(tmp_path / "res.json", RESULTS)


def run_main(capsys, *argv) -> tuple[int, str, str]:
    code = evaluate.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


# The toolkit's own METEOR (pycocoevalcap 1.2's Meteor class, meteor-1.5.jar) on REFERENCES and
# RESULTS after its PTBTokenizer; recorded once, because a second METEOR Java start-up (it loads a
# paraphrase table) would double the time of the test below.
OFFICIAL_METEOR = 0.37932006604311763


def official_toolkit_scores(references: dict, results: dict) -> dict:
    """The toolkit's numbers but METEOR: its PTBTokenizer and scorers, called as COCOEvalCap calls them."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in caps] for i, caps in references.items()})
    res = tokenizer.tokenize({i: [{"caption": results[i]}] for i in references})
    scores = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores.update({f"Bleu_{k + 1}": b for k, b in enumerate(bleu)})
    scores["ROUGE_L"], _ = Rouge().compute_score(gts, res)
    scores["CIDEr"], _ = Cider().compute_score(gts, res)
    return {k: float(v) for k, v in scores.items()}


# ------------------------------------------------------------------------------ results files


@needs_java
def test_results_file_scores_equal_the_official_toolkit_and_meteor_java_is_closed(files, capsys, monkeypatch):
    from pycocoevalcap.meteor import meteor as meteor_module
    from pycocoevalcap.tokenizer import ptbtokenizer

    if not os.access(os.path.dirname(ptbtokenizer.__file__), os.W_OK):
        pytest.skip("the toolkit's own PTBTokenizer writes into its package folder, which is read-only here")
    started = []

    class RecordingMeteor(meteor_module.Meteor):
        def __init__(self):
            super().__init__()
            started.append(self)

    monkeypatch.setattr(meteor_module, "Meteor", RecordingMeteor)
    code, out, err = run_main(capsys, "--annotations", files[0], "--results", files[1])
    assert code == 0, err
    ours = last_json(out)
    assert set(ours) == METRIC_KEYS
    assert len(started) == 1 and started[0].meteor_p.poll() is not None, "METEOR's Java process was left running"
    monkeypatch.undo()
    official = dict(official_toolkit_scores(REFERENCES, RESULTS), METEOR=OFFICIAL_METEOR)
    for key in METRIC_KEYS:
        assert ours[key] == pytest.approx(official[key], abs=1e-6), key
    assert sum("SPICE" in line for line in err.splitlines()) == 1


def test_per_image_file_holds_every_image_scores_in_results_order(files, tmp_path, capsys):
    per_image = tmp_path / "per_image.json"
    code, out, _ = run_main(capsys, "--annotations", files[0], "--results", files[1], "--no-java",
                            "--per-image", per_image)
    assert code == 0
    rows = json.loads(per_image.read_text())
    assert [row["image_id"] for row in rows] == list(RESULTS)
    assert [row["caption"] for row in rows] == list(RESULTS.values())
    for row in rows:
        refs = [ptb_tokenize(r) for r in REFERENCES[row["image_id"]]]
        expected = toolkit_scores([ptb_tokenize(row["caption"])], [refs], BLEU)[0]       # one image alone
        assert [row[m] for m in BLEU] == pytest.approx([expected[m] for m in BLEU])
        assert {"ROUGE_L", "CIDEr"} <= set(row)
    summary = last_json(out)
    assert summary["ROUGE_L"] == pytest.approx(sum(row["ROUGE_L"] for row in rows) / len(rows))
    assert summary["CIDEr"] == pytest.approx(sum(row["CIDEr"] for row in rows) / len(rows))


def test_results_naming_some_reference_images_score_only_those(tmp_path, capsys):
    refs = write_references(tmp_path / "refs.json", REFERENCES)
    res = write_results(tmp_path / "res.json", {1: RESULTS[1], 3: RESULTS[3]})
    code, out, err = run_main(capsys, "--annotations", refs, "--results", res, "--no-java",
                              "--per-image", tmp_path / "pi.json")
    assert code == 0
    assert [row["image_id"] for row in json.loads((tmp_path / "pi.json").read_text())] == [1, 3]
    assert "2 of the 4 reference images" in err


def test_without_java_meteor_is_omitted_and_the_warning_names_java(files, capsys, monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name, *a, **k: None)
    code, out, err = run_main(capsys, "--annotations", files[0], "--results", files[1])
    assert code == 0
    assert set(last_json(out)) == METRIC_KEYS - {"METEOR"}
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "METEOR" in warning[0] and "Java" in warning[0]


def test_module_entry_point_hides_java_by_path_and_prints_json_last(files):
    # Only the interpreter's own folder on PATH: no `java` can be found.
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))
    done = subprocess.run([sys.executable, "-m", "captioner.evaluate", "--annotations", str(files[0]),
                           "--results", str(files[1])], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    summary = last_json(done.stdout)
    assert set(summary) == METRIC_KEYS - {"METEOR"}
    assert all(0.0 <= v <= 10.0 for v in summary.values())
    assert "Java" in done.stderr and "SPICE" in done.stderr


# ------------------------------------------------------------------------------- bad input

MALFORMED = {
    "missing results file": (None, "results file not found"),
    "results not a list": ({"image_id": 1, "caption": "a dog"}, "must be a JSON list"),
    "results not JSON": ("[{\"image_id\": 1, ", "malformed JSON"),
    "empty caption": ([{"image_id": 1, "caption": "   "}], "empty caption"),
    "image not in references": ([{"image_id": 99, "caption": "a dog"}], "image 99 is not in the references"),
    "image as string": ([{"image_id": "1", "caption": "a dog"}], "same JSON type"),
    "two captions for one image": ([{"image_id": 1, "caption": "a dog"}, {"image_id": 1, "caption": "a cat"}],
                                   "more than one caption"),
    "caption not a string": ([{"image_id": 1, "caption": 5}], "not a string"),
    "entry without caption": ([{"image_id": 1}], "\"image_id\" and \"caption\""),
    "empty list": ([], "holds no results"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_results_give_one_clear_line_and_exit_2(case, tmp_path, capsys):
    content, message = MALFORMED[case]
    refs = write_references(tmp_path / "refs.json", REFERENCES)
    res = tmp_path / "res.json"
    if content is not None:
        res.write_text(content if isinstance(content, str) else json.dumps(content))
    code, out, err = run_main(capsys, "--annotations", refs, "--results", res, "--no-java")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(res) in lines[0]
    assert message in lines[0]
    assert out == ""


@pytest.mark.parametrize("content, message", [
    (None, "references file not found"),
    ([{"image_id": 1, "caption": "a dog"}], "not a COCO captions file"),
    ({"annotations": [{"image_id": 1}]}, "\"image_id\" and \"caption\""),
    ({"annotations": []}, "no reference captions"),
])
def test_malformed_references_give_one_clear_line_and_exit_2(content, message, tmp_path, capsys):
    refs = tmp_path / "refs.json"
    if content is not None:
        refs.write_text(json.dumps(content))
    res = write_results(tmp_path / "res.json", RESULTS)
    code, _, err = run_main(capsys, "--annotations", refs, "--results", res, "--no-java")
    assert code == 2
    assert err.count("\n") == 1 and str(refs) in err and message in err


def test_malformed_input_through_the_module_has_no_traceback(tmp_path):
    refs = write_references(tmp_path / "refs.json", REFERENCES)
    res = tmp_path / "res.json"
    res.write_text(json.dumps({"image_id": 1, "caption": "a dog"}))
    done = subprocess.run([sys.executable, "-m", "captioner.evaluate", "--annotations", str(refs), "--results",
                           str(res)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == (f"error: {res}: a results file must be a JSON list of {{\"image_id\", "
                                   f"\"caption\"}} objects (COCO results format), found a JSON object")


def test_results_and_checkpoint_modes_cannot_be_mixed(files, capsys):
    code, _, err = run_main(capsys, "--annotations", files[0], "--results", files[1], "--dataset", "shapes")
    assert code == 2 and "choose one" in err


def test_every_flag_has_help():
    for action in evaluate.build_parser()._actions:
        assert action.help, action.option_strings


# ------------------------------------------------------------------------------ checkpoints


@pytest.fixture
def tiny_checkpoint(tmp_path):
    from captioner.checkpoint import save_checkpoint
    from captioner.config import ModelConfig
    from captioner.data import load_split
    from captioner.model import Captioner
    from captioner.training import build_vocab

    vocab = build_vocab(load_split("shapes", "train", image_size=32, num_images=20), 1)
    torch.manual_seed(0)
    model = Captioner(ModelConfig(vocab_size=len(vocab), encoder="vgg_tiny", image_size=32, encoder_dim=32,
                                  embed_dim=16, hidden_dim=32, attention_dim=16, positional="sine", max_len=8))
    with torch.no_grad():  # never <end> first: every decoded caption has words, so its results file is valid
        model.decoder.L_o.bias[vocab.end] = -30.0
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, model, vocab)
    return path


def test_checkpoint_mode_decodes_each_image_once_and_scores_with_the_results_file_scorer(
        tiny_checkpoint, tmp_path, capsys, monkeypatch):
    import captioner.data
    import captioner.inference

    decoded, loaded = [], []
    real_batch, real_split = captioner.inference.caption_batch, captioner.data.load_split

    def counting_batch(model, images, *args, **kwargs):
        decoded.append(len(images))
        return real_batch(model, images, *args, **kwargs)

    def recording_split(*args, **kwargs):
        images = real_split(*args, **kwargs)
        loaded.append(images)
        return images

    monkeypatch.setattr(captioner.inference, "caption_batch", counting_batch)
    monkeypatch.setattr(captioner.data, "load_split", recording_split)
    results = tmp_path / "decoded.json"
    code, out, err = run_main(capsys, "--weights", tiny_checkpoint, "--dataset", "shapes", "--split", "test",
                              "--num-images", 7, "--seed", 3, "--beam-size", 2, "--batch-size", 4,
                              "--results-out", results, "--device", "cpu", "--no-java")
    assert code == 0, err
    summary = last_json(out)
    assert sum(decoded) == 7
    (images,) = loaded
    assert images.seed == 3 + 2_000_000   # --seed names the run; the test split has its own generator seed
    assert {"Bleu_4", "ROUGE_L", "CIDEr", "attention_localization"} <= set(summary)
    assert 0.0 <= summary["attention_localization"] <= 1.0
    written = json.loads(results.read_text())
    assert [r["image_id"] for r in written] == list(range(7))

    # The same captions scored as a results file against the same references: the same numbers.
    refs = write_references(tmp_path / "refs.json", dict(zip(images.ids, images.references)))
    code, out, _ = run_main(capsys, "--annotations", refs, "--results", results, "--no-java")
    assert code == 0
    from_file = last_json(out)
    for key in from_file:
        assert summary[key] == pytest.approx(from_file[key], abs=1e-12), key


def test_checkpoint_mode_reports_an_unreadable_checkpoint_in_one_line(tmp_path, capsys):
    missing = tmp_path / "nothing.pt"
    code, out, err = run_main(capsys, "--weights", missing, "--dataset", "shapes", "--num-images", 2, "--no-java")
    assert code == 2 and out == ""
    assert err.strip() == f"error: {missing}: no such checkpoint file"


def test_checkpoint_mode_rejects_a_beam_size_below_one(tiny_checkpoint, capsys):
    code, _, err = run_main(capsys, "--weights", tiny_checkpoint, "--dataset", "shapes", "--beam-size", 0)
    assert code == 2 and "--beam-size" in err


# ---------------------------------------------------------------------------------------------
# Validation scores as evaluation does


class _References:
    """An image set as validation sees it: only `references` is read for BLEU."""

    def __init__(self, references):
        self.references = references


@pytest.mark.parametrize("java", ["as installed", "hidden"])
def test_validation_bleu_is_evaluations_bleu_for_the_same_captions(capsys, monkeypatch, java):
    from captioner.beam import Caption
    from captioner.inference import score_captions

    if java == "hidden":
        monkeypatch.setattr(metrics, "java_available", lambda: False)
    # References with tokens the two tokenisations treat differently ("&", "#", "@": kept by the
    # toolkit's PTB tokeniser, dropped by the vocabulary's NLTK one), hypotheses in vocabulary words.
    references = [["A dog & a cat on a sofa.", "Two pets on a couch."],
                  ["Player #7 kicks a ball @ the park.", "A man kicks a ball in a park."],
                  ["Fish & chips on a plate.", "A plate of fish and chips."]]
    words = [["a", "dog", "a", "cat", "on", "a", "sofa"], ["player", "7", "kicks", "a", "ball", "the", "park"],
             ["fish", "chips", "on", "a", "plate"]]
    captions = [Caption(words=w, log_prob=0.0, score=0.0, alphas=torch.zeros(len(w), 4), betas=torch.ones(len(w)),
                        finished=True) for w in words]
    validation = score_captions(captions, _References(references), grid_size=2)
    evaluation = evaluate.score_and_report(list(range(3)), [c.text for c in captions], references)
    capsys.readouterr()
    assert set(validation) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"}  # CIDEr: --select-by CIDEr
    for k in validation:
        assert validation[k] == evaluation[k], k
    assert evaluation["Bleu_4"] > 0
