"""Training batches: shuffled per epoch, grouped by caption length, sharded across ranks, and a pure
function of (seed, epoch), so a resumed run (or any rank) can rebuild exactly the batches it needs.

The decoder runs as many LSTM steps as the longest caption of a batch, so a batch of 5- and
20-word captions wastes most of its work on padding. Within each window of `window` consecutive
batches of a fresh permutation the captions are sorted by length and cut into batches; the batches
are then shuffled, so lengths still come in random order over time (the "bucketing" of
sequence-to-sequence toolkits). With `group_by_length=False` the batches are consecutive slices of
the permutation, exactly what `EpochSampler` + `drop_last` gives.

Sharding for DistributedDataParallel: the epoch's batch list is cut to a multiple of `world_size`
and rank r takes batches r, r + W, r + 2W, ...: every rank runs the same number of steps, and the W
batches of one step are disjoint.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
from torch.utils.data import Sampler

WINDOW = 50  # batches per length-sorting window


def epoch_batches(lengths: Sequence[int] | np.ndarray, batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = True, world_size: int = 1, window: int = WINDOW) -> list[list[int]]:
    """All batches of one epoch (every rank's), in step-major order: batch s*W + r is rank r's step s."""
    n = len(lengths)
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(n))
    rng.shuffle(order)
    usable = n - n % batch_size
    if group_by_length:
        lengths = np.asarray(lengths)
        span = batch_size * window
        grouped = []
        for start in range(0, usable, span):
            chunk = np.asarray(order[start:min(start + span, usable)], dtype=np.int64)
            grouped.extend(chunk[np.argsort(lengths[chunk], kind="stable")].tolist())
        order = grouped
    batches = [order[i:i + batch_size] for i in range(0, usable, batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches[: len(batches) - len(batches) % world_size]


class LengthGroupedBatches(Sampler):
    """A batch sampler for `DataLoader(batch_sampler=...)`: this rank's batches of `epoch`, from
    batch `start` of its share on (a resumed run skips what it has already trained on)."""

    def __init__(self, lengths, batch_size: int, seed: int, epoch: int = 0, start: int = 0,
                 group_by_length: bool = True, rank: int = 0, world_size: int = 1):
        self.lengths, self.batch_size, self.seed, self.epoch, self.start = lengths, batch_size, seed, epoch, start
        self.group_by_length, self.rank, self.world_size = group_by_length, rank, world_size

    def batches(self) -> list[list[int]]:
        every = epoch_batches(self.lengths, self.batch_size, self.seed, self.epoch, self.group_by_length,
                              self.world_size)
        return every[self.rank::self.world_size][self.start:]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        per_rank = (len(self.lengths) // self.batch_size) // self.world_size
        return max(0, per_rank - self.start)


def steps_per_epoch(num_pairs: int, batch_size: int, world_size: int = 1) -> int:
    return max(1, (num_pairs // batch_size) // world_size)


__all__ = ["LengthGroupedBatches", "epoch_batches", "steps_per_epoch"]
