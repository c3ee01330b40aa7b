"""Peak resident memory and captions per second of decoder training from a COCO-sized feature cache.

    nice python -m bench.memory.cache_memory --images 123287 [--steps 30] [--batch-size 32] [--dir /tmp/capcache]
    nice python -m bench.memory.cache_memory --images 123287 --reader memmap --rows 10000   # the contrast

Creates a synthetic cache in the real format (`captioner.data.cache`): an index and a float16 file
of images x 196 x 512 (123,287 images: 24.7 GB), *sparse*: only the rows this run will read are
written (random values), so it needs little disk. Then trains the paper's decoder (D=512, m=512,
n=1024, attention 512, vocabulary 10,000, frozen VGG-19 held in memory as in real training) for
--steps Adam steps on 5 synthetic captions per image (lengths 8 to 20 tokens), batched by
`LengthGroupedBatches` and read through `CaptionPairs`/`FeatureSet` and a DataLoader, exactly as
`train.py --feature-cache` does. Reports the peak resident set size (getrusage ru_maxrss) and
captions per second (steps after the first 3).

--reader memmap instead copies --rows random rows out of an `np.memmap` of the same file and reports
how resident memory grows with the rows touched (why training reads with pread).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

from captioner.config import ModelConfig, TrainConfig
from captioner.data import CaptionPairs, collate_pairs
from captioner.data.batching import LengthGroupedBatches
from captioner.data.cache import DATA_FILE, FORMAT, INDEX_FILE, VERSION, FeatureSet, model_inputs
from captioner.model import Captioner
from captioner.training import batch_loss
from captioner.vocab import SPECIALS, Vocabulary

L, D, VOCAB, CAPTIONS_PER_IMAGE = 196, 512, 10_000, 5


def rss_now_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_cache(folder: Path, n: int, rows: np.ndarray) -> None:
    """A complete cache index and a sparse N x L x D float16 file with `rows` filled."""
    folder.mkdir(parents=True, exist_ok=True)
    row_bytes = L * D * 2
    with open(folder / DATA_FILE, "wb") as f:
        f.truncate(n * row_bytes)
        rng = np.random.default_rng(0)
        for r in np.unique(rows):
            f.seek(int(r) * row_bytes)
            f.write(rng.standard_normal((L, D), dtype=np.float32).astype(np.float16).tobytes())
    (folder / INDEX_FILE).write_text(json.dumps({"format": FORMAT, "version": VERSION, "fingerprint": "synthetic",
                                                 "key": {"dataset": "synthetic", "images": n},
                                                 "shape": [n, L, D], "dtype": "float16", "complete": True}))


class SyntheticCaptions:
    """What CaptionPairs needs from an image set's references, without tokenising 616k strings:
    CAPTIONS_PER_IMAGE token lists per image (the `tokens=` argument of CaptionPairs)."""

    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        lengths = rng.integers(6, 19, size=(n, CAPTIONS_PER_IMAGE))
        words = [f"w{i}" for i in range(VOCAB - len(SPECIALS))]
        self.vocab = Vocabulary(list(SPECIALS) + words)
        picks = rng.integers(0, len(words), size=int(lengths.sum()))
        self.tokens, k = [], 0
        for row in lengths:
            refs = []
            for m in row:
                refs.append([words[j] for j in picks[k:k + m]])
                k += m
            self.tokens.append(refs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=123_287)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dir", default="/tmp/captioner-cache-bench")
    parser.add_argument("--reader", choices=("pread", "memmap"), default="pread")
    parser.add_argument("--rows", type=int, default=10_000, help="memmap reader: random rows to copy out")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic cache file afterwards")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    folder = Path(args.dir) / f"synthetic-{args.images}"
    start_rss = rss_now_mib()

    if args.reader == "memmap":
        rows = np.random.default_rng(1).integers(0, args.images, size=args.rows)
        make_cache(folder, args.images, rows)
        mm = np.memmap(folder / DATA_FILE, dtype=np.float16, mode="r", shape=(args.images, L, D))
        before = rss_now_mib()
        t0 = time.perf_counter()
        checksum = 0.0
        for r in rows:
            checksum += float(np.array(mm[r])[0, 0])
        seconds = time.perf_counter() - t0
        result = {"reader": "memmap", "images": args.images, "rows_read": args.rows,
                  "rows_mib": round(len(np.unique(rows)) * L * D * 2 / 2**20, 1),
                  "rss_before_mib": round(before, 1), "rss_after_mib": round(rss_now_mib(), 1),
                  "peak_rss_mib": round(peak_mib(), 1), "seconds": round(seconds, 2)}
    else:
        captions = SyntheticCaptions(args.images)
        config = ModelConfig(vocab_size=len(captions.vocab), encoder="vgg19", image_size=224)
        model = Captioner(config)
        for p in model.encoder.parameters():
            p.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=1e-4)
        tc = TrainConfig(batch_size=args.batch_size)
        # The rows the run will read: the first `steps` batches of epoch 0, from the same sampler.
        probe = CaptionPairs(None, captions.vocab, config.max_len, tokens=captions.tokens)
        sampler = LengthGroupedBatches(probe.lengths, args.batch_size, seed=0)
        batches = sampler.batches()[: args.steps]
        rows = probe.image_index[np.concatenate(batches)]
        make_cache(folder, args.images, rows)
        features = FeatureSet(folder, [["synthetic"]] * args.images, list(range(args.images)))
        pairs = CaptionPairs(features, captions.vocab, config.max_len, tokens=captions.tokens)
        del captions, probe
        loader = torch.utils.data.DataLoader(pairs, batch_sampler=batches, num_workers=0,
                                             collate_fn=lambda b: collate_pairs(b, 0))
        setup_rss = rss_now_mib()
        model.train()
        times, cpu, n_captions = [], [], 0
        t_last, c_last = time.perf_counter(), time.process_time()
        for k, (annotations, caps) in enumerate(loader):
            losses = batch_loss(model, model_inputs(annotations), caps, 0, tc)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            now, c_now = time.perf_counter(), time.process_time()
            if k >= 3:
                times.append(now - t_last)
                cpu.append(c_now - c_last)
                n_captions += caps.shape[0]
            t_last, c_last = now, c_now
        result = {"reader": "pread", "images": args.images, "pairs": len(pairs), "steps": args.steps,
                  "batch_size": args.batch_size, "threads": args.threads,
                  "cache_file_gib": round(args.images * L * D * 2 / 2**30, 2),
                  "cache_disk_used_mib": round(os.stat(folder / DATA_FILE).st_blocks * 512 / 2**20, 1),
                  "rss_start_mib": round(start_rss, 1), "rss_after_setup_mib": round(setup_rss, 1),
                  "peak_rss_mib": round(peak_mib(), 1),
                  "captions_per_s": round(n_captions / sum(times), 2) if times else None,
                  "captions_per_cpu_s": round(n_captions / sum(cpu), 2) if cpu else None,
                  "load_average_1min": round(os.getloadavg()[0], 1),
                  "final_loss": round(float(losses["loss"].detach()), 3)}
    if not args.keep:
        (folder / DATA_FILE).unlink()
        (folder / INDEX_FILE).unlink()
        folder.rmdir()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
