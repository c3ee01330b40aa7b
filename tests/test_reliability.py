"""Untrusted checkpoints, crashes during training, and validation of every command's inputs.

Training runs here are tiny (12 steps of a 32-pixel model on 40 generated shapes images) and use
one CPU thread, so that runs are bit-for-bit repeatable and quick."""

from __future__ import annotations

import json
import os
import pickle
import random
import shlex
import signal
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from state_equality import same

from captioner import training
from captioner.checkpoint import (
    CheckpointError,
    atomic_save,
    load_captioner,
    read_checkpoint,
    save_checkpoint,
    with_digest,
)
from captioner.cli import caption_main, train_main
from captioner.config import TrainConfig, replace, train_config_for
from captioner.training import TrainingError, train

ROOT = Path(__file__).resolve().parent.parent
MODEL = dict(image_size=32, encoder_dim=32, hidden_dim=32, embed_dim=16, attention_dim=16)
TINY_FLAGS = ["--steps", "12", "--eval-every", "2", "--train-images", "40", "--val-images", "8", "--batch-size", "8",
              "--image-size", "32", "--encoder-dim", "32", "--hidden-dim", "32", "--embed-dim", "16",
              "--attention-dim", "16", "--no-progress", "--device", "cpu"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_run(out, **changes) -> TrainConfig:
    """The run TINY_FLAGS give train.py, for train() in this process."""
    return replace(train_config_for("shapes", out_dir=str(out), steps=12, eval_every=2, train_images=40, val_images=8,
                                    batch_size=8, progress=False), **changes)


def records(out) -> list[dict]:
    """metrics.jsonl without the wall-clock field, which no two runs share."""
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in lines]




def assert_same_run(a, b) -> None:
    """Same losses and scores at every evaluation, same final weights, optimizer state and random state."""
    assert records(a) == records(b)
    for name in ("last.pt", "best.pt"):
        x, y = read_checkpoint(Path(a) / name), read_checkpoint(Path(b) / name)
        assert x["state_dict"].keys() == y["state_dict"].keys()
        for key in x["state_dict"]:
            assert torch.equal(x["state_dict"][key], y["state_dict"][key]), (name, key)
    x, y = read_checkpoint(Path(a) / "last.pt")["train_state"], read_checkpoint(Path(b) / "last.pt")["train_state"]
    assert same(x["optimizer"], y["optimizer"]) and same(x["rng"], y["rng"]) and x["step"] == y["step"]
    assert not list(Path(b).glob(".*.tmp"))


class Crash(Exception):
    pass


def crash_after_evaluation(step: int):
    """A `log` for train(): raises right after the evaluation of `step` was logged and saved."""
    def log(message):
        if message.startswith(f"step {step}:"):
            raise Crash
    return log


@pytest.fixture(scope="module")
def reference_in_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    torch.set_num_threads(1)
    train(tiny_run(out), MODEL, log=lambda m: None)
    return out


# ----------------------------------------------------------------------------------------------- checkpoints


class RunsShell:
    """Unpickling this runs a shell command: what a checkpoint from the internet could carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


class RunsPython:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def evil_zip(path, marker, words_vocab, make_model):
    torch.save({"format": "captioner", "format_version": 1, "payload": RunsShell(marker)}, path)


def evil_legacy(path, marker, words_vocab, make_model):
    torch.save({"state_dict": RunsPython(marker)}, path, _use_new_zipfile_serialization=False)


def evil_plain_pickle(path, marker, words_vocab, make_model):
    path.write_bytes(pickle.dumps(RunsShell(marker), protocol=2))


def evil_data_pkl_in_a_real_checkpoint(path, marker, words_vocab, make_model):
    """A genuine checkpoint whose archive/data.pkl was swapped for a malicious pickle."""
    good = path.with_name("good.pt")
    save_checkpoint(good, make_model(), words_vocab)
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(path, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.endswith("/data.pkl"):
                data = pickle.dumps({"format": "captioner", "format_version": 1, "x": RunsPython(marker)}, protocol=2)
            zout.writestr(name, data)


@pytest.mark.parametrize("build", [evil_zip, evil_legacy, evil_plain_pickle, evil_data_pkl_in_a_real_checkpoint])
def test_checkpoint_crafted_to_run_code_is_refused_and_the_code_never_runs(tmp_path, build, words_vocab, make_model):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    build(path, marker, words_vocab, make_model)
    with pytest.raises(CheckpointError, match="refused") as err:
        load_captioner(path)
    message = str(err.value)
    assert "nothing in it was run" in message and str(path) in message and "\n" not in message
    assert not marker.exists()


def test_the_crafted_payload_is_live_when_unpickled_unsafely(tmp_path):
    """The control for the test above: the same payload does run code under plain pickle."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(RunsShell(marker), protocol=2))
    pickle.loads(pickle.dumps(RunsPython(tmp_path / "pwned2"), protocol=2))
    assert marker.exists() and (tmp_path / "pwned2").exists()


def test_caption_cli_refuses_a_crafted_checkpoint_in_one_line(tmp_path, capsys):
    from PIL import Image

    marker, weights, image = tmp_path / "pwned", tmp_path / "evil.pt", tmp_path / "photo.png"
    torch.save({"format": "captioner", "x": RunsShell(marker)}, weights)
    Image.new("RGB", (32, 32)).save(image)
    assert caption_main([str(image), "--weights", str(weights)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "refused" in lines[0] and "posix.system" in lines[0] and captured.out == ""
    assert not marker.exists()


def test_damaged_checkpoints_each_get_one_clear_line_never_another_exception(tmp_path, make_model, words_vocab):
    good = tmp_path / "good.pt"
    save_checkpoint(good, make_model(), words_vocab)
    data = good.read_bytes()
    rng = random.Random(3)
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(60):
        damaged = bytearray(data)
        if i % 3 == 0:
            damaged = damaged[: rng.randrange(1, len(data))]
        else:
            for _ in range(rng.randint(1, 16)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        path = tmp_path / f"damaged_{i}.pt"
        path.write_bytes(bytes(damaged))
        try:
            load_captioner(path)
            outcomes["loaded"] += 1  # damage in the weights' bytes: a model with other weights
        except CheckpointError as e:
            assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
            outcomes["refused"] += 1
    assert outcomes["refused"] >= 20


def test_checkpoint_without_a_format_version_is_refused(tmp_path, make_model, words_vocab):
    path = tmp_path / "old.pt"
    save_checkpoint(path, make_model(), words_vocab)
    data = torch.load(path, weights_only=True)
    del data["format_version"]
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="format version None is not supported"):
        load_captioner(path)


def test_crash_in_the_middle_of_a_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"step": 1, "w": torch.ones(3)}, path)

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # what a kill looks like from inside; kill -9 is tested below

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoints_get_the_usual_file_permissions(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"x": 1}, path)
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# ----------------------------------------------------------------------------------------------- training


def test_resumed_run_has_the_losses_and_parameters_of_an_uninterrupted_one(tmp_path, reference_in_process):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        train(tiny_run(out), MODEL, log=crash_after_evaluation(6))
    assert [r["step"] for r in records(out)] == [2, 4, 6]
    logs = []
    summary = train(tiny_run(out, resume=True), MODEL, log=logs.append)
    assert logs[0] == f"resuming {out} at step 6" and summary["steps"] == 12
    assert_same_run(reference_in_process, out)


def test_train_state_round_trips_through_last_pt_and_the_run_goes_on_from_it(tmp_path, monkeypatch,
                                                                            reference_in_process):
    add_losses = training.TrainState.add_losses

    def add_then_ctrl_c(state, losses):  # Ctrl-C after step 5: between evaluations, with losses summed
        add_losses(state, losses)
        if state.step == 5:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(training.TrainState, "add_losses", add_then_ctrl_c)
    out = tmp_path / "run"
    assert train(tiny_run(out), MODEL, log=lambda m: None)["stop"] == "interrupted"
    monkeypatch.undo()
    data = read_checkpoint(out / "last.pt")
    saved = data["train_state"]
    assert set(saved) == {"step", "best_bleu4", "stale", "lr_scale", "optimizer", "rng", "train_config", "objective",
                          "running", "elapsed_s"}  # the format older files have, and newer code reads
    state = training.TrainState.from_dict(saved)
    assert (state.step, state.best_bleu4, state.stale, state.lr_scale) == (5, saved["best_bleu4"], saved["stale"],
                                                                       saved["lr_scale"])
    assert state.running == saved["running"] and state.running["n"] == 1 and state.elapsed_s == saved["elapsed_s"] > 0
    state.restore_rng()  # to_dict reads the generators as they stand: these are the file's once put back
    again = state.to_dict()
    assert same(again, {k: saved[k] for k in again})
    # Written back beside the optimizer's state and the settings, it resumes as the uninterrupted run.
    train_state = {**again, "optimizer": saved["optimizer"], "train_config": saved["train_config"]}
    atomic_save(with_digest({**data, "train_state": train_state}), out / "last.pt")
    train(tiny_run(out, resume=True), MODEL, log=lambda m: None)
    assert_same_run(reference_in_process, out)


def test_train_state_of_older_checkpoints_reads_missing_fields_as_zero():
    state = training.TrainState.from_dict({"step": 4, "best_bleu4": 0.25, "stale": 1, "lr_scale": 0.5, "rng": {},
                                           "optimizer": {}, "train_config": {}})
    assert (state.step, state.best_bleu4, state.stale, state.lr_scale) == (4, 0.25, 1, 0.5)
    assert state.objective == {} and state.running == {} and state.elapsed_s == 0.0


def test_metrics_log_holds_each_step_once_after_a_kill_between_its_two_writes(tmp_path, reference_in_process):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        train(tiny_run(out), MODEL, log=crash_after_evaluation(6))
    # As if killed after step 8 was appended to metrics.jsonl but before last.pt was replaced,
    # and then once more in the middle of writing a line.
    step8 = records(reference_in_process)[3]
    assert step8["step"] == 8
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({**step8, "elapsed_s": 1.0}) + "\n" + '{"step": 10, "lo')
    train(tiny_run(out, resume=True), MODEL, log=lambda m: None)
    assert [r["step"] for r in records(out)] == [2, 4, 6, 8, 10, 12]
    assert_same_run(reference_in_process, out)


def test_resume_without_a_checkpoint_starts_a_new_run_and_a_new_run_never_overwrites_one(tmp_path):
    out = tmp_path / "run"
    logs = []
    train(tiny_run(out, steps=2, resume=True), MODEL, log=logs.append)
    assert logs[0].startswith(f"no last.pt in {out} yet: starting a new run")
    before = (out / "last.pt").read_bytes()
    with pytest.raises(TrainingError, match="already holds a training run.*--resume"):
        train(tiny_run(out, steps=2), MODEL, log=lambda m: None)
    assert (out / "last.pt").read_bytes() == before


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real, calls = training.batch_loss, []

    def poisoned(*args, **kwargs):
        losses = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 8:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(training, "batch_loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="loss became nan at step 8; stopped.*last good checkpoint is .*last.pt"):
        train(tiny_run(out), MODEL, log=lambda m: None)
    last = read_checkpoint(out / "last.pt")
    assert last["train_state"]["step"] == 6
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    monkeypatch.undo()
    train(tiny_run(out, resume=True), MODEL, log=lambda m: None)  # and the run goes on from there
    assert [r["step"] for r in records(out)] == [2, 4, 6, 8, 10, 12]


def test_infinite_gradient_stops_before_the_weights_are_touched(tmp_path, monkeypatch):
    real, calls = training.batch_loss, []

    def poisoned(model, *args, **kwargs):
        losses = real(model, *args, **kwargs)
        calls.append(1)
        if len(calls) == 5:  # value 0, gradient 0 * inf = nan: the loss itself stays finite
            p = next(q for q in model.parameters() if q.requires_grad)
            losses["loss"] = losses["loss"] + 0.0 * torch.sqrt((p - p.detach()).abs()).sum()
        return losses

    monkeypatch.setattr(training, "batch_loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="gradient norm became nan at step 5"):
        train(tiny_run(out), MODEL, log=lambda m: None)
    last = read_checkpoint(out / "last.pt")
    assert last["train_state"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


# ------------------------------------------------------------------------------- train.py as a process
# Each run is a process of its own, killed with real signals. They are forked from a server that has
# imported torch once (multiprocessing's forkserver), so a run starts in a fraction of a second rather
# than the seconds `python train.py` spends importing; the code that runs is train.py's (train_main).
# In these processes fsync takes 50 ms longer, as on a slow disk, so that a kill "during a save"
# reliably lands while a checkpoint is half written. bench/reliability/kill_resume.py does the same with
# `python train.py` itself and no slowed disk.

PROCESS_FLAGS = [*TINY_FLAGS, "--steps", "24"]  # 12 checkpoints: room for five kills


def _train_process(argv):
    real_fsync = os.fsync

    def slow_fsync(fd):
        time.sleep(0.05)
        real_fsync(fd)

    os.fsync = slow_fsync
    torch.set_num_threads(1)
    sys.exit(train_main(argv))


@pytest.fixture(scope="module")
def runs():
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torch._dynamo", "captioner.cli", "captioner.training",
                                    "captioner.data.shapes", "nltk.tokenize"])
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield lambda out, *extra: _start(context, out, *extra)
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old


def _start(context, out, *extra):
    proc = context.Process(target=_train_process, args=([*PROCESS_FLAGS, "--out-dir", str(out), *extra],))
    proc.start()
    return proc


def wait_for(condition, proc, timeout=300):
    """Poll `condition` until it holds (True) or `proc` ends (False)."""
    start = time.monotonic()
    while not condition():
        if not proc.is_alive():
            return False
        assert time.monotonic() - start < timeout, "the training process made no progress"
        time.sleep(0.002)
    return True


def temporaries(out) -> set:
    return set(out.glob(".*.pt.*.tmp"))


def inode(path):
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


@pytest.fixture(scope="module")
def reference_process(tmp_path_factory, runs):
    """One uninterrupted run, and the time between two of its checkpoints."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = runs(out)
    proc.join(300)
    assert proc.exitcode == 0
    elapsed = [json.loads(line)["elapsed_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, max(0.05, (elapsed[-1] - elapsed[0]) / (len(elapsed) - 1))


def test_kill_9_at_five_random_moments_then_resume_gives_the_uninterrupted_parameters(tmp_path, reference_process,
                                                                                      runs):
    reference, between_checkpoints = reference_process
    out = tmp_path / "run"
    rng = random.Random(2026)
    moments = ["during a save", "during a save", "at random", "at random", "at random"]
    rng.shuffle(moments)
    kills = []
    for moment in moments:
        before, left_over = inode(out / "last.pt"), temporaries(out)  # the run removes these when it starts
        proc = runs(out, "--resume")
        if moment == "during a save":  # a new temporary file exists: a checkpoint is being written
            assert wait_for(lambda: temporaries(out) - left_over, proc)
        else:  # once this run has saved a checkpoint, anywhere in the next step, evaluation or write
            assert wait_for(lambda: inode(out / "last.pt") not in (None, before), proc)
            time.sleep(rng.uniform(0.0, 1.5 * between_checkpoints))
        proc.kill()  # SIGKILL
        proc.join(300)
        torn = bool(temporaries(out) - left_over)
        last = read_checkpoint(out / "last.pt") if (out / "last.pt").exists() else None  # never corrupt
        if (out / "best.pt").exists():
            read_checkpoint(out / "best.pt")
        kills.append((moment, proc.exitcode, last["train_state"]["step"] if last else None, torn))
    print("kills (moment, exit code, last.pt step after it, a half-written file left):", kills)
    assert all(code == -signal.SIGKILL for _, code, _, _ in kills), kills
    assert all(torn for moment, *_, torn in kills if moment == "during a save"), kills
    final = runs(out, "--resume")
    final.join(300)
    assert final.exitcode == 0
    assert_same_run(reference, out)


def test_ctrl_c_saves_exits_130_and_the_resumed_run_matches_an_uninterrupted_one(tmp_path, reference_process, runs):
    reference, between_checkpoints = reference_process
    out = tmp_path / "run"
    proc = runs(out)
    assert wait_for(lambda: (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text(), proc)
    time.sleep(random.Random(5).uniform(0.2, 1.0) * between_checkpoints)
    os.kill(proc.pid, signal.SIGINT)
    proc.join(300)
    assert proc.exitcode == 130
    step = read_checkpoint(out / "last.pt")["train_state"]["step"]
    assert 2 <= step < 24
    assert [r["step"] for r in records(out)] == list(range(2, step + 1, 2))
    resumed = runs(out, "--resume")
    resumed.join(300)
    assert resumed.exitcode == 0
    assert_same_run(reference, out)


def test_train_cli_ctrl_c_between_evaluations_exits_130_and_resumes_exactly(tmp_path, capsys, monkeypatch,
                                                                            reference_in_process):
    real, calls = training.batch_loss, []

    def ctrl_c_at_step_5(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)  # as the terminal does; handled after this step
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "batch_loss", ctrl_c_at_step_5)
    before = signal.getsignal(signal.SIGINT)
    assert train_main([*TINY_FLAGS, "--out-dir", str(tmp_path / "run")]) == 130
    out = capsys.readouterr().out
    assert "interrupted at step 5; saved" in out and "continue with --resume" in out
    assert json.loads(out.strip().splitlines()[-1])["stop"] == "interrupted"
    assert signal.getsignal(signal.SIGINT) is before  # the handler is given back
    assert read_checkpoint(tmp_path / "run" / "last.pt")["train_state"]["running"]["n"] == 1  # step 5's loss
    monkeypatch.undo()
    assert train_main([*TINY_FLAGS, "--out-dir", str(tmp_path / "run"), "--resume"]) == 0
    assert_same_run(reference_in_process, tmp_path / "run")  # step 6's record averages steps 5 and 6 as before


# ----------------------------------------------------------------------------------------- input validation


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("flags, expected", [
    (["--steps", "-5"], "steps must be positive, got -5"),
    (["--lr", "nan"], "lr must be a finite number"),
    (["--grad-clip", "0"], "grad_clip must be positive"),
    (["--num-workers", "-1"], "num_workers must be zero or more"),
    (["--lr-decay", "2"], "lr_decay must be in (0, 1]"),
    (["--data-root", "{tmp}/nowhere"], "--data-root must be an existing folder"),
    (["--split-file", "{tmp}"], "--split-file must be a file, and this is a folder"),
    (["--encoder-weights", "{tmp}/none.pth"], "--encoder-weights must be a file, and this does not exist"),
    (["--device", "gpu0"], "--device must be cpu, cuda, cuda:N or auto"),
    (["--out-dir", "{tmp}/a_file"], "--out-dir must be a folder"),
])
def test_train_flags_are_validated_with_one_line_saying_what_was_expected(tmp_path, capsys, flags, expected):
    (tmp_path / "a_file").write_text("x")
    flags = [f.format(tmp=tmp_path) for f in flags]
    argv = ["--out-dir", str(tmp_path / "run"), *flags]
    assert train_main(argv) == 2
    assert expected in one_error_line(capsys)


def test_train_flag_of_the_wrong_type_is_named_by_argparse(capsys):
    with pytest.raises(SystemExit) as exit_:
        train_main(["--steps", "many"])
    assert exit_.value.code == 2
    assert "argument --steps: invalid int value: 'many'" in capsys.readouterr().err


@pytest.fixture
def photo(tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(path)
    return path


@pytest.mark.parametrize("flags, expected", [
    (["--beam-size", "0"], "--beam-size must be between 1 and 100, got 0"),
    (["--beam-size", "100000"], "--beam-size must be between 1 and 100"),
    (["--batch-size", "0"], "--batch-size must be between 1 and 1024"),
    (["--length-penalty", "inf"], "--length-penalty must be a finite number"),
    (["--attention", "{tmp}/photo.png"], "--attention needs a folder, and this is a file"),
    (["--weights", "{tmp}/absent.pt"], "absent.pt: no such checkpoint file"),
    (["--weights", "{tmp}"], "is a directory, not a checkpoint file"),
    (["--weights", "{tmp}/photo.png"], "photo.png: not a checkpoint file"),
    (["--device", "quantum"], "--device must be cpu, cuda, cuda:N or auto"),
])
def test_caption_flags_are_validated_with_one_line_saying_what_was_expected(tmp_path, capsys, photo, flags,
                                                                           expected, make_model, words_vocab):
    weights = tmp_path / "tiny.pt"
    save_checkpoint(weights, make_model(), words_vocab)
    flags = [f.format(tmp=tmp_path) for f in flags]
    argv = [str(photo), *(["--weights", str(weights)] if "--weights" not in flags else []), *flags]
    assert caption_main(argv) == 2
    assert expected in one_error_line(capsys)
    assert capsys.readouterr().out == ""


def test_caption_checkpoint_problems_are_one_line_each(tmp_path, capsys, photo, make_model, words_vocab):
    path = tmp_path / "model.pt"
    save_checkpoint(path, make_model(), words_vocab)
    data = torch.load(path, weights_only=True)
    versions = dict(data, format_version=3)
    vocab = with_digest(dict(data, vocab={"itos": data["vocab"]["itos"][:-1]}))
    for name, broken, expected in (("v3.pt", versions, "format version 3 is not supported"),
                                   ("vocab.pt", vocab, "vocabulary has 10 words but the model predicts 11")):
        torch.save(broken, tmp_path / name)
        assert caption_main([str(photo), "--weights", str(tmp_path / name)]) == 2
        assert expected in one_error_line(capsys)
    assert caption_main([str(photo), "--weights", str(path), "--beam-size", "2"]) == 0
    assert capsys.readouterr().out.startswith(f"{photo}\t")


def test_log_every_sets_how_often_the_loss_is_reported(tmp_path, monkeypatch):
    lines = []
    train(tiny_run(tmp_path / "quiet", steps=6, eval_every=6, log_every=2), MODEL, log=lines.append)
    reports = [line for line in lines if line.startswith("step ") and "mean of the last" in line]
    assert [line.split(":")[0] for line in reports] == ["step 2", "step 4", "step 6"]
    assert all("mean of the last 2 steps" in line for line in reports)
    # With the progress bar: its loss is updated at the same steps, and only then.
    import tqdm

    updates = []

    class Bar:
        def __init__(self, *args, **kwargs):
            self.n = kwargs.get("initial", 0)

        def update(self, k):
            self.n += k

        def set_postfix(self, **values):
            updates.append((self.n, sorted(values)))

        def write(self, message):
            pass

        def close(self):
            pass

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    train(tiny_run(tmp_path / "bar", steps=6, eval_every=6, log_every=3, progress=True), MODEL, log=lambda m: None)
    assert updates == [(3, ["loss", "nll"]), (6, ["loss", "nll"])]
