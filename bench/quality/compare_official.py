"""Our scores next to the official coco-caption toolkit's, for one references/results pair.

    nice python -m bench.quality.compare_official --annotations REFS.json --results RESULTS.json [--no-java]

Ours: `captioner.evaluate`'s readers and `captioner.metrics.coco_scores` (the code behind
`python -m captioner.evaluate`). Official: pycocoevalcap's PTBTokenizer, Bleu, Meteor, Rouge and
Cider, run as COCOEvalCap runs them (see official_scores.py). Prints a Markdown table with both,
the largest per-image difference of each metric, and the time each took.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

from bench.quality.official_scores import official_scores  # noqa: E402
from captioner.evaluate import load_references, load_results, match_results  # noqa: E402
from captioner.metrics import METRICS, coco_scores  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", required=True, help="references, COCO captions format")
    parser.add_argument("--results", required=True, help="results, COCO results format")
    parser.add_argument("--no-java", action="store_true",
                        help="score ours with the pure-Python tokenisation and no METEOR (the official side "
                             "always uses Java)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    ids, hyps, refs = match_results(load_results(args.results), load_references(args.annotations),
                                    args.results, args.annotations)
    ours = coco_scores(hyps, refs, java=False if args.no_java else None)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    official, official_each = official_scores(args.annotations, args.results)
    official_s = time.perf_counter() - start

    print(f"{len(ids)} images; ours: {ours.tokenizer}, {ours_s:.1f} s; official toolkit: {official_s:.1f} s")
    for warning in ours.warnings:
        print(f"warning: {warning}")
    print("\n| metric | ours | official | |ours - official| | largest per-image difference |")
    print("| --- | --- | --- | --- | --- |")
    for name in METRICS:
        if name not in ours.overall:
            print(f"| {name} | - | {official[name]:.4f} | - | - |")
            continue
        worst = max(abs(row[name] - official_each[i][name]) for i, row in zip(ids, ours.per_image))
        print(f"| {name} | {ours.overall[name]:.4f} | {official[name]:.4f} | "
              f"{abs(ours.overall[name] - official[name]):.1e} | {worst:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
