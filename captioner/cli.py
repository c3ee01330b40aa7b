"""Command-line front ends for `train.py` and `caption.py`. Flags map onto the fields of the
frozen configuration dataclasses; the model never sees the argparse namespace."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .config import ATTENTIONS, ENCODERS, POSITIONAL, SCORES, ModelConfig, TrainConfig

TRAIN_HELP = {
    "dataset": "data set: shapes (built in, no files), coco, flickr8k, flickr30k",
    "data_root": "folder holding the data set's images and annotations",
    "split_file": "Karpathy split file (dataset_coco.json, dataset_flickr8k.json, dataset_flickr30k.json)",
    "out_dir": "run folder: last.pt, best.pt, metrics.jsonl, config.json",
    "steps": "optimizer steps in total",
    "batch_size": "captions per batch",
    "lr": "peak learning rate (Adam)",
    "weight_decay": "Adam weight decay",
    "lr_schedule": "onecycle (warm-up then cosine), plateau (multiply by --lr-decay when val BLEU-4 stalls), "
                   "or constant",
    "lr_decay": "factor for the plateau schedule",
    "grad_clip": "clip the gradient norm to this value",
    "doubly_stochastic": "lambda of the doubly stochastic attention penalty, eq. (14); 0 turns it off",
    "eval_every": "validate (beam-search decoding, BLEU-4) every this many steps",
    "eval_images": "validation images decoded at each evaluation (shapes: generated)",
    "eval_beam_size": "beam size for validation decoding",
    "patience": "stop after this many evaluations without a BLEU-4 gain (0: never)",
    "train_images": "shapes: number of training images generated",
    "val_images": "shapes: number of validation images generated",
    "min_count": "words seen fewer times in the training captions become <unk>",
    "seed": "random seed (data order, initialisation; shapes: the generator seed of every split)",
    "num_workers": "DataLoader worker processes",
    "pretrained": "start the VGG encoder from torchvision's ImageNet weights (downloads once)",
    "encoder_weights": "start the VGG encoder from this local torchvision state_dict file",
    "finetune_encoder": "with pretrained weights: also train the encoder's last convolutional block",
    "freeze_encoder": "train the decoder only",
    "baseline_decay": "hard attention: decay of the moving-average log-likelihood baseline",
    "entropy_weight": "hard attention: weight of the entropy bonus on the attention distribution",
    "expectation_prob": "hard attention: probability per batch of using the expected (soft) context",
    "resume": "continue the run in --out-dir from its last.pt",
    "log_every": "steps between progress-bar loss updates",
    "progress": "show a progress bar",
}

MODEL_HELP = {
    "encoder": f"encoder network: {', '.join(ENCODERS)} (default vgg19; vgg_tiny for shapes)",
    "image_size": "input image side in pixels (224 gives a 14x14 grid with VGG)",
    "encoder_dim": "D, size of an annotation vector (512 for VGG)",
    "embed_dim": "m, word embedding size",
    "hidden_dim": "n, LSTM state size",
    "attention_dim": "hidden size of the attention MLP",
    "attention": f"attention mechanism: {', '.join(ATTENTIONS)}",
    "score": f"attention scoring function: {', '.join(SCORES)}",
    "num_heads": "heads for --score multihead",
    "gate": "use the gating scalar beta (sec. 4.2.1)",
    "dropout": "dropout before the deep output layer",
    "positional": f"positional encoding added to the annotations: {', '.join(POSITIONAL)}",
    "max_len": "longest caption in decoding steps (<end> included)",
    "local_sigma": "local attention: Gaussian window width in grid cells",
    "hard_test": "hard attention at test time: expected (soft context) or argmax (most likely location)",
}


def _add_fields(parser, cls, helps, skip=(), defaults_none=False):
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = None if defaults_none else f.default
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        help_text = helps[f.name]
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        caster = {"int": int, "float": float}.get(kind.replace(" | None", ""), str)
        choices = {"encoder": ENCODERS, "attention": ATTENTIONS, "score": SCORES, "positional": POSITIONAL,
                   "hard_test": ("expected", "argmax"),
                   "lr_schedule": ("onecycle", "plateau", "constant")}.get(f.name)
        suffix = "" if defaults_none else f" (default: {default})"
        parser.add_argument(flag, type=caster, default=default, choices=choices, help=help_text + suffix)


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py", description="Train a Show, Attend and Tell captioner.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_fields(parser.add_argument_group("training run"), TrainConfig, TRAIN_HELP)
    _add_fields(parser.add_argument_group("model (unset: the data set's defaults)"), ModelConfig, MODEL_HELP,
                skip=("vocab_size",), defaults_none=True)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (CUDA when available)")
    return parser


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available")
    return device


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def train_main(argv=None) -> int:
    args = train_parser().parse_args(argv)
    values = vars(args)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"vocab_size"}
    try:
        tc = TrainConfig(**{k: values[k] for k in train_fields})
        device = pick_device(args.device)
    except ValueError as e:
        return _fail(str(e))
    from .training import TrainingError, train

    overrides = {k: values[k] for k in model_fields if values[k] is not None}
    try:
        summary = train(tc, overrides, device)
    except (TrainingError, ValueError) as e:
        return _fail(str(e))
    print(json.dumps({k: summary[k] for k in ("steps", "best_bleu4", "stop", "best_checkpoint")}))
    return 0


def caption_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="caption.py", description="Caption images with a Show, Attend and Tell model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files to caption")
    parser.add_argument("--weights", default=None,
                        help="checkpoint file (default: the shipped demo weights/shapes_soft.pt)")
    parser.add_argument("--beam-size", type=int, default=3, help="beam width; 1 is greedy decoding")
    parser.add_argument("--length-penalty", type=float, default=0.0,
                        help="rank hypotheses by log-prob / length**this (0: plain log-probability)")
    parser.add_argument("--attention", metavar="DIR", default=None,
                        help="write an attention overlay PNG per image into DIR/<image stem>.png")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per image (image, caption, log_prob, candidates)")
    parser.add_argument("--batch-size", type=int, default=32, help="images decoded together")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    return parser


def caption_main(argv=None) -> int:
    args = caption_parser().parse_args(argv)
    if args.beam_size < 1:
        return _fail(f"--beam-size must be at least 1, got {args.beam_size}")
    if args.batch_size < 1:
        return _fail(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.attention is not None and Path(args.attention).exists() and not Path(args.attention).is_dir():
        return _fail(f"{args.attention}: --attention needs a folder, and this is a file")
    import torch

    from .checkpoint import CheckpointError, load_captioner
    from .images import ImageError, load_image, preprocess
    from .inference import caption_batch

    try:
        device = pick_device(args.device)
        model, vocab = load_captioner(args.weights, device)
    except (CheckpointError, ValueError) as e:
        return _fail(str(e))
    torch.set_grad_enabled(False)
    size = model.config.image_size
    failed = 0
    pending: list[tuple[str, object, torch.Tensor]] = []

    def flush():
        if not pending:
            return
        pixels = torch.stack([p[2] for p in pending])
        captions = caption_batch(model, pixels, vocab, args.beam_size, args.length_penalty)
        for (path, photo, _), caption in zip(pending, captions):
            if args.json:
                print(json.dumps({"image": path, "caption": caption.text, "log_prob": round(caption.log_prob, 4),
                                  "candidates": [{"caption": " ".join(w), "log_prob": round(lp, 4)}
                                                 for w, lp in caption.candidates]}), flush=True)
            else:
                print(f"{path}\t{caption.text}", flush=True)
            if args.attention is not None:
                from .render import render_attention

                out = Path(args.attention) / (Path(path).stem + ".png")
                render_attention(photo, caption, model.config.grid_size, out)
        pending.clear()

    for path in args.images:
        try:
            photo = load_image(path)
            pending.append((path, photo, preprocess(photo, size)))
        except ImageError as e:
            print(f"{path}: {e}", file=sys.stderr, flush=True)
            failed += 1
            continue
        if len(pending) >= args.batch_size:
            flush()
    flush()
    return 1 if failed else 0
