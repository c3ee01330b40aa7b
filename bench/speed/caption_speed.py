"""Captioning throughput with a VGG-16 encoder at 224x224, against the bare VGG-16 forward pass.

    python -m bench.speed.caption_speed [--images 32] [--beam-size 3] [--repeats 5] [--vocab 10000] [--hidden 1024] [--rss]

End to end = read and decode the JPEG files (640x480, as COCO's photos), resize and centre-crop
to 224, normalise, VGG-16 encoder, batched beam search, Caption objects: exactly what caption.py
does for a batch (`captioner.inference.caption_batch`, with caption.py's process settings from
`captioner.runtime`). The bare forward pass is
VGG-16's convolutional trunk alone on an already-normalised float batch of the same size, under
`torch.inference_mode`, in the faster of the two memory layouts (NCHW, channels_last). They are
timed alternately in one process, so that load from other jobs hits both; the ratio
t_vgg / t_total is the share of the machine's VGG-16 speed that captioning reaches (target >= 0.85).
`--int8` also times the beam search with the decoder's LSTM and output layers in int8
(`captioner.inference.quantize_decoder`, torch's dynamic quantisation) and counts how many captions
it changes.
`--rss` also runs the captioning once in a fresh process and prints its peak resident memory.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

from captioner.runtime import configure_cpu_process  # noqa: E402  (does not load torch)

# What caption.py does before torch loads; --default-runtime measures without it.
RUNTIME = configure_cpu_process() if __name__ == "__main__" and "--default-runtime" not in sys.argv else {}

import torch  # noqa: E402

from bench.common import (  # noqa: E402
    bench_model,
    decoder_bench_parser,
    environment,
    load_jpegs,
    peak_rss_mib,
    print_command,
    threads_from_args,
    timed,
    timed_both,
    write_jpegs,
)
from captioner.beam import beam_search  # noqa: E402
from captioner.images import normalize  # noqa: E402
from captioner.inference import caption_batch, quantize_decoder  # noqa: E402


def rss_child(images: int, beam_size: int, vocab_size: int, hidden: int) -> None:
    """In a fresh process: build the model, caption `images` JPEG files once, print peak RSS."""
    model, vocab = bench_model(vocab_size, hidden)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), images)
        before = peak_rss_mib()
        captions = caption_batch(model, load_jpegs(paths, 224), vocab, beam_size=beam_size)
    assert len(captions) == images
    print(f"{before:.0f} {peak_rss_mib():.0f}")


def main(argv=None) -> int:
    parser = decoder_bench_parser(__doc__.splitlines()[0], repeats=5)
    parser.add_argument("--int8", action="store_true",
                        help="also time the beam search with the int8 decoder (captioner.inference.quantize_decoder)")
    parser.add_argument("--rss", action="store_true", help="also measure peak RSS of captioning, in a subprocess")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    threads_from_args(args.threads)
    if args.rss_child:
        rss_child(args.images, args.beam_size, args.vocab, args.hidden)
        return 0
    print_command()
    print(environment(RUNTIME))
    model, vocab = bench_model(args.vocab, args.hidden)
    int8 = quantize_decoder(model) if args.int8 else None                    # the same weights, in int8
    features = model.encoder.features
    print(f"model: VGG-16 at 224 (random weights), vocabulary {len(vocab)}, embed 512, hidden {args.hidden}, "
          f"attention 512 (additive, gated); batch {args.images}, beam {args.beam_size}, "
          f"max_len {model.config.max_len}")

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), args.images)
        pixels = load_jpegs(paths, 224)
        batch = normalize(pixels)                                             # (B, 3, 224, 224) float
        batch_cl = batch.contiguous(memory_format=torch.channels_last)

        def bare(x):
            with torch.inference_mode():
                return features(x)

        def end_to_end():
            return caption_batch(model, load_jpegs(paths, 224), vocab, beam_size=args.beam_size)

        captions = end_to_end()                                               # warm-up
        bare(batch), bare(batch_cl)
        if int8 is not None:
            with torch.inference_mode():
                annotations = model.encode(normalize(pixels))
                same = sum(a.words == b.words for a, b in zip(captions, beam_search(int8, annotations, vocab,
                                                                                       beam_size=args.beam_size)))
            print(f"identical captions with the int8 decoder: {same}/{len(captions)}")
        steps = statistics.mean(len(c.words) + c.finished for c in captions)
        print(f"decoded steps per image: mean {steps:.1f} of {model.config.max_len} "
              f"({sum(c.finished for c in captions)}/{len(captions)} captions ended with <end>)")

        rows = {k: [] for k in ("vgg_nchw", "vgg_cl", "total", "read", "encode", "beam", "beam_int8")}
        cpu = {k: [] for k in ("vgg_nchw", "vgg_cl", "total")}
        for _ in range(args.repeats):                                        # interleaved
            for key, fn in (("vgg_nchw", lambda: bare(batch)), ("vgg_cl", lambda: bare(batch_cl)),
                            ("total", end_to_end)):
                wall, cpu_s = timed_both(fn)
                rows[key].append(wall)
                cpu[key].append(cpu_s)
            # the parts of end_to_end, for the breakdown
            rows["read"].append(timed(lambda: load_jpegs(paths, 224)))
            with torch.inference_mode():
                annotations = model.encode(normalize(pixels))
                rows["encode"].append(timed(lambda: model.encode(normalize(pixels))))
                rows["beam"].append(timed(lambda: beam_search(model, annotations, vocab, beam_size=args.beam_size)))
                if int8 is not None:
                    rows["beam_int8"].append(timed(lambda: beam_search(int8, annotations, vocab,
                                                                       beam_size=args.beam_size)))

    med = {k: statistics.median(v) for k, v in rows.items() if v}
    best = "vgg_cl" if med["vgg_cl"] <= med["vgg_nchw"] else "vgg_nchw"
    ratios = [v / t for v, t in zip(rows[best], rows["total"])]
    n = args.images
    print(f"bare VGG-16 forward, batch {n}: NCHW median {med['vgg_nchw']:.2f} s, channels_last median "
          f"{med['vgg_cl']:.2f} s -> t_vgg = {med[best]:.2f} s ({n / med[best]:.2f} images/s)")
    print(f"end to end (JPEG files -> captions), batch {n}: median {med['total']:.2f} s, "
          f"min {min(rows['total']):.2f} s "
          f"-> {n / med['total']:.2f} images/s")
    print(f"  parts (medians): read+decode+resize {med['read']:.3f} s, encode {med['encode']:.2f} s, "
          f"beam search {med['beam']:.3f} s ({100 * med['beam'] / med[best]:.1f}% of t_vgg"
          + (f"; int8 decoder {med['beam_int8']:.3f} s)" if int8 is not None else ")"))
    print(f"ratio t_vgg / t_total (wall): median {statistics.median(ratios):.3f} (per repeat "
          f"{', '.join(f'{r:.3f}' for r in ratios)}); ratio of medians {med[best] / med['total']:.3f}; "
          f"from the parts {med[best] / (med['read'] + med['encode'] + med['beam']):.3f}")
    cpu_ratios = [v / t for v, t in zip(cpu[best], cpu["total"])]
    print(f"ratio in CPU time (this process, all threads): median {statistics.median(cpu_ratios):.3f} (per repeat "
          f"{', '.join(f'{r:.3f}' for r in cpu_ratios)}); ratio of medians "
          f"{statistics.median(cpu[best]) / statistics.median(cpu['total']):.3f}")

    if args.rss:
        cmd = [sys.executable, "-m", "bench.speed.caption_speed", "--rss-child", "--images", str(n), "--beam-size",
               str(args.beam_size), "--vocab", str(args.vocab), "--hidden", str(args.hidden)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.default_runtime:
            cmd += ["--default-runtime"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        before, after = (float(x) for x in done.stdout.split())
        print(f"peak RSS captioning {n} JPEG files in a fresh process: {after:.0f} MiB "
              f"(model built and files written: {before:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
