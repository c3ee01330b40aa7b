"""The official coco-caption numbers for a results file, for comparison with `captioner.evaluate`.

This follows the toolkit's own example (pycocotools COCO + loadRes, then COCOEvalCap's steps on
the images of the results file) but calls its PTBTokenizer and its Bleu, Meteor, Rouge and
Cider scorers directly: `COCOEvalCap.evaluate()` also builds SPICE, which needs a Stanford
CoreNLP download and so fails offline before it reports anything.

    nice python -m bench.quality.official_scores --annotations REFS.json --results RESULTS.json [--out FILE]

Prints one JSON object (the toolkit's overall scores) as its last line; --out also writes the
per-image scores, keyed by image id, for a line-by-line comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time


def official_scores(annotations: str, results: str) -> tuple[dict, dict]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools chats on stdout
        coco = COCO(annotations)
        coco_res = coco.loadRes(results)
    image_ids = coco_res.getImgIds()  # as the toolkit's example sets params['image_id']
    gts = {i: coco.imgToAnns[i] for i in image_ids}
    res = {i: coco_res.imgToAnns[i] for i in image_ids}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)

    overall, per_image = {}, {i: {} for i in gts}
    meteor = Meteor()
    try:
        scorers = [(Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]), (meteor, ["METEOR"]),
                   (Rouge(), ["ROUGE_L"]), (Cider(), ["CIDEr"])]
        for scorer, names in scorers:
            with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its counts
                score, scores = scorer.compute_score(gts, res)
            if len(names) == 1:
                score, scores = [score], [scores]
            for name, total, each in zip(names, score, scores):
                overall[name] = float(total)
                for image_id, value in zip(gts, each):
                    per_image[image_id][name] = float(value)
    finally:
        del meteor  # its __del__ closes the Java process
    return overall, per_image


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", required=True, help="references, COCO captions format")
    parser.add_argument("--results", required=True, help="results, COCO results format")
    parser.add_argument("--out", default=None, help="also write overall and per-image scores to this JSON file")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    overall, per_image = official_scores(args.annotations, args.results)
    seconds = time.perf_counter() - start
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"overall": overall, "per_image": {str(k): v for k, v in per_image.items()},
                       "seconds": seconds}, f)
    print(f"official toolkit: {len(per_image)} images in {seconds:.1f} s", file=sys.stderr)
    print(json.dumps(overall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
