"""Shared pieces of the benchmarks: the benchmark model, photo-like JPEG files, timing, and the
lines every script prints (its command, the machine, the load)."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

from captioner.config import ModelConfig  # noqa: E402
from captioner.model import Captioner  # noqa: E402
from captioner.vocab import SPECIALS, Vocabulary  # noqa: E402


def print_command() -> None:
    """The command line that reproduces this script's figures (from the repository root)."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    module = script.removesuffix(".py").replace(os.sep, ".")
    print("command: " + " ".join(shlex.quote(a) for a in ["python", "-m", module, *sys.argv[1:]]))


def environment(runtime: dict | None = None) -> str:
    """The machine, torch's threads, the load from other processes, and caption.py's process
    settings (`captioner.runtime`) as this process has them."""
    load = os.getloadavg()
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"machine: {os.cpu_count()} CPUs ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} torch "
            f"threads, python {platform.python_version()}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
            f"at {time.strftime('%Y-%m-%d %H:%M')}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
            f"freed memory kept for reuse: {'yes' if (runtime or {}).get('malloc_reuse') else 'no'}")


def decoder_bench_parser(description: str, repeats: int) -> argparse.ArgumentParser:
    """The flags of the decoder benchmarks (bench.speed.caption_speed, bench.speed.tutorial_reference):
    the batch, the beam, the repeats, the benchmark model's sizes (`bench_model`), the runtime, threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--images", type=int, default=32, help="batch size (images captioned together)")
    parser.add_argument("--beam-size", type=int, default=3, help="beam size")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed repeats (the median is reported)")
    parser.add_argument("--vocab", type=int, default=10000, help="vocabulary size (COCO, min count 5: ~10,000)")
    parser.add_argument("--hidden", type=int, default=1024, help="LSTM state size (paper: 1800 for COCO)")
    parser.add_argument("--default-runtime", action="store_true",
                        help="leave OpenMP's waiting and glibc's allocator as they are (caption.py changes them)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    return parser


def threads_from_args(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def bench_vocab(size: int) -> Vocabulary:
    """A vocabulary of `size` words (COCO with min count 5 has about 10,000)."""
    return Vocabulary(list(SPECIALS) + [f"w{i}" for i in range(size - len(SPECIALS))])


def bench_config(vocab_size: int = 10000, hidden: int = 1024, encoder: str = "vgg16") -> ModelConfig:
    """VGG-16 at 224 (14x14x512 annotations) and the paper-sized decoder: embed 512, attention 512,
    LSTM `hidden` (ModelConfig's default 1024), additive soft attention with the gate, deep output."""
    return ModelConfig(vocab_size=vocab_size, encoder=encoder, image_size=224, encoder_dim=512, embed_dim=512,
                       hidden_dim=hidden, attention_dim=512)


def bench_model(vocab_size: int = 10000, hidden: int = 1024, seed: int = 0) -> tuple[Captioner, Vocabulary]:
    """Random weights: speed does not depend on the values (no ImageNet weights are downloaded).
    With random weights a beam almost never emits <end>, so decoding runs all max_len steps: the
    worst case for the decoder's share."""
    torch.manual_seed(seed)
    model = Captioner(bench_config(vocab_size, hidden)).eval()
    return model, bench_vocab(vocab_size)


def sample_annotations(model: Captioner, batch: int, seed: int = 0) -> torch.Tensor:
    """Annotation vectors shaped as VGG gives them (B, L, D), non-negative like post-ReLU features."""
    g = torch.Generator().manual_seed(seed)
    L = model.config.grid_size ** 2
    return torch.randn(batch, L, model.config.encoder_dim, generator=g).relu_()


def write_jpegs(folder: Path, count: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[Path]:
    """`count` photo-like JPEG files (COCO's typical 640x480; smooth colour fields plus grain, quality 90)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    for i in range(count):
        coarse = rng.uniform(0, 255, size=(h // 40 + 2, w // 40 + 2, 3)).astype(np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(base + rng.normal(0, 12, size=(h, w, 3)), 0, 255).astype(np.uint8)
        path = Path(folder) / f"photo_{i:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def load_jpegs(paths, size: int) -> torch.Tensor:
    """Files -> uint8 batch (B, 3, size, size), exactly as caption.py reads them: through
    `captioner.images.read_images`, its threads and read-ahead."""
    from captioner.images import read_images

    return torch.stack([reading.result()[1] for _, reading in read_images(paths, size, ahead=len(paths))])


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_both(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads). With other jobs on the machine the
    CPU time is the steadier measure of the work done: it does not count time spent waiting for a core."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far: VmHWM, the high-water mark of this program's
    own address space. (getrusage's ru_maxrss is not used: Linux carries it over from the parent
    across fork and exec, so a child started by a big process would report the parent's peak.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024                   # kB -> MiB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def add_split_args(parser: argparse.ArgumentParser) -> None:
    """The flags of a bench script that decodes a real data set's split from a feature cache."""
    parser.add_argument("--weights", required=True, help="checkpoint to measure")
    parser.add_argument("--dataset", default="flickr8k", help="data set (default: flickr8k)")
    parser.add_argument("--data-root", required=True, help="the data set's annotation folder")
    parser.add_argument("--images", default=None, help="photo folder, if not under --data-root")
    parser.add_argument("--split", default="val", choices=("val", "test"), help="split (default: val, the dev split)")
    parser.add_argument("--num-images", type=int, default=None, help="first N images of the split (default: all)")
    parser.add_argument("--cache", required=True, help="feature cache folder (as train.py --feature-cache)")


def split_features(args):
    """(model, vocab, image set, its cached annotations) for add_split_args' flags."""
    from captioner.checkpoint import load_captioner
    from captioner.data import load_split
    from captioner.data.cache import open_or_build

    model, vocab = load_captioner(args.weights)
    images = load_split(args.dataset, args.split, image_size=model.config.image_size, data_root=args.data_root,
                        images=args.images, resize=model.config.resize)
    # The whole split's cache (shared with training's and every other script's), read up to --num-images.
    features = open_or_build(model, images, args.cache, args.split, log=lambda m: print(m, file=sys.stderr))
    return model, vocab, images, features


def annotations_batches(features, batch_size: int = 100, limit: int | None = None):
    """(indices, annotations (B, L, D) float32) over the first `limit` images of a FeatureSet, in order."""
    total = len(features) if limit is None else min(limit, len(features))
    for start in range(0, total, batch_size):
        index = list(range(start, min(total, start + batch_size)))
        yield index, torch.stack([features.image(i) for i in index]).float()
