"""Feature-cache build throughput against the bare VGG forward pass on the same batches.

    nice python -m bench.speed.cache_speed [--encoder vgg16] [--image-size 224] [--images 48] [--batch-size 8]
                                     [--rounds 3] [--threads 2]

Both measure images per second over the same generated images (shapes scenes rendered at the input
size, so no file decoding is involved on either side), in the same process, interleaved round by
round so that other load on the machine hits both alike; wall-clock and CPU time (this process,
all threads) are both reported, the latter being far less sensitive to other jobs:
  * bare:  `encoder(normalize(batch))` under inference mode, for each batch;
  * cache: `captioner.data.cache.open_or_build` into a fresh folder: fingerprint (a SHA-256 of the
           encoder's weights and the image list), DataLoader batching, the same forward, float16
           conversion, `pwrite` to the cache file, fsync, index.
Random weights (no ImageNet download here): the arithmetic is the same. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import torch

from captioner.config import ModelConfig
from captioner.data.cache import open_or_build
from captioner.data.shapes import ShapesSet
from captioner.images import normalize
from captioner.model import Captioner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="vgg16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Captioner(ModelConfig(vocab_size=100, encoder=args.encoder, image_size=args.image_size)).eval()
    images = ShapesSet(seed=123, num_images=args.images, image_size=args.image_size)
    batches = [torch.stack([images.image(i) for i in range(s, min(s + args.batch_size, args.images))])
               for s in range(0, args.images, args.batch_size)]

    def bare() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            for batch in batches:
                model.encoder(normalize(batch))
        return time.perf_counter() - start, time.process_time() - cpu

    def cache() -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as tmp:
            start, cpu = time.perf_counter(), time.process_time()
            open_or_build(model, images, tmp, "train", batch_size=args.batch_size, progress=False, log=lambda m: None)
            return time.perf_counter() - start, time.process_time() - cpu

    bare()  # warm-up: allocator, oneDNN kernels
    bare_s, cache_s, bare_cpu, cache_cpu = [], [], [], []
    for _ in range(args.rounds):
        for seconds, cpu, fn in ((bare_s, bare_cpu, bare), (cache_s, cache_cpu, cache)):
            wall, used = fn()
            seconds.append(wall)
            cpu.append(used)
        print(f"round: bare {args.images / bare_s[-1]:.2f} img/s ({args.images / bare_cpu[-1]:.2f} per CPU-s), "
              f"cache build {args.images / cache_s[-1]:.2f} img/s ({args.images / cache_cpu[-1]:.2f} per CPU-s)",
              file=sys.stderr, flush=True)
    ratios = [b / c for b, c in zip(bare_s, cache_s)]
    print(json.dumps({
        "encoder": args.encoder, "image_size": args.image_size, "images": args.images,
        "batch_size": args.batch_size, "threads": args.threads, "rounds": args.rounds,
        "bare_img_per_s_median": round(args.images / statistics.median(bare_s), 3),
        "cache_img_per_s_median": round(args.images / statistics.median(cache_s), 3),
        "cache_over_bare_per_round": [round(r, 3) for r in ratios],
        "cache_over_bare_median": round(statistics.median(ratios), 3),
        "cache_over_bare_total": round(sum(bare_s) / sum(cache_s), 3),
        "bare_img_per_cpu_s": round(args.images * args.rounds / sum(bare_cpu), 3),
        "cache_img_per_cpu_s": round(args.images * args.rounds / sum(cache_cpu), 3),
        "cache_over_bare_cpu_total": round(sum(bare_cpu) / sum(cache_cpu), 3),
        "load_average_1min": round(__import__("os").getloadavg()[0], 1),
    }))


if __name__ == "__main__":
    main()
