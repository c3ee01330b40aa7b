"""Robustness of image reading: the malformed-file corpus and a mutation fuzz run, through the loader
(`captioner.images.load_image` + `preprocess`) and through `caption.py` in one process.

    nice .venv/bin/python -m bench.reliability.fuzz_images [--count 300] [--seed 7]

Everything is generated in a temporary folder (tests/image_corpus.py makes the files; a tiny
randomly initialised checkpoint stands in for trained weights: the captions are nonsense, the
point is that every file is either captioned or named). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

from captioner.images import ImageError, load_image, preprocess  # noqa: E402
from tests.image_corpus import fuzz_files, make_corpus  # noqa: E402

BOUND_S = 5.0  # a file slower than this counts as a hang


def through_loader(paths) -> dict:
    times, readable, refused, crashes, hangs = [], 0, 0, [], 0
    for path in paths:
        start = time.perf_counter()
        try:
            preprocess(load_image(path), 224)
            readable += 1
        except ImageError:
            refused += 1
        except BaseException as e:  # noqa: BLE001 - what we count
            crashes.append(f"{Path(path).name}: {type(e).__name__}: {e}")
        seconds = time.perf_counter() - start
        hangs += seconds > BOUND_S
        times.append(seconds)
    return {"files": len(paths), "readable": readable, "refused_with_reason": refused, "tracebacks": len(crashes),
            "hangs": hangs, "max_s": round(max(times), 4), "median_s": round(statistics.median(times), 5),
            "crashes": crashes[:5]}


def through_cli(paths, weights) -> dict:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "caption.py"), "--weights", str(weights), *map(str, paths)],
                            cwd=ROOT, capture_output=True, text=True, encoding="utf-8", errors="surrogateescape",
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=1800)
    captioned = {line.split("\t")[0] for line in result.stdout.splitlines()}
    named = {line.split(": ")[0] for line in result.stderr.splitlines()}
    wanted = {str(p) for p in paths}
    return {"files": len(paths), "exit_status": result.returncode, "captioned": len(captioned & wanted),
            "named_on_stderr": len(named & wanted), "neither": len(wanted - captioned - named),
            "stderr_lines": len(result.stderr.splitlines()),
            "tracebacks": result.stderr.count("Traceback") + result.stdout.count("Traceback"),
            "seconds": round(time.perf_counter() - start, 1)}


def tiny_weights(folder: Path) -> Path:
    import torch

    from captioner.checkpoint import save_checkpoint
    from captioner.config import ModelConfig
    from captioner.model import Captioner
    from captioner.vocab import SPECIALS, Vocabulary

    vocab = Vocabulary(list(SPECIALS) + ["a", "red", "blue", "circle", "square"])
    torch.manual_seed(0)
    model = Captioner(ModelConfig(vocab_size=len(vocab), encoder="vgg_tiny", image_size=32, encoder_dim=32,
                                  embed_dim=16, hidden_dim=32, attention_dim=16, max_len=8, dropout=0.0))
    path = folder / "tiny.pt"
    save_checkpoint(path, model, vocab)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="mutated files (half JPEG, half PNG)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = make_corpus(tmp / "corpus")
        corpus = [c.path for c in cases]
        loader = through_loader(corpus)
        expected_readable = sum(c.readable for c in cases)
        fuzz = fuzz_files(tmp / "fuzz", args.count, args.seed)
        weights = tiny_weights(tmp)
        report = {
            "corpus": {"files": len(cases), "expected_readable": expected_readable,
                       "expected_unreadable": len(cases) - expected_readable, "loader": loader,
                       "caption.py": through_cli(corpus, weights)},
            "fuzz": {"mutations": args.count, "seed": args.seed, "loader": through_loader(fuzz),
                     "caption.py": through_cli(fuzz, weights)},
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
