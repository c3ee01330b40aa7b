"""Training on several processes with PyTorch's own engine: `torchrun --nproc_per_node=N train.py ...`.

torchrun starts N copies of train.py with RANK, LOCAL_RANK and WORLD_SIZE set; `setup` reads them,
joins the process group (nccl on CUDA, gloo on CPU) and gives each process its device (cuda:LOCAL_RANK).
A plain `python train.py` sees no WORLD_SIZE and runs alone, with no process group at all.

What each part does under N processes:
  * the model is wrapped in DistributedDataParallel (gradients averaged after every backward);
    DDP broadcasts rank 0's initial weights, so all ranks start and stay identical;
  * every rank builds the same epoch's batch list from (seed, epoch) and takes every N-th batch
    (`data/batching.py`): disjoint data, same step count, exact resume as in one process;
  * losses are averaged across ranks before they are logged; validation decodes a 1/N shard of
    the images per rank and gathers the captions, so all ranks compute the same BLEU-4 and take the
    same early-stopping decision;
  * only rank 0 writes checkpoints, metrics.jsonl, config.json and the progress bar;
  * a stop request (Ctrl-C, non-finite loss) on any rank stops every rank at the same step.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass

import torch

from .runtime import pick_device

DEBUG_ENV = "CAPTIONER_DIST_DEBUG_DIR"   # tests: each rank writes rank<r>.json (parameter and data hashes) here
TIMEOUT = datetime.timedelta(hours=2)   # feature-cache building holds ranks at a barrier for a long time


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives (no-ops in one process) ---------------------------------------------------
    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def _tensor(self, values) -> torch.Tensor:
        backend = torch.distributed.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        return torch.tensor(values, dtype=torch.float64, device=device)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average each value across ranks."""
        if not self.enabled or not values:
            return dict(values)
        keys = sorted(values)
        t = self._tensor([float(values[k]) for k in keys])
        torch.distributed.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist())}

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on at least one."""
        if not self.enabled:
            return bool(flag)
        t = self._tensor([1.0 if flag else 0.0])
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    # -- model ---------------------------------------------------------------------------------
    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module to train: the model itself, or a DDP wrapper around it. The wrapper forwards
        unknown attributes (`config`, `decoder`, ...) to the model; gradients are synchronised only
        for computations that go through its forward (`model(inputs, captions)`)."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        class _DDP(DistributedDataParallel):
            def __getattr__(self, name):
                try:
                    return super().__getattr__(name)
                except AttributeError:
                    return getattr(self.module, name)

        ids = [device.index] if device.type == "cuda" else None
        return _DDP(model, device_ids=ids, output_device=ids[0] if ids else None)

    # -- sharded decoding ----------------------------------------------------------------------
    def shard(self, images):
        """This rank's 1/N of an image set (every N-th image), or the set itself."""
        if not self.enabled:
            return images
        return ShardView(images, list(range(self.rank, len(images), self.world_size)))

    def unshard(self, parts: list, total: int) -> list:
        """Inverse of `shard` on gathered per-rank results: back to the set's order."""
        out = [None] * total
        for r, part in enumerate(parts):
            out[r::self.world_size] = part
        return out


class ShardView:
    """Images `indices` of an image set, as an image set of their own."""

    def __init__(self, images, indices):
        self.base, self.indices = images, indices
        self.references = [images.references[i] for i in indices]
        self.ids = [images.ids[i] for i in indices]
        self.is_feature_set = getattr(images, "is_feature_set", False)

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, i: int):
        return self.base.image(self.indices[i])


def setup(device_name: str = "auto") -> tuple[DistContext, torch.device]:
    """Read torchrun's environment, join the process group and choose this process's device.

    Without torchrun (no WORLD_SIZE, or 1): (single-process context, the device asked for)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistContext(), pick_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if device.type == "cuda":
        if torch.cuda.device_count() <= local_rank:
            raise ValueError(f"rank {rank} needs cuda:{local_rank} but this machine has "
                             f"{torch.cuda.device_count()} GPUs; use --nproc_per_node at most that")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, rank=rank, world_size=world, timeout=TIMEOUT)
    return DistContext(rank, world, local_rank), device


def cleanup(ctx: DistContext) -> None:
    if ctx.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class DebugRecorder:
    """With CAPTIONER_DIST_DEBUG_DIR set: hashes of the batches this rank trained on and, at the end,
    of its parameters, written to <dir>/rank<r>.json (what the torchrun test compares)."""

    def __init__(self, ctx: DistContext, model: torch.nn.Module):
        self.dir = os.environ.get(DEBUG_ENV)
        self.ctx, self.data, self.batches = ctx, hashlib.sha256(), 0
        self.initial = params_digest(model) if self.dir else None

    def batch(self, captions: torch.Tensor) -> None:
        if self.dir:
            self.data.update(captions.detach().cpu().numpy().tobytes())
            self.batches += 1

    def finish(self, model: torch.nn.Module, steps: int) -> None:
        if not self.dir:
            return
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, f"rank{self.ctx.rank}.json"), "w") as f:
            json.dump({"rank": self.ctx.rank, "world_size": self.ctx.world_size, "steps": steps,
                       "batches": self.batches, "data_sha256": self.data.hexdigest(),
                       "initial_params_sha256": self.initial, "params_sha256": params_digest(model)}, f)


def params_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a state_dict's names and float32 values."""
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


__all__ = ["DistContext", "setup", "cleanup", "ShardView", "DebugRecorder", "params_digest"]
