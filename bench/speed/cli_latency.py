"""Wall time of `python caption.py photo` for one photo, from process start to the printed caption.

    python -m bench.speed.cli_latency [--runs 10] [--image examples/shapes/shapes_3obj.png] [--weights CKPT] [--folder 32]

Each run is a fresh interpreter (`subprocess.Popen`, the clock started just before it): the time
to the caption on stdout and to the process's exit are both reported (median, min, max), plus,
from one `python -X importtime` run, what the imports cost and a check that nothing heavy
(matplotlib, torchvision, pycocotools, nltk, torch._dynamo) is imported when no overlay is asked for.
`--folder N` also times `caption.py` on N photo-like JPEG files with a VGG-16 checkpoint (random
weights) and reports the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HEAVY = ("matplotlib", "torchvision", "pycocotools", "pycocoevalcap", "nltk", "scipy", "pandas", "torch._dynamo")


def one_run(cmd: list[str]) -> tuple[float, float, str]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    printed = time.perf_counter() - start
    rest, err = proc.communicate()
    exited = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"caption.py failed ({proc.returncode}): {err.strip()}")
    return printed, exited, line.strip()


def import_costs(cmd: list[str]) -> tuple[dict[str, float], list[str]]:
    """Cumulative import time (s) of the top-level packages, and the heavy modules imported."""
    done = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], cwd=ROOT, capture_output=True, text=True)
    totals: dict[str, float] = {}
    modules = set()
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        name = m.group(4)
        modules.add(name)
        if len(m.group(3)) == 1:                                  # imported by the script itself
            top = name.split(".")[0]
            totals[top] = totals.get(top, 0.0) + int(m.group(2)) / 1e6
    heavy = sorted(h for h in HEAVY if h in modules)
    return dict(sorted(totals.items(), key=lambda kv: -kv[1])), heavy


def main(argv=None) -> int:
    from bench.common import environment, print_command

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--image", default="examples/shapes/shapes_3obj.png")
    parser.add_argument("--weights", default=None, help="checkpoint (default: caption.py's, weights/shapes_soft.pt)")
    parser.add_argument("--folder", type=int, default=0, metavar="N",
                        help="also caption N photo-like JPEG files with a VGG-16 checkpoint: wall time, peak RSS")
    parser.add_argument("--folder-runs", type=int, default=2)
    args = parser.parse_args(argv)
    print_command()
    print(environment())
    cmd = [sys.executable, "caption.py", args.image] + (["--weights", args.weights] if args.weights else [])
    shown = " ".join(["python", *cmd[1:]])
    one_run(cmd)                                                   # warm the page cache
    printed, exited = [], []
    for _ in range(args.runs):
        p, e, caption = one_run(cmd)
        printed.append(p)
        exited.append(e)
    print(f"`{shown}` -> {caption!r}")
    print(f"to the printed caption: median {statistics.median(printed):.2f} s, min {min(printed):.2f} s, "
          f"max {max(printed):.2f} s over {args.runs} runs")
    print(f"to process exit:        median {statistics.median(exited):.2f} s, min {min(exited):.2f} s, "
          f"max {max(exited):.2f} s")
    bare = [one_run([sys.executable, "-c", "import torch; print(1)"])[1] for _ in range(3)]
    print(f"for scale, `python -c 'import torch'` alone: median {statistics.median(bare):.2f} s over 3 runs")
    totals, heavy = import_costs(cmd)
    print("imports (cumulative, one -X importtime run): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in list(totals.items())[:6]))
    print(f"heavy modules imported without --attention: {', '.join(heavy) if heavy else 'none'} "
          f"(checked: {', '.join(HEAVY)})")
    if args.folder:
        folder_run(args.folder, args.folder_runs)
    return 1 if heavy else 0


def folder_run(count: int, runs: int) -> None:
    """`caption.py` on `count` JPEG files with a VGG-16 checkpoint (random weights, vocabulary 10,000):
    wall time and peak resident memory of the whole process (GNU time's %M)."""
    import tempfile

    from bench.common import bench_model, write_jpegs
    from captioner.checkpoint import save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        model, vocab = bench_model()
        weights = Path(tmp) / "vgg16_random.pt"
        save_checkpoint(weights, model, vocab)
        del model
        paths = write_jpegs(Path(tmp), count)
        cmd = ["/usr/bin/time", "-f", "%e %M", sys.executable, "caption.py", "--weights", str(weights),
               *map(str, paths)]
        walls, peaks = [], []
        for _ in range(runs):
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"caption.py failed: {done.stderr.strip()[-500:]}")
            wall, peak_kib = done.stderr.strip().splitlines()[-1].split()
            walls.append(float(wall))
            peaks.append(int(peak_kib) / 1024)
            assert len(done.stdout.strip().splitlines()) == count
    print(f"`python caption.py --weights vgg16_random.pt photo_000.jpg ... ({count} JPEG files, 640x480)`, "
          f"VGG-16 at 224, vocabulary 10,000, beam 3, batch 32: wall median {statistics.median(walls):.2f} s "
          f"(min {min(walls):.2f}) over {runs} runs -> {count / statistics.median(walls):.2f} images/s including "
          f"start-up; peak RSS {max(peaks):.0f} MiB")


if __name__ == "__main__":
    sys.exit(main())
