"""Which EfficientNet-Lite layer gives the best captions: feature caches of several layers from one
encoder pass, for the train/val/test splits of a data set, where `train.py --feature-cache` finds
them. Then train one decoder per layer on the same budget and compare dev (val) BLEU-4 / CIDEr.

    python -m bench.quality.encoder_layers --data-root FLICKR8K_TEXT --images PHOTOS --cache /tmp/f8k-cache

prints the cache folders; the training commands are in BENCHMARKS.md ("Encoder layers").
"""

from __future__ import annotations

import argparse
import time

import torch


def main(argv=None) -> int:
    from captioner.config import LITE_LAYERS, model_config_for
    from captioner.data import load_split
    from captioner.data.cache import build_layers
    from captioner.encoder import lite_state_dict
    from captioner.model import Captioner

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="flickr8k", help="data set (default: flickr8k)")
    p.add_argument("--data-root", required=True, help="the data set's annotation folder")
    p.add_argument("--images", default=None, help="photo folder, if not under --data-root")
    p.add_argument("--encoder", default="efficientnet_lite0", help="EfficientNet-Lite variant")
    p.add_argument("--layers", default=",".join(LITE_LAYERS), help="comma-separated layers to cache")
    p.add_argument("--splits", default="train,val,test", help="comma-separated splits")
    p.add_argument("--cache", required=True, help="feature cache folder (as train.py --feature-cache)")
    p.add_argument("--batch-size", type=int, default=64, help="images per encoder pass")
    p.add_argument("--num-workers", type=int, default=1, help="DataLoader workers decoding photos")
    args = p.parse_args(argv)
    layers = args.layers.split(",")
    model = Captioner(model_config_for(args.dataset, 10, encoder=args.encoder, encoder_layer=layers[0]))
    model.encoder.load_state_dict(lite_state_dict(args.encoder), strict=True)
    model.eval()
    for split in args.splits.split(","):
        images = load_split(args.dataset, split, image_size=model.config.image_size, data_root=args.data_root,
                            images=args.images, resize=model.config.resize)
        start = time.time()
        folders = build_layers(model, images, args.cache, split, layers, batch_size=args.batch_size,
                               num_workers=args.num_workers)
        print(f"{split}: {len(images)} images, {time.time() - start:.0f} s, threads {torch.get_num_threads()}")
        for layer, folder in zip(layers, folders):
            print(f"  {layer}: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
