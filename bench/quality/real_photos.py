"""Real-photo checks of a captioning model, beside `python -m captioner.evaluate`'s Flickr8k table:

    python -m bench.quality.real_photos coco --images DIR --annotations captions.json   # caption and score photos
    python -m bench.quality.real_photos dogs --data-root FLICKR8K_TEXT --images PHOTOS   # the encoder's ImageNet check

`coco`: captions every photo of an official-format COCO captions file once (beam 3, the default
model unless --weights), prints each caption beside one of its references, and the coco-caption
scores (BLEU-4, CIDEr, ...) against all the references. `dogs`: the encoder alone, as an ImageNet
classifier, on the Flickr8k photos of a split whose captions say "dog": how many get a dog breed
(ImageNet classes 151-268) as top-1, a behavioural check that the network and its weights fit.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def coco(args) -> int:
    from captioner import Captioner
    from captioner.metrics import coco_scores

    data = json.loads(Path(args.annotations).read_text())
    refs: dict = {}
    for a in data["annotations"]:
        refs.setdefault(a["image_id"], []).append(a["caption"])
    images = [(im["id"], Path(args.images) / im["file_name"]) for im in data["images"] if im["id"] in refs]
    model = Captioner.load(args.weights)
    start = time.time()
    captions = model.caption([str(p) for _, p in images], beam_size=args.beam_size)
    seconds = time.time() - start
    for (image_id, path), caption in zip(images, captions):
        print(f"{path.name}\t{caption.text}\t(a reference: {refs[image_id][0].strip()})")
    scores = coco_scores([c.text for c in captions], [refs[i] for i, _ in images])
    print(json.dumps({"images": len(images), "beam_size": args.beam_size, "seconds": round(seconds, 1),
                      **{k: round(v, 4) for k, v in scores.overall.items()}}))
    return 0


def dogs(args) -> int:
    from captioner.config import ModelConfig
    from captioner.data import load_split
    from captioner.encoder import EfficientNetLite, lite_state_dict, preprocessing_for
    from captioner.images import normalize

    encoder = EfficientNetLite(args.encoder, "head")
    encoder.load_state_dict(lite_state_dict(args.encoder), strict=True)
    encoder.eval()
    prep = preprocessing_for(ModelConfig(vocab_size=4, encoder=args.encoder, encoder_layer="head", encoder_dim=1280))
    images = load_split("flickr8k", args.split, image_size=prep.size, data_root=args.data_root, images=args.images,
                        resize=prep.resize)
    chosen = [i for i, refs in enumerate(images.references)
              if sum("dog" in r.lower().split() or "dogs" in r.lower().split() for r in refs) >= args.min_refs]
    breeds = 0
    with torch.inference_mode():
        for start in range(0, len(chosen), 32):
            batch = torch.stack([images.image(i) for i in chosen[start:start + 32]])
            top1 = encoder.classify(normalize(batch, prep)).argmax(dim=1)
            breeds += int(((top1 >= 151) & (top1 <= 268)).sum())
    print(json.dumps({"split": args.split, "photos_saying_dog": len(chosen), "top1_dog_breed": breeds,
                      "fraction": round(breeds / max(1, len(chosen)), 3), "min_refs": args.min_refs}))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("coco", help="caption and score the photos of a COCO captions file")
    c.add_argument("--images", required=True, help="folder of the photos")
    c.add_argument("--annotations", required=True, help="official-format COCO captions JSON")
    c.add_argument("--weights", default=None, help="checkpoint (default: the shipped real-photo model)")
    c.add_argument("--beam-size", type=int, default=3, help="beam size (default 3)")
    d = sub.add_parser("dogs", help="ImageNet top-1 of the encoder on Flickr8k photos captioned with 'dog'")
    d.add_argument("--data-root", required=True, help="Flickr8k text release folder")
    d.add_argument("--images", required=True, help="Flickr8k photo folder")
    d.add_argument("--split", default="test", help="split (default test)")
    d.add_argument("--encoder", default="efficientnet_lite0", help="EfficientNet-Lite variant")
    d.add_argument("--min-refs", type=int, default=3, help="how many of the 5 captions must say dog (default 3)")
    args = p.parse_args(argv)
    return coco(args) if args.command == "coco" else dogs(args)


if __name__ == "__main__":
    raise SystemExit(main())
