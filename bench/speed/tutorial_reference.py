"""A benchmark-only reference: beam search the way the popular tutorials write it, against ours.

The well-known PyTorch captioning tutorials caption **one image at a time**: the image's k live
hypotheses go through the decoder together (k rows, k shrinking as hypotheses finish), and the
beam's bookkeeping (which hypothesis extends which, which ones finished) is a Python loop over a
list of hypotheses. `tutorial_beam_search` (tests/tutorial_beam.py) is written that way, on our model's own
`init_state` / `step` (same weights) and with the same search rules as
`captioner.beam.beam_search` (<pad>/<start> never emitted; a finished hypothesis leaves the beam for
a pool and the beam narrows to K - finished, as arctic-captions' gen_sample does; best = highest
log-probability among the pool and the live ones at max_len), so the captions must be identical.
It is never used by the package; it lives in tests/tutorial_beam.py, where the tests check
the batched search against it.

    python -m bench.speed.tutorial_reference [--images 32] [--beam-size 3] [--repeats 3] [--end-to-end]

Timed on the same annotations (VGG-16 at 224: 196 x 512 per image), interleaved:
  ours                   `beam_search`, all images at once
  tutorial               the reference, one image at a time
Every caption must be identical, or the script fails. `--end-to-end` also times JPEG files to
captions, the tutorial encoding one image at a time (NCHW, torch's default), ours in one batch.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

from captioner.runtime import configure_cpu_process  # noqa: E402  (does not load torch)

# What caption.py does before torch loads; --default-runtime measures without it.
RUNTIME = configure_cpu_process() if __name__ == "__main__" and "--default-runtime" not in sys.argv else {}

import torch  # noqa: E402


def main(argv=None) -> int:
    from bench.common import (
        bench_model,
        decoder_bench_parser,
        environment,
        load_jpegs,
        print_command,
        sample_annotations,
        threads_from_args,
        timed,
        write_jpegs,
    )
    from captioner.beam import beam_search
    from captioner.inference import caption_batch
    from tests.tutorial_beam import tutorial_beam_search

    parser = decoder_bench_parser(__doc__.splitlines()[0], repeats=3)
    parser.add_argument("--end-to-end", action="store_true",
                        help="also time JPEG files -> captions: the tutorial encodes one image at a time")
    args = parser.parse_args(argv)
    threads_from_args(args.threads)
    print_command()
    print(environment(RUNTIME))
    model, vocab = bench_model(args.vocab, args.hidden)
    annotations = sample_annotations(model, args.images)
    k = args.beam_size
    print(f"model: VGG-16 at 224 (random weights), vocabulary {len(vocab)}, embed 512, hidden {args.hidden}, "
          f"attention 512; {args.images} images, beam {k}, max_len {model.config.max_len}")

    runs = {  # name -> what it times
        "ours": lambda: beam_search(model, annotations, vocab, beam_size=k),
        "tutorial": lambda: tutorial_beam_search(model, annotations, vocab, beam_size=k),
    }
    with torch.inference_mode():
        ours = runs["ours"]()                                                    # warm-up, and the captions
        for name in ("tutorial",):
            theirs = runs[name]()
            same = sum(o.words == t["words"] for o, t in zip(ours, theirs))
            worst = max(abs(o.log_prob - t["log_prob"]) for o, t in zip(ours, theirs))
            print(f"identical captions, ours vs {name}: {same}/{len(ours)} (largest log-prob difference "
                  f"{worst:.2e})")
            if same != len(ours):
                return 1
    steps = statistics.mean(len(o.words) + o.finished for o in ours)
    print(f"mean steps decoded {steps:.1f} of {model.config.max_len} "
          "(random weights rarely emit <end>: the worst case)")

    times = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so that a burst of load from other jobs hits all
        for name, fn in runs.items():
            times[name].append(timed(fn))
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"decode {args.images} images (annotations given), medians of {args.repeats}: ours {med['ours']:.3f} s, "
          f"tutorial-style {med['tutorial']:.3f} s")
    for name, label in (("tutorial", "speed-up over the tutorial-style decoder"),):
        ratios = [r / o for o, r in zip(times["ours"], times[name])]
        print(f"  {label}: median {statistics.median(ratios):.2f}x "
              f"(per repeat {', '.join(f'{r:.2f}' for r in ratios)})")

    if args.end_to_end:
        import tempfile

        from captioner.images import normalize

        with tempfile.TemporaryDirectory() as tmp:
            paths = write_jpegs(Path(tmp), args.images)

            def ours_e2e():
                return caption_batch(model, load_jpegs(paths, 224), vocab, beam_size=k)

            def tutorial_e2e():
                out = []
                for path in paths:                     # one image at a time, as the tutorials do
                    with torch.inference_mode():
                        maps = model.encoder.features(normalize(load_jpegs([path], 224)))   # NCHW, torch's default
                        out += tutorial_beam_search(model, maps.flatten(2).transpose(1, 2), vocab, beam_size=k)
                return out

            same = sum(o.words == t["words"] for o, t in zip(ours_e2e(), tutorial_e2e()))
            e_ours, e_ref = [], []
            for _ in range(max(1, args.repeats - 1)):
                e_ours.append(timed(ours_e2e))
                e_ref.append(timed(tutorial_e2e))
            ratios = [r / o for o, r in zip(e_ours, e_ref)]
            print(f"end to end (JPEG files -> captions, the tutorial also encoding one image at a time): ours "
                  f"{statistics.median(e_ours):.2f} s, tutorial-style {statistics.median(e_ref):.2f} s; speed-up "
                  f"median {statistics.median(ratios):.2f}x; identical captions {same}/{args.images}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
