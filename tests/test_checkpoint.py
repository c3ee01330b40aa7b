"""Self-contained checkpoints: round trip, plain data only, clear refusals."""

from __future__ import annotations

import pytest
import torch
from conftest import random_annotations

from captioner.beam import beam_search
from captioner.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_captioner,
    read_checkpoint,
    save_checkpoint,
    with_digest,
)


def test_round_trip_gives_identical_outputs(tmp_path, make_model, words_vocab):
    model = make_model(3)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, words_vocab)
    loaded, vocab = load_captioner(path)
    assert vocab == words_vocab
    assert loaded.config == model.config
    images = torch.randn(2, 3, 32, 32)
    captions = torch.tensor([[1, 4, 5, 6], [1, 7, 8, 9]])
    with torch.no_grad():
        for a, b in zip(model(images, captions), loaded(images, captions)):
            assert torch.equal(a, b)
        annotations = random_annotations(model, 3)
        ours = beam_search(model, annotations, words_vocab, beam_size=3)
        theirs = beam_search(loaded, annotations, vocab, beam_size=3)
    assert [c.words for c in ours] == [c.words for c in theirs]
    assert [c.log_prob for c in ours] == [c.log_prob for c in theirs]


def test_checkpoint_is_plain_data_loadable_with_weights_only(tmp_path, make_model, words_vocab):
    path = tmp_path / "model.pt"
    save_checkpoint(path, make_model(), words_vocab)
    data = torch.load(path, weights_only=True)
    assert data["format_version"] == FORMAT_VERSION == 2 and "sha256" in data["digest"]
    assert data["vocab"]["itos"] == words_vocab.itos
    assert data["model_config"]["vocab_size"] == len(words_vocab)
    assert isinstance(data["model_config"], dict)


def test_missing_file_is_one_clear_line(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file") as err:
        load_captioner(tmp_path / "absent.pt")
    assert "\n" not in str(err.value) and "absent.pt" in str(err.value)


def test_truncated_file_is_reported_as_corrupted(tmp_path, make_model, words_vocab):
    path = tmp_path / "model.pt"
    save_checkpoint(path, make_model(), words_vocab)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_captioner(path)


def test_other_format_version_is_refused(tmp_path, make_model, words_vocab):
    path = tmp_path / "model.pt"
    save_checkpoint(path, make_model(), words_vocab)
    data = torch.load(path, weights_only=True)
    data["format_version"] = 99
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="format version 99 is not supported"):
        read_checkpoint(path)


def test_vocabulary_that_does_not_match_the_model_is_refused(tmp_path, make_model, words_vocab):
    path = tmp_path / "model.pt"
    save_checkpoint(path, make_model(), words_vocab)
    data = torch.load(path, weights_only=True)
    data["vocab"]["itos"] = data["vocab"]["itos"][:-2]
    torch.save(with_digest(data), path)  # changed on purpose: a digest that matches, so the vocabulary is checked
    with pytest.raises(CheckpointError, match="vocabulary has 9 words but the model predicts 11"):
        load_captioner(path)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, make_model, words_vocab):
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, make_model(), words_vocab)
    save_checkpoint(path, make_model(1), words_vocab)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
