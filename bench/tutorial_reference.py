"""A benchmark-only reference: beam search the way the popular tutorials write it, against ours.

The well-known PyTorch captioning tutorials caption **one image at a time**: the image's k live
hypotheses go through the decoder together (k rows, k shrinking as hypotheses finish), and the
beam's bookkeeping (which hypothesis extends which, which ones finished) is a Python loop over a
list of hypotheses. `tutorial_beam_search` below is written that way, on our model's own
`init_state` / `step` (same weights) and with the same search rules as
`captioner.beam.beam_search` (<pad>/<start> never emitted; a finished hypothesis leaves the beam for
a pool and the beam narrows to K - finished, as arctic-captions' gen_sample does; best = highest
log-probability among the pool and the live ones at max_len), so the captions must be identical.
It is never used by the package.

    python bench/tutorial_reference.py [--images 32] [--beam-size 3] [--repeats 3] [--end-to-end]

Timed on the same annotations (VGG-16 at 224: 196 x 512 per image), interleaved:
  ours                   `beam_search`, all images at once
  tutorial               the reference, one image at a time
Every caption must be identical, or the script fails. `--end-to-end` also times JPEG files to
captions, the tutorial encoding one image at a time (NCHW, torch's default), ours in one batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from captioner.runtime import configure_cpu_process  # noqa: E402  (does not load torch)

# What caption.py does before torch loads; --default-runtime measures without it.
RUNTIME = configure_cpu_process() if __name__ == "__main__" and "--default-runtime" not in sys.argv else {}

import torch  # noqa: E402


@dataclasses.dataclass
class Hypothesis:
    tokens: list[int]          # emitted tokens (<end> and the <pad>s after it included)
    score: float               # sum of log-probabilities
    alphas: list[torch.Tensor]
    betas: list[float]
    finished: bool
    row: int                   # this hypothesis's row in the decoder state of the live hypotheses


@torch.inference_mode()
def tutorial_beam_search(model, annotations: torch.Tensor, vocab, beam_size: int = 3,
                         max_len: int | None = None) -> list[dict]:
    """Per image, per step: the live hypotheses of that image only through `model.step`, then a
    Python loop over the K picks. Returns per image {"words", "log_prob", "alphas", "betas"}."""
    max_len = max_len or model.config.max_len
    K, V = beam_size, len(vocab)
    results = []
    for b in range(annotations.shape[0]):                       # one image at a time
        state = model.init_state(annotations[b:b + 1])          # 1 row: the empty hypothesis
        hyps = [Hypothesis([], 0.0, [], [], False, 0)]        # the live ones
        done: list[Hypothesis] = []                             # finished: out of the beam for good
        for _ in range(max_len):
            if not hyps or len(done) >= K:
                break
            tokens = torch.tensor([h.tokens[-1] if h.tokens else vocab.start for h in hyps])
            out, state = model.step(tokens, state)              # k_live rows
            log_probs = torch.log_softmax(out.logits.float(), dim=-1)
            log_probs[:, vocab.pad] = float("-inf")
            log_probs[:, vocab.start] = float("-inf")
            rows = torch.cat([h.score + log_probs[h.row] for h in hyps])   # the candidates of every live one
            top, flat = rows.topk(min(K - len(done), len(rows)))          # the beam narrows as ones finish
            new_hyps, keep = [], []
            for score, index in zip(top.tolist(), flat.tolist()):
                if score == float("-inf"):
                    continue
                parent, word = hyps[index // V], index % V
                done_now = word == vocab.end
                hyp = Hypothesis(parent.tokens + [word], score, parent.alphas + [out.alphas[parent.row].float()],
                                 parent.betas + [float(out.beta[parent.row])], done_now,
                                 -1 if done_now else len(keep))
                if done_now:
                    done.append(hyp)
                else:
                    new_hyps.append(hyp)
                    keep.append(parent.row)
            hyps = new_hyps
            if keep:                                            # the state rows of the new live hypotheses
                state = state.with_rows(torch.tensor(keep))
        hyps = done + hyps                                      # the live ones reached max_len
        best = max(hyps, key=lambda h: h.score)
        words = vocab.decode(best.tokens)
        results.append({"words": words, "log_prob": best.score,
                        "alphas": (torch.stack(best.alphas[:len(words)]) if words
                                   else torch.zeros(0, annotations.shape[1])),
                        "betas": torch.tensor(best.betas[:len(words)])})
    return results


def main(argv=None) -> int:
    from bench.common import (bench_model, environment, load_jpegs, print_command, sample_annotations,
                              threads_from_args, timed, write_jpegs)
    from captioner.beam import beam_search
    from captioner.inference import caption_batch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=10000, help="vocabulary size (COCO, min count 5: ~10,000)")
    parser.add_argument("--hidden", type=int, default=1024, help="LSTM state size")
    parser.add_argument("--default-runtime", action="store_true",
                        help="leave OpenMP's waiting and glibc's allocator as they are (caption.py changes them)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
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
