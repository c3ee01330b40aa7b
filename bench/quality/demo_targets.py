"""The shapes demo's targets: train it with its defaults (timed), then score the checkpoint on a
held-out shapes test set (the test split's generator seed is never used in training), beam size 3.

    python -m bench.quality.demo_targets                       # train into runs/demo_bench, then evaluate
    python -m bench.quality.demo_targets --weights weights/shapes_soft.pt --skip-training

Prints each figure and the command that reproduces it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"command failed ({result.returncode}): {' '.join(cmd)}\n{result.stderr[-2000:]}")
    return elapsed, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="runs/demo_bench", help="run folder for the timed training")
    parser.add_argument("--weights", default=None, help="checkpoint to evaluate (default: the run's best.pt)")
    parser.add_argument("--skip-training", action="store_true", help="only evaluate --weights")
    parser.add_argument("--num-images", type=int, default=1000, help="held-out test images")
    parser.add_argument("--beam-size", type=int, default=3, help="beam size for the evaluation")
    args = parser.parse_args()

    python = sys.executable
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"date {time.strftime('%Y-%m-%d')}")
    weights = args.weights
    if not args.skip_training:
        cmd = [python, "train.py", "--dataset", "shapes", "--out-dir", args.out_dir, "--no-progress"]
        seconds, out = run(cmd)
        print(f"training wall time: {seconds / 60:.1f} min   ({' '.join(cmd[1:])})")
        print(f"  summary: {out.strip().splitlines()[-1]}")
        weights = weights or str(Path(args.out_dir) / "best.pt")
    if weights is None:
        sys.exit("--skip-training needs --weights")
    cmd = [python, "-m", "captioner.evaluate", "--weights", weights, "--dataset", "shapes", "--split", "test",
           "--beam-size", str(args.beam_size), "--num-images", str(args.num_images)]
    seconds, out = run(cmd)
    scores = json.loads(out.strip().splitlines()[-1])
    print(f"held-out test ({args.num_images} images, beam {args.beam_size}): BLEU-4 {scores['Bleu_4']:.4f}, "
          f"attention localisation {scores['attention_localization']:.4f}   ({' '.join(cmd[1:])})")


if __name__ == "__main__":
    main()
