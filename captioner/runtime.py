"""Process settings (CPU threads and memory for captioning, the --device choice); none changes a result.

`caption.py` calls `configure_cpu_process()` before it imports torch, and leaves through
`exit_now()`. The costs they remove, measured on the 2-core machine of BENCHMARKS.md (issue 8):

* OpenMP threads that spin while they wait. Decoding is hundreds of short operators per batch;
  by default each of torch's OpenMP threads spins after every one of them, which is harmless on
  an idle machine but, when other processes share the cores, makes the threads fight for them:
  the beam search ran about 4x slower with two spinning threads than with one.
  OMP_WAIT_POLICY=PASSIVE (unless the user set it) makes waiting threads sleep instead. It must
  be in the environment before torch (and its OpenMP runtime) is loaded.
* Page faults on big temporaries. glibc serves big allocations (above its mmap threshold, which
  never exceeds 32 MiB: VGG activations, the beam's B*K x 196 x 512 attention tensors) with a
  fresh mmap and unmaps them on free, so every step pays the kernel to zero those pages again.
  With mmap off and no trimming, freed memory is kept and reused by the next operator. Peak
  memory stays what the largest step needs (memory is reused, not accumulated); it is returned
  to the system at exit.
* Tearing torch down at exit: about 0.5 s of the interpreter's shutdown (garbage-collecting
  torch's modules, its libraries' destructors) after the last caption is printed. Once the
  command's output is flushed and its files closed there is nothing left to clean up.
"""

from __future__ import annotations

import os
import sys

M_TRIM_THRESHOLD = -1   # glibc mallopt parameters (malloc.h)
M_MMAP_MAX = -4


def configure_cpu_process() -> dict[str, bool]:
    """Apply the settings above where they can still take effect; returns what was applied."""
    applied = {"omp_passive": False, "malloc_reuse": False}
    if "torch" not in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        applied["omp_passive"] = True
    applied["malloc_reuse"] = keep_freed_memory()
    return applied


def keep_freed_memory() -> bool:
    """glibc only (Linux): big blocks from the heap rather than mmap, and no trimming."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another C library: leave its allocator alone
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))


def pick_device(name: str):
    """The torch device for a --device value (cpu, cuda, cuda:N, auto), checked now: ValueError
    with one line if this machine or torch build cannot use it. Imports torch."""
    import torch

    from .messages import first_sentence

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {name!r}") from None
    if device.type == "meta":  # tensors without data: nothing could be computed
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for but no CUDA GPU is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"--device {name}: this machine has {count} CUDA GPU{'s' if count > 1 else ''} "
                         f"(cuda:0 to cuda:{count - 1})")
    if device.type != "cpu":
        # A device torch knows but this build or machine lacks (mps on Linux, xpu, cuda:7 of 1 GPU)
        # fails only when the first tensor lands there: try one now, so it is this one line.
        try:
            torch.empty(1, device=device)
        except Exception as e:  # noqa: BLE001 - each backend raises its own kind
            reason = first_sentence(e)
            raise ValueError(f"--device {name}: this torch build or machine cannot use it ({reason})") from None
    return device


def exit_now(status: int) -> None:
    """Flush stdout and stderr and end the process with `status`, skipping the interpreter's
    teardown. Only for a command whose work is done: files must already be closed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(status)
