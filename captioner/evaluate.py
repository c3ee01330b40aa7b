"""Evaluation with the coco-caption toolkit's metrics: `python -m captioner.evaluate --help`.

Two ways in, one scorer (`captioner.metrics.coco_scores`):

* a results file:  --annotations REFS.json --results RESULTS.json
  (references in the COCO captions format, results in the COCO results format
  `[{"image_id": ..., "caption": ...}]`; the images scored are those of the results file,
  as in the toolkit's own example);
* a checkpoint:    --weights PATH --dataset NAME [--split test] [--beam-size K] [--results-out FILE]
  (each image of the split decoded once by the project's beam search, then scored the same way;
  on `shapes` the attention localisation is reported too).

The last line of stdout is one JSON object: Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr (the toolkit's
names and scale, fractions), plus attention_localization on shapes. Bad input is one line on
stderr naming the file and the problem, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .messages import fail

SPICE_LINE = ("SPICE: not computed: it needs Stanford CoreNLP models, a separate download "
              "(pycocoevalcap's spice/get_stanford_models.py); the other metrics do not depend on it")


class EvaluationError(Exception):
    """Input that cannot be evaluated; str() is one line naming the file and the problem."""


# ----------------------------------------------------------------------------------------------
# Reading and checking the two files


def _read_json(path: str, what: str):
    """The data sets' JSON reader (one line per failure, naming the file), as an EvaluationError."""
    from .data.files import DataError, read_json

    try:
        return read_json(Path(path), f"{what} file")
    except DataError as e:
        raise EvaluationError(str(e)) from None


def _json_kind(value) -> str:
    return {dict: "a JSON object", list: "a JSON list", str: "a string", bool: "true/false",
            type(None): "null"}.get(type(value), "a number")


def _valid_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def load_references(path: str) -> dict:
    """COCO captions format -> {image_id: [reference captions]} in file order."""
    data = _read_json(path, "references")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        hint = " (this looks like a results file; pass it as --results)" if isinstance(data, list) else ""
        raise EvaluationError(f"{path}: not a COCO captions file: expected a JSON object with an "
                              f"\"annotations\" list, found {_json_kind(data)}{hint}")
    references: dict = {}
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise EvaluationError(f"{path}: annotation {k} is not an object with \"image_id\" and \"caption\"")
        if not _valid_id(ann["image_id"]):
            raise EvaluationError(f"{path}: annotation {k} has an image_id that is {_json_kind(ann['image_id'])}, "
                                  f"not a number or string")
        if not isinstance(ann["caption"], str):
            raise EvaluationError(f"{path}: annotation {k} has a caption that is {_json_kind(ann['caption'])}, "
                                  f"not a string")
        references.setdefault(ann["image_id"], []).append(ann["caption"])
    if not references:
        raise EvaluationError(f"{path}: holds no reference captions")
    return references


def load_results(path: str) -> list[tuple]:
    """COCO results format -> [(image_id, caption)] in file order, one caption per image."""
    data = _read_json(path, "results")
    if not isinstance(data, list):
        hint = (" (this looks like a references file; pass it as --annotations)"
                if isinstance(data, dict) and "annotations" in data else "")
        raise EvaluationError(f"{path}: a results file must be a JSON list of {{\"image_id\", \"caption\"}} "
                              f"objects (COCO results format), found {_json_kind(data)}{hint}")
    if not data:
        raise EvaluationError(f"{path}: holds no results (an empty list)")
    results, seen = [], {}
    for k, entry in enumerate(data):
        if not isinstance(entry, dict) or "image_id" not in entry or "caption" not in entry:
            raise EvaluationError(f"{path}: entry {k} is not an object with \"image_id\" and \"caption\"")
        image_id, caption = entry["image_id"], entry["caption"]
        if not _valid_id(image_id):
            raise EvaluationError(f"{path}: entry {k} has an image_id that is {_json_kind(image_id)}, "
                                  f"not a number or string")
        if not isinstance(caption, str):
            raise EvaluationError(f"{path}: entry {k} (image {image_id!r}) has a caption that is "
                                  f"{_json_kind(caption)}, not a string")
        if not caption.strip():
            raise EvaluationError(f"{path}: entry {k} (image {image_id!r}) has an empty caption")
        if image_id in seen:
            # The toolkit scores exactly one caption per image (it asserts so).
            raise EvaluationError(f"{path}: image {image_id!r} has more than one caption (entries {seen[image_id]} "
                                  f"and {k}); a results file holds one caption per image")
        seen[image_id] = k
        results.append((image_id, caption))
    return results


def match_results(results: list[tuple], references: dict, results_path: str, references_path: str):
    """(ids, hypotheses, reference lists) for the images of the results file; every one must
    have references."""
    missing = [image_id for image_id, _ in results if image_id not in references]
    if missing:
        example = missing[0]
        hint = ""
        other = str(example) if isinstance(example, int) else (int(example) if example.isdigit() else None)
        if other is not None and other in references:
            hint = (f" (the references have {other!r}: image ids must have the same JSON type, "
                    f"{'numbers' if isinstance(other, int) else 'strings'}, in both files)")
        named = (f"images {example!r} and {len(missing) - 1} more are" if len(missing) > 1
                 else f"image {example!r} is")
        raise EvaluationError(f"{results_path}: {named} not in the references {references_path}{hint}")
    ids = [image_id for image_id, _ in results]
    return ids, [caption for _, caption in results], [references[i] for i in ids]


# ----------------------------------------------------------------------------------------------
# Scoring and reporting: shared by both modes


def _check_writable(path: str | None, flag: str) -> None:
    """Fail before the (long) scoring, not after it, when an output file cannot be written."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise EvaluationError(f"{path}: {flag} needs a file name, and this is a directory")
    if not p.parent.is_dir():
        raise EvaluationError(f"{path}: {flag}: the folder {p.parent} does not exist")


def _write_json(path: str, data) -> None:
    try:
        Path(path).write_text(json.dumps(data) + "\n", encoding="utf-8")
    except OSError as e:
        raise EvaluationError(f"{path}: cannot write ({e.strerror or e})") from None


def score_and_report(ids, hypotheses, references, *, java=None, per_image: str | None = None,
                     extra: dict | None = None, out=None, err=None) -> dict:
    """Score with the toolkit's metrics, print the table and, last, the JSON line; return the dict."""
    from .metrics import coco_scores

    out, err = out or sys.stdout, err or sys.stderr   # looked up now, so redirection is honoured

    start = time.perf_counter()
    try:
        scores = coco_scores(hypotheses, references, java=java)
    except ValueError as e:   # e.g. an image of a data set without any reference caption
        raise EvaluationError(f"cannot score: {e}") from None
    seconds = time.perf_counter() - start
    for warning in scores.warnings:
        print(f"warning: {warning}", file=err)
    print(SPICE_LINE, file=err)
    tokeniser = ("the toolkit's Java PTB tokeniser" if scores.tokenizer == "java-ptb"
                 else "the pure-Python PTB tokenisation")
    print(f"scored {len(ids)} images in {seconds:.1f} s with {tokeniser}", file=err)
    if per_image is not None:
        _write_json(per_image, [{"image_id": i, "caption": h, **row}
                                for i, h, row in zip(ids, hypotheses, scores.per_image)])
    summary = dict(scores.overall)
    summary.update(extra or {})
    for name, value in summary.items():
        print(f"{name:<24}{value:.4f}" if isinstance(value, float) else f"{name:<24}{value}", file=out)
    print(json.dumps(summary), file=out, flush=True)
    return summary


def evaluate_results_file(args) -> dict:
    references = load_references(args.annotations)
    results = load_results(args.results)
    ids, hypotheses, refs = match_results(results, references, args.results, args.annotations)
    if len(ids) < len(references):
        print(f"note: {args.results} names {len(ids)} of the {len(references)} reference images; "
              f"scoring those {len(ids)}", file=sys.stderr)
    return score_and_report(ids, hypotheses, refs, java=False if args.no_java else None, per_image=args.per_image)


def evaluate_checkpoint(args) -> dict:
    import torch

    from .inference import caption_set
    from .runtime import pick_device

    try:
        device = pick_device(args.device)
    except ValueError as e:
        raise EvaluationError(str(e)) from None
    model, vocab = _checkpoint_model(args, device)
    torch.manual_seed(args.seed)
    images = _split_images(args, model.config)
    start = time.perf_counter()
    captions = caption_set(model, images, vocab, beam_size=args.beam_size, batch_size=args.batch_size,
                           length_penalty=args.length_penalty, progress=sys.stderr.isatty(),
                           num_workers=args.num_workers)
    print(f"decoded {len(images)} {args.dataset} {args.split} images in {time.perf_counter() - start:.1f} s "
          f"(beam size {args.beam_size})", file=sys.stderr)
    ids = list(images.ids)
    hypotheses = [c.text for c in captions]
    empty = sum(1 for h in hypotheses if not h.strip())
    if empty:
        print(f"warning: {empty} of {len(ids)} images got an empty caption (scored as such)", file=sys.stderr)
    if args.results_out is not None:
        _write_json(args.results_out, [{"image_id": i, "caption": h} for i, h in zip(ids, hypotheses)])
    extra = {}
    if hasattr(images, "objects"):
        from .data.shapes import attention_localization

        extra["attention_localization"], extra["localized_words"] = attention_localization(
            captions, images.objects, model.config.grid_size, images.image_size)
    return score_and_report(ids, hypotheses, [list(r) for r in images.references],
                            java=False if args.no_java else None, per_image=args.per_image, extra=extra)


def _checkpoint_model(args, device):
    """(model in eval mode on `device`, vocabulary) of --weights (default: the data set's shipped
    model); says on stderr which model it is, and warns when it was trained on another data set."""
    from .checkpoint import (
        DEFAULT_WEIGHTS,
        SHIPPED_WEIGHTS,
        CheckpointError,
        build_from_checkpoint,
        read_checkpoint,
        trained_on,
    )

    # Without --weights: the shipped model of that data set where there is one (shapes, flickr8k).
    path = Path(args.weights) if args.weights is not None else SHIPPED_WEIGHTS.get(args.dataset, DEFAULT_WEIGHTS)
    try:
        data = read_checkpoint(path)
        model, vocab = build_from_checkpoint(data, str(path))
    except CheckpointError as e:
        raise EvaluationError(str(e)) from None
    model.to(device).eval()
    # Which model is scored, always on stderr: without --weights it is the shipped default, whatever --dataset.
    source = trained_on(data)
    shown = _relative(path)
    print(f"model: {shown}{'' if args.weights is not None else ' (the default; choose one with --weights)'}, "
          f"trained on {source or 'an unrecorded data set'}", file=sys.stderr)
    if source is not None and source != args.dataset:
        print(f"warning: {shown} was trained on {source}, not {args.dataset}: its captions of {args.dataset} "
              f"images say what it learned on {source}", file=sys.stderr)
    return model, vocab


def _split_images(args, config):
    """The image set of --dataset/--split, at the model's input size and resize rule; never empty."""
    from .data import load_split
    from .messages import first_sentence

    try:
        images = load_split(args.dataset, args.split, image_size=config.image_size, resize=config.resize,
                            images=args.images,
                            num_images=args.num_images, seed=args.seed, data_root=args.data_root,
                            split_file=args.split_file)
    except (ValueError, OSError, KeyError) as e:
        raise EvaluationError(f"{args.dataset} {args.split} split: {first_sentence(e)}") from None
    if len(images) == 0:
        raise EvaluationError(f"the {args.dataset} {args.split} split has no images")
    return images


# ----------------------------------------------------------------------------------------------
# Command line


def _relative(path: Path) -> str:
    """`path` relative to the working directory where it lies below it (weights/flickr8k_soft.pt)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def build_parser() -> argparse.ArgumentParser:
    from .cli import _prog, add_version
    from .data import DATASETS

    parser = argparse.ArgumentParser(
        prog=_prog("python -m captioner.evaluate"),
        description="Score captions with the coco-caption toolkit's metrics (BLEU-1..4, METEOR, ROUGE-L, "
                    "CIDEr; fractions, as the toolkit reports them), either a results file against "
                    "references or a checkpoint's decoding of a data set split. The last line of stdout "
                    "is one JSON object.",
    )
    files = parser.add_argument_group("scoring a results file")
    files.add_argument("--annotations", metavar="REFS.json",
                       help="references in the COCO captions format ({\"annotations\": [{\"image_id\", "
                            "\"caption\"}, ...]})")
    files.add_argument("--results", metavar="RESULTS.json",
                       help="captions to score in the COCO results format ([{\"image_id\", \"caption\"}, ...]); "
                            "the images scored are the ones it names")
    model = parser.add_argument_group("decoding and scoring a checkpoint")
    model.add_argument("--weights", metavar="PATH",
                       help="checkpoint file (default: the shipped model of --dataset, weights/shapes_soft.pt or "
                            "weights/flickr8k_soft.pt; otherwise weights/flickr8k_soft.pt)")
    model.add_argument("--dataset", choices=DATASETS, help="data set whose split is decoded and scored")
    model.add_argument("--data-root", metavar="ROOT", help="folder holding the data set's images and annotations "
                                                           "(real data sets)")
    model.add_argument("--images", metavar="DIR", help="folder of the photos when they are not under --data-root "
                                                        "(flickr8k: the photos by file name)")
    model.add_argument("--split-file", metavar="FILE", help="Karpathy split file (real data sets)")
    model.add_argument("--split", default="test", choices=("train", "val", "test"),
                       help="split to decode (default: %(default)s)")
    model.add_argument("--num-images", type=int, default=None,
                       help="images to decode (shapes: how many are generated, default 200; real data sets: "
                            "the first N of the split, default all)")
    model.add_argument("--seed", type=int, default=0,
                       help="shapes: the run seed, as train.py's --seed; split S is generated from seed + its "
                            "offset (train +0, val +1000000, test +2000000), so the default 0 decodes the "
                            "test images of a run trained with --seed 0, which training never saw. Also "
                            "seeds torch (default: %(default)s)")
    model.add_argument("--beam-size", type=int, default=3,
                       help="beam width; 1 is greedy decoding (default: %(default)s)")
    model.add_argument("--length-penalty", type=float, default=0.0,
                       help="rank hypotheses by log-prob / length**this (default %(default)s: plain log-probability)")
    model.add_argument("--batch-size", type=int, default=64, help="images decoded together (default: %(default)s)")
    model.add_argument("--num-workers", type=int, default=0,
                       help="DataLoader processes reading images while decoding (default %(default)s: none)")
    model.add_argument("--device", default="auto",
                       help="cpu, cuda, cuda:N, or auto (CUDA when available; the default)")
    model.add_argument("--results-out", metavar="RESULTS.json",
                       help="also write the decoded captions as a COCO results file")
    parser.add_argument("--per-image", metavar="FILE",
                        help="write each image's scores (a JSON list of {image_id, caption, metrics...})")
    parser.add_argument("--no-java", action="store_true",
                        help="do not use Java even where it is installed: pure-Python PTB tokenisation, no "
                             "METEOR (what happens anyway where Java is missing)")
    add_version(parser)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from_file = args.results is not None or args.annotations is not None
    from_model = args.weights is not None or args.dataset is not None
    if from_file and from_model:
        return fail("choose one: --annotations/--results (score a results file) or --weights/--dataset "
                     "(decode and score a checkpoint)")
    if not from_file and not from_model:
        return fail("nothing to evaluate: give --annotations REFS.json --results RESULTS.json, or "
                     "--dataset NAME [--weights PATH]")
    try:
        if from_file:
            if args.results is None or args.annotations is None:
                return fail("scoring a results file needs both --annotations and --results")
            if args.results_out is not None:
                return fail("--results-out is for checkpoint evaluation; the results file already exists")
            _check_writable(args.per_image, "--per-image")
            evaluate_results_file(args)
        else:
            if args.dataset is None:
                return fail("--weights needs --dataset NAME (the data set to decode)")
            for name in ("beam_size", "batch_size"):
                if getattr(args, name) < 1:
                    return fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
            if args.num_workers < 0:
                return fail(f"--num-workers must be 0 or more, got {args.num_workers}")
            if args.num_images is not None and args.num_images < 1:
                return fail(f"--num-images must be at least 1, got {args.num_images}")
            _check_writable(args.per_image, "--per-image")
            _check_writable(args.results_out, "--results-out")
            evaluate_checkpoint(args)
    except EvaluationError as e:
        return fail(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
