"""Attention faithfulness of a checkpoint on a real split: for every content word of
the model's own beam-search captions, the drop in log p(word) when the top 10% of that step's
attention is forbidden, against as many random cells; the share of words losing more than 0.5
nats; the attention mass in the top 10% of cells. See captioner/faithfulness.py.

    python -m bench.quality.faithfulness --weights weights/flickr8k_soft.pt --data-root FLICKR8K_TEXT \
        --images PHOTOS --cache /work/cache --split val --num-images 200
"""

from __future__ import annotations

import argparse
import json

import torch

from bench.common import add_split_args, annotations_batches, print_command, split_features


def main(argv=None) -> int:
    from captioner.beam import beam_search
    from captioner.faithfulness import WordEffects, word_effects

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_args(p)
    p.add_argument("--beam-size", type=int, default=3, help="beam size of the captions measured (default: 3)")
    p.add_argument("--fraction", type=float, default=0.1, help="share of cells forbidden (default: 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random cells (default: 0)")
    args = p.parse_args(argv)
    print_command()
    torch.set_grad_enabled(False)
    model, vocab, _, features = split_features(args)
    model.eval()
    generator = torch.Generator().manual_seed(args.seed)
    parts = []
    for _, batch in annotations_batches(features, 50, args.num_images):
        captions = [c.words for c in beam_search(model, batch, vocab, beam_size=args.beam_size)]
        parts.append(word_effects(model, batch, captions, vocab, args.fraction, generator))
    summary = {"weights": args.weights, "split": args.split, "images": min(len(features), args.num_images or len(features)),
               **WordEffects.join(parts).summary()}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
