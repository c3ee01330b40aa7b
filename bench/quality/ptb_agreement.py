"""How closely the pure-Python PTB tokenisation (`captioner.metrics.ptb_tokenize`, used where Java
is missing) follows the toolkit's Java tokeniser, on real captions.

    nice python -m bench.quality.ptb_agreement [--data ../shared/data] [--show 10]

Reads every caption of the COCO and Flickr files in the shared data folder (references, published
predictions, Flickr8k), de-duplicated, tokenises them both ways and counts the captions whose
token lists differ.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

from captioner.metrics import ptb_tokenize, ptb_tokenize_java  # noqa: E402

REFERENCE_FILES = ["karpathy_test_refs/coco_karpathy_test_coco_format.json",
                   "karpathy_test_refs/flickr30k_karpathy_test_coco_format.json",
                   "coco_val2014_subset/captions_val2014_subset_ece285.json"]
RESULT_FILES = ["karpathy_test_refs/magic_coco_results_coco_format.json",
                "karpathy_test_refs/magic_flickr30k_results_coco_format.json",
                "coco_caption_eval/captions_val2014_fakecap_results.json"]


def captions(data: Path) -> list[str]:
    found = []
    for name in REFERENCE_FILES:
        found += [a["caption"] for a in json.loads((data / name).read_text())["annotations"]]
    for name in RESULT_FILES:
        found += [r["caption"] for r in json.loads((data / name).read_text())]
    flickr8k = data / "flickr8k_text" / "Flickr8k.token.txt"
    found += [line.split("\t", 1)[1].rstrip("\n") for line in flickr8k.read_text(errors="replace").splitlines()
              if "\t" in line]
    return list(dict.fromkeys(found))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="the shared data folder")
    parser.add_argument("--show", type=int, default=10, help="print this many differing captions")
    args = parser.parse_args(argv)
    texts = captions(Path(args.data))
    start = time.perf_counter()
    java = ptb_tokenize_java(texts)
    java_s = time.perf_counter() - start
    start = time.perf_counter()
    python = [ptb_tokenize(t) for t in texts]
    python_s = time.perf_counter() - start
    differ = [(t, j, p) for t, j, p in zip(texts, java, python) if j != p]
    print(f"{len(texts)} distinct captions: {len(differ)} tokenised differently ({len(differ) / len(texts):.4%}); "
          f"Java {java_s:.1f} s, Python {python_s:.1f} s")
    for text, j, p in differ[:args.show]:
        print(f"  {text!r}\n    java:   {' '.join(j)}\n    python: {' '.join(p)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
