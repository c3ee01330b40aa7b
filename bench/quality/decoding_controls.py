"""Decoding controls on a real split: every combination of beam size, GNMT length
penalty, no_repeat_ngram_size and minimum length given, scored by the coco-caption metrics, with
the captions' statistics (share with a repeated content bigram, mean length, distinct words).

Choose on the dev split (val); decode the test split once, with the chosen values.

    python -m bench.quality.decoding_controls --weights weights/flickr8k_soft.pt --data-root FLICKR8K_TEXT \
        --images PHOTOS --cache /work/cache --beam-size 3 --length-penalty 0,1 --no-repeat-ngram-size 0,3

prints one JSON line per setting. `--captions-out FILE` writes the last setting's captions.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch

from bench.common import add_split_args, annotations_batches, print_command, split_features


def _numbers(kind):
    return lambda text: [kind(x) for x in text.split(",")]


def main(argv=None) -> int:
    from captioner.beam import beam_search
    from captioner.caption_stats import caption_statistics
    from captioner.metrics import coco_scores

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_args(p)
    p.add_argument("--beam-size", type=_numbers(int), default=[3], help="comma-separated beam sizes")
    p.add_argument("--length-penalty", type=_numbers(float), default=[0.0], help="comma-separated GNMT alphas")
    p.add_argument("--no-repeat-ngram-size", type=_numbers(int), default=[0], help="comma-separated n (0: off)")
    p.add_argument("--min-length", type=_numbers(int), default=[0], help="comma-separated minimum lengths in words")
    p.add_argument("--no-java", action="store_true", help="skip METEOR and Java's tokeniser")
    p.add_argument("--captions-out", default=None, help="write the last setting's captions here (JSON)")
    args = p.parse_args(argv)
    print_command()
    torch.set_grad_enabled(False)
    model, vocab, images, features = split_features(args)
    model.eval()
    references = [list(r) for r in images.references]
    batches = list(annotations_batches(features, 100, args.num_images))
    references = references[:sum(len(i) for i, _ in batches)]
    for beam, alpha, n, floor in itertools.product(args.beam_size, args.length_penalty, args.no_repeat_ngram_size,
                                                   args.min_length):
        start = time.time()
        captions = [c.words for _, annotations in batches
                    for c in beam_search(model, annotations, vocab, beam_size=beam, length_penalty=alpha,
                                         no_repeat_ngram_size=n, min_length=floor)]
        seconds = time.time() - start
        scores = coco_scores([" ".join(c) for c in captions], references, java=False if args.no_java else None)
        stats = caption_statistics(captions, top=3)
        print(json.dumps({"beam_size": beam, "length_penalty": alpha, "no_repeat_ngram_size": n, "min_length": floor,
                          **{k: round(v, 4) for k, v in scores.overall.items()},
                          **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in stats.items()},
                          "decode_s": round(seconds, 1)}), flush=True)
    if args.captions_out:
        with open(args.captions_out, "w") as f:
            json.dump([{"image": str(i), "caption": " ".join(c)} for i, c in zip(images.ids[:len(captions)], captions)], f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
