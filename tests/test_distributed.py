"""torchrun with DistributedDataParallel on CPU (gloo), and the batch sampler it relies on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from real_data_fixtures import TINY, make_coco

from captioner.checkpoint import load_captioner
from captioner.data import EpochSampler
from captioner.data.batching import LengthGroupedBatches, epoch_batches, steps_per_epoch
from captioner.distributed import DEBUG_ENV, DistContext, params_digest, setup

ROOT = Path(__file__).resolve().parent.parent


def test_torchrun_two_processes_train_the_same_parameters_on_different_data(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=8, n_val=3)
    out, debug = tmp_path / "run", tmp_path / "debug"
    tiny = list(TINY)
    tiny[tiny.index("--batch-size") + 1] = "2"   # 24 captions: 6 steps per epoch of 2 x 2
    env = {**os.environ, DEBUG_ENV: str(debug), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    env.pop("WORLD_SIZE", None)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
         "--dataset", "coco", "--data-root", str(root), "--out-dir", str(out), *tiny],
        cwd=ROOT, capture_output=True, text=True, timeout=400, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    ranks = [json.loads((debug / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [4, 4]
    assert ranks[0]["batches"] == ranks[1]["batches"] == 4
    assert ranks[0]["data_sha256"] != ranks[1]["data_sha256"]        # each rank trained on its own batches ...
    assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"]    # ... and DDP kept the weights identical
    # rank 0 alone wrote the run folder: one metrics line per evaluation, one summary line on stdout
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [2, 4]
    assert result.stdout.count('"best_checkpoint"') == 1
    assert ranks[0]["initial_params_sha256"] == ranks[1]["initial_params_sha256"] != ranks[0]["params_sha256"]
    model, _ = load_captioner(out / "last.pt")
    assert params_digest(model) == ranks[0]["params_sha256"]        # the checkpoint is the trained model


def test_batches_are_a_function_of_seed_and_epoch_and_resume_exactly():
    lengths = np.random.default_rng(0).integers(3, 20, size=103)
    full = list(LengthGroupedBatches(lengths, 8, seed=5, epoch=2))
    assert len(full) == 103 // 8 and all(len(b) == 8 for b in full)
    assert list(LengthGroupedBatches(lengths, 8, seed=5, epoch=2, start=4)) == full[4:]   # resume mid-epoch
    assert list(LengthGroupedBatches(lengths, 8, seed=5, epoch=3)) != full
    assert list(LengthGroupedBatches(lengths, 8, seed=6, epoch=2)) != full
    assert len({i for b in full for i in b}) == len(full) * 8                            # no caption twice


def test_grouping_by_length_cuts_padding_and_off_it_is_the_plain_shuffled_order():
    lengths = np.random.default_rng(1).integers(3, 25, size=4000)
    grouped = epoch_batches(lengths, 32, seed=0, epoch=0)
    plain = epoch_batches(lengths, 32, seed=0, epoch=0, group_by_length=False)

    def padding(batches):
        return sum(int(lengths[b].max()) * len(b) - int(lengths[b].sum()) for b in batches)

    assert padding(grouped) < 0.25 * padding(plain)
    # off: consecutive slices of the epoch permutation, as EpochSampler with drop_last gives
    order = EpochSampler(4000, seed=0, epoch=0).order(0)
    assert plain == [order[i:i + 32] for i in range(0, 4000 - 4000 % 32, 32)]
    batch_lengths = [float(np.mean(lengths[b])) for b in grouped[:20]]
    assert batch_lengths != sorted(batch_lengths)                     # batches still come in random order


def test_ranks_get_disjoint_shards_with_the_same_number_of_steps():
    lengths = np.arange(100) % 17
    shards = [list(LengthGroupedBatches(lengths, 4, seed=0, epoch=1, rank=r, world_size=3)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == steps_per_epoch(100, 4, 3) == 8
    seen = [i for s in shards for b in s for i in b]
    assert len(seen) == len(set(seen))
    every = epoch_batches(lengths, 4, seed=0, epoch=1, world_size=3)
    assert [b for step in zip(*shards) for b in step] == every                          # step-major order


def test_a_single_process_needs_no_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx, device = setup("cpu")
    assert not ctx.enabled and ctx.is_main and device == torch.device("cpu")
    assert not torch.distributed.is_initialized()
    assert ctx.mean({"loss": 2.5}) == {"loss": 2.5} and ctx.any(True) and not ctx.any(False)
    model = torch.nn.Linear(2, 2)
    assert ctx.wrap(model, device) is model and ctx.gather(3) == [3]
    assert DistContext(rank=1, world_size=2).unshard([[1, 3], [2, 4]], 4) == [1, 2, 3, 4]
