"""Wall-clock time of `python -m captioner.evaluate` on a results file, end to end (interpreter
start, reading both files, tokenising, all metrics), with Java and without.

    nice python -m bench.speed.eval_speed --annotations REFS.json --results RESULTS.json [--repeats 2]

The issue's target: the 4,982-image COCO Karpathy test set in at most 60 s on the 2-core machine.
Each run is a fresh process, so the Java start-up of the tokeniser and of METEOR is included.
CPU seconds (the process and its Java children) are reported next to wall seconds: on a shared
machine the wall time mostly measures the other work.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)   # includes the Java processes it waited for
    return usage.ru_utime + usage.ru_stime


def time_once(extra: list[str], annotations: str, results: str) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of the process and its Java children, scores)."""
    cpu = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "captioner.evaluate", "--annotations", annotations,
                           "--results", results, *extra], cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"captioner.evaluate failed: {done.stderr.strip()}")
    return seconds, _children_cpu() - cpu, json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", required=True, help="references, COCO captions format")
    parser.add_argument("--results", required=True, help="results, COCO results format")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration")
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; {args.results}")
    for label, extra in (("with Java (PTB tokeniser + METEOR)", []), ("without Java (--no-java)", ["--no-java"])):
        walls, cpus = [], []
        for _ in range(args.repeats):
            wall, cpu, scores = time_once(extra, args.annotations, args.results)
            walls.append(wall)
            cpus.append(cpu)
        # CPU seconds do not depend on what else the machine runs; wall seconds do.
        print(f"{label}: wall median {statistics.median(walls):.1f} s (min {min(walls):.1f}, max {max(walls):.1f}); "
              f"CPU median {statistics.median(cpus):.1f} s; {len(walls)} runs; load average now "
              f"{os.getloadavg()[0]:.1f}; Bleu_4 {scores['Bleu_4']:.4f}, CIDEr {scores['CIDEr']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
