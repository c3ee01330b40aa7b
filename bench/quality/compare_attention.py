"""Every attention mechanism trained on the built-in `shapes` data with the same budget
(optimizer steps, batch size, learning-rate schedule), the same seed and the same model sizes, then
scored on the held-out test split (its generator seed is never used in training) with beam size 3.

    python -m bench.quality.compare_attention                    # all mechanisms, the budget below
    python -m bench.quality.compare_attention --steps 200 --only soft-additive hard-additive

Prints one markdown table: BLEU-4 and attention localisation (fraction of colour/shape words whose
attention peak lies in the named object's box), training time (wall clock and CPU seconds: on a
shared machine the CPU time is the comparable figure) and decoding time per test image (beam 3,
batches of 100 images, CPU seconds and wall). One torch thread throughout, so CPU time is the work
done. Results also go to OUT/results.json; each run's folder (best.pt, metrics.jsonl) stays in OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

from captioner.config import REFERENCE_LOSSES  # noqa: E402  (no torch: the thread count is set first in main)

# name -> (ModelConfig overrides, TrainConfig overrides)
MECHANISMS = {
    "soft-additive": (dict(attention="soft", score="additive"), {}),
    "soft-dot": (dict(attention="soft", score="dot"), {}),
    "soft-general": (dict(attention="soft", score="general"), {}),
    "soft-scaled-dot": (dict(attention="soft", score="scaled-dot"), {}),
    "soft-multihead": (dict(attention="soft", score="multihead", num_heads=4), {}),
    "hard-additive": (dict(attention="hard", score="additive", hard_test="expected"), {}),
    "hard-additive-argmax": None,   # the hard-additive checkpoint decoded with hard_test="argmax"
    "local-additive": (dict(attention="local", score="additive", local_sigma=1.0), {}),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1200, help="optimizer steps per mechanism (the budget)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dim", type=int, default=64,
                   help="encoder_dim = hidden_dim (dot and scaled-dot need them equal), attention_dim")
    p.add_argument("--train-images", type=int, default=6000)
    p.add_argument("--test-images", type=int, default=500)
    p.add_argument("--beam-size", type=int, default=3)
    p.add_argument("--reinforce-weight", type=float, default=None, help="hard: lambda_r (default: TrainConfig's)")
    p.add_argument("--entropy-weight", type=float, default=None, help="hard: lambda_e (default: TrainConfig's)")
    p.add_argument("--expectation-warmup", type=int, default=None,
                   help="hard: first batches with the expected context (default: a third of --steps)")
    p.add_argument("--reference-loss", choices=REFERENCE_LOSSES, default=None,
                   help="TrainConfig.reference_loss (default: the shapes default of train.py)")
    p.add_argument("--only", nargs="+", choices=list(MECHANISMS), default=None)
    p.add_argument("--out", default="runs/compare_attention")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def evaluate(model, vocab, test_set, beam_size: int) -> dict:
    from captioner.inference import caption_set, score_captions

    cpu, wall = time.process_time(), time.perf_counter()
    captions = caption_set(model, test_set, vocab, beam_size=beam_size, batch_size=100)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    scores = score_captions(captions, test_set, model.config.grid_size)
    return {"bleu4": scores["Bleu_4"], "localization": scores.get("attention_localization", float("nan")),
            "decode_cpu_ms": 1000 * cpu / len(test_set), "decode_wall_ms": 1000 * wall / len(test_set)}


def main() -> int:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from captioner.checkpoint import load_captioner
    from captioner.config import DATASET_MODEL_DEFAULTS, DATASET_TRAIN_DEFAULTS, TrainConfig, replace
    from captioner.data import load_split
    from captioner.training import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("command: " + " ".join(shlex.quote(a) for a in ["python", "bench/quality/compare_attention.py", *sys.argv[1:]]))
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} torch thread(s); "
          f"load average {load[0]:.1f} at start, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    names = args.only or list(MECHANISMS)
    test_set = load_split("shapes", "test", image_size=64, num_images=args.test_images, seed=0)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    # The demo's encoder and sizes (DATASET_MODEL_DEFAULTS["shapes"]), except the LSTM: dot and
    # scaled-dot compare h with the annotation vectors, so hidden_dim = encoder_dim = --dim here.
    shapes = DATASET_MODEL_DEFAULTS["shapes"]
    shared_model = dict(encoder=shapes["encoder"], image_size=shapes["image_size"], encoder_dim=args.dim,
                        hidden_dim=args.dim, attention_dim=args.dim, embed_dim=shapes["embed_dim"],
                        positional=shapes["positional"], dropout=shapes["dropout"], max_len=shapes["max_len"])
    reference_loss = args.reference_loss or DATASET_TRAIN_DEFAULTS["shapes"].get("reference_loss", "each")
    for name in names:
        if MECHANISMS[name] is None:
            continue
        model_fields, train_fields = MECHANISMS[name]
        hard_extra = {}
        if model_fields["attention"] == "hard":
            if args.reinforce_weight is not None:
                hard_extra["reinforce_weight"] = args.reinforce_weight
            if args.entropy_weight is not None:
                hard_extra["entropy_weight"] = args.entropy_weight
            warmup = args.expectation_warmup
            hard_extra["expectation_warmup"] = args.steps // 3 if warmup is None else warmup
        tc = TrainConfig(dataset="shapes", out_dir=str(out / name), steps=args.steps, batch_size=args.batch_size,
                         lr=args.lr, seed=args.seed, doubly_stochastic=0.0, group_by_length=False,
                         train_images=args.train_images, val_images=100, eval_images=100,
                         eval_every=args.steps, progress=False, reference_loss=reference_loss,
                         **train_fields, **hard_extra)
        torch.manual_seed(args.seed)
        cpu, wall = time.process_time(), time.perf_counter()
        summary = train(tc, dict(shared_model, **model_fields), log=lambda *a, **k: None)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        model, vocab = load_captioner(out / name / "best.pt")
        row = {"steps": summary["steps"], "train_cpu_s": cpu, "train_wall_s": wall,
               "params": sum(p.numel() for p in model.parameters()), **evaluate(model, vocab, test_set, args.beam_size)}
        results[name] = row
        print(f"{name}: {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})}",
              flush=True)
        if name == "hard-additive" and (args.only is None or "hard-additive-argmax" in names):
            model.config = replace(model.config, hard_test="argmax")
            model.decoder.config = model.config
            results["hard-additive-argmax"] = dict(row, **evaluate(model, vocab, test_set, args.beam_size))
        results_path.write_text(json.dumps(results, indent=2))

    print()
    print(table(results, [n for n in MECHANISMS if n in results], args))
    return 0


def table(results: dict, names: list[str], args) -> str:
    lines = [f"| mechanism | BLEU-4 | attention localisation | training CPU s ({args.steps} steps) | training wall s "
             f"| decoding CPU ms / image | decoding wall ms / image |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        r = results[name]
        label = {"hard-additive-argmax": "hard-additive, argmax location at test"}.get(name, name)
        lines.append(f"| {label} | {r['bleu4']:.3f} | {r['localization']:.3f} | {r['train_cpu_s']:.0f} | "
                     f"{r['train_wall_s']:.0f} | {r['decode_cpu_ms']:.1f} | {r['decode_wall_ms']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
