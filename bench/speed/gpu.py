"""One GPU benchmark: decoding, training, encoder and feature-cache throughput, and what an epoch costs.

    python -m bench.speed.gpu [--device cuda] [--quick] [--markdown FILE]

Under 5 minutes on one recent GPU; `--device cpu --quick` runs the same code at small sizes in a
minute or two on a CPU (to check that the script works, not to measure a GPU). Prints one markdown
table headed by the command, the device, torch's version and the date (and writes it to `--markdown`).
Random weights throughout (speed does not depend on the values; nothing is downloaded); every
figure is the median of timed repeats after untimed warm-up ones, with the device synchronised.

  decoding   `captioner.beam.beam_search`, beam 3, batches 32 and 256, annotations 14x14x512, LSTM 512,
             attention 512, vocabulary 10,000; random weights never emit <end>, so all 20 steps run
             (the worst case). float32, and bf16 autocast (`captioner.precision`) at the larger batch.
  training   train.py's step on cached annotations (`captioner.training.batch_loss`, backward, gradient
             clipping, Adam), same model, captions of 16 tokens: batches 64 and 256, float32 and bf16 autocast
  encoder    EfficientNet-Lite0 (`head`, 1280 channels) at 224 px, batch 256: float32 NCHW, and
             channels-last under bf16 autocast
  cache      `captioner.data.cache.open_or_build` with that encoder over JPEG files this script writes
             (640x480, photo-like): decode, resize, encode, float16, write; DataLoader workers read the files
  epochs     one Flickr8k epoch (30,000 captions) and one COCO epoch (~414,000 captions) on cached
             features, at the best training rate measured: the arithmetic, not a run
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from captioner.runtime import configure_cpu_process  # noqa: E402  (does not load torch)

# What caption.py does before torch loads (OpenMP threads that sleep while they wait: on a shared
# CPU, spinning ones slow the beam search several times); it changes nothing on a GPU's figures.
RUNTIME = configure_cpu_process() if __name__ == "__main__" else {}

import torch  # noqa: E402

EPOCH_CAPTIONS = {"Flickr8k": 30_000, "COCO": 414_000}   # training captions per epoch (5 per image)
CAPTION_TOKENS = 16


def epoch_rows(rates: dict[str, float]) -> list[tuple[str, str, str]]:
    """(what, setting, figure) rows: for each data set of EPOCH_CAPTIONS, the seconds one epoch takes
    at the fastest of `rates` (setting -> captions per second)."""
    setting, rate = max(rates.items(), key=lambda item: item[1])
    rows = []
    for name, captions in EPOCH_CAPTIONS.items():
        seconds = captions / rate
        rows.append((f"one {name} epoch on cached features ({captions:,} captions)", f"at {setting}",
                     f"{seconds:,.1f} s ({seconds / 60:.2f} min)"))
    return rows


def markdown(header: list[str], rows: list[tuple[str, str, str]]) -> str:
    lines = [*header, "", "| measurement | setting | figure |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def median_seconds(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of `fn()` over `repeats` runs after `warmup` untimed ones, synchronised."""
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from bench.common import environment

    return environment().split(",")[0].removeprefix("machine: ") + " (CPU)"


def decoder_model(device):
    from bench.common import bench_config, bench_vocab
    from captioner.model import Captioner

    torch.manual_seed(0)
    config = bench_config(vocab_size=10000, hidden=512)           # 14x14x512, LSTM 512, attention 512
    return Captioner(config).to(device).eval(), bench_vocab(10000)


def decoding(device, batches, repeats) -> list[tuple[str, str, str]]:
    from captioner.attention import chunk_images, free_device_memory
    from captioner.beam import beam_search, steps_between_checks
    from captioner.precision import autocast

    model, vocab = decoder_model(device)
    rows = []
    for B, precision in [(b, "fp32") for b in batches] + [(batches[-1], "bf16")]:
        annotations = torch.randn(B, 196, 512, generator=torch.Generator().manual_seed(0)).relu_().to(device)

        def run():
            with torch.inference_mode(), autocast(device, precision):
                return beam_search(model, annotations, vocab, beam_size=3)

        steps = max(len(c.words) + c.finished for c in run())
        seconds = median_seconds(run, device, repeats)
        chunk = chunk_images(device.type, B, 3 * 196 * 512 * 4, free_device_memory(device))
        rows.append(("decoding, beam 3", f"batch {B}, {precision}, {steps} steps, attention in chunks of "
                     f"{chunk} images, alive checked every {steps_between_checks(device.type)} steps",
                     f"**{B / seconds:,.0f} images/s** ({seconds * 1000:.1f} ms per batch)"))
    return rows


def training(device, batches, repeats, warmup) -> tuple[list[tuple[str, str, str]], dict[str, float]]:
    from captioner.config import TrainConfig
    from captioner.precision import autocast
    from captioner.training import batch_loss

    tc = TrainConfig(doubly_stochastic=1.0)
    rows, rates = [], {}
    for B in batches:
        for precision in ("fp32", "bf16"):
            model, vocab = decoder_model(device)
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.Adam(params, lr=1e-4)
            g = torch.Generator().manual_seed(B)
            annotations = torch.randn(B, 196, 512, generator=g).relu_().to(device)
            captions = torch.randint(4, len(vocab), (B, CAPTION_TOKENS), generator=g)
            captions[:, 0], captions[:, -1] = vocab.start, vocab.end
            captions = captions.to(device)

            def step():
                with autocast(device, precision):
                    losses = batch_loss(model, annotations, captions, vocab.pad, tc)
                optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()
                torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
                optimizer.step()

            seconds = median_seconds(step, device, repeats, warmup)
            setting = f"batch {B}, {precision}"
            rates[setting] = B / seconds
            rows.append(("training step on cached annotations", setting,
                         f"**{B / seconds:,.0f} captions/s** ({seconds * 1000:.1f} ms per step)"))
    return rows, rates


def lite_model(device, image_size: int):
    from captioner.config import ModelConfig
    from captioner.model import Captioner

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=100, encoder="efficientnet_lite0", encoder_layer="head", encoder_dim=1280,
                         image_size=image_size)
    return Captioner(config).to(device).eval()


def encoder(device, batch, image_size, repeats) -> list[tuple[str, str, str]]:
    from captioner.precision import autocast

    model = lite_model(device, image_size)
    images = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
    rows = []
    for layout, precision in (("NCHW", "fp32"), ("channels-last", "bf16")):
        fmt = torch.channels_last if layout == "channels-last" else torch.contiguous_format
        model.encoder.to(memory_format=fmt)
        x = images.contiguous(memory_format=fmt)

        def run():
            with torch.inference_mode(), autocast(device, precision):
                return model.encoder(x)

        seconds = median_seconds(run, device, repeats)
        rows.append((f"EfficientNet-Lite0 encoder (head) at {image_size} px", f"batch {batch}, {layout}, {precision}",
                     f"**{batch / seconds:,.0f} images/s** ({seconds * 1000:.1f} ms per batch)"))
    model.encoder.to(memory_format=torch.contiguous_format)
    return rows


def cache_build(device, files, batch, workers, image_size) -> list[tuple[str, str, str]]:
    from bench.common import write_jpegs
    from captioner.data.cache import open_or_build
    from captioner.data.files import FileImageSet

    model = lite_model(device, image_size)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        root.mkdir()
        unique = write_jpegs(root, min(files, 64))
        names = [p.name for p in unique]
        for i in range(len(unique), files):                      # copies: each file is still read and decoded
            name = f"copy_{i:05d}.jpg"
            shutil.copyfile(unique[i % len(unique)], root / name)
            names.append(name)
        images = FileImageSet("bench", "train", root, names, [["a photo"]] * files, list(range(files)), image_size)
        seconds = []
        for run in range(2):                                     # the first also warms up the device
            start = time.perf_counter()
            open_or_build(model, images, Path(tmp) / f"cache{run}", "train", device=device, batch_size=batch,
                          num_workers=workers, progress=False, log=lambda *a, **k: None)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
    return [("feature-cache build from JPEG files (640x480)",
             f"{files} files, Lite0 head at {image_size} px, batch {batch}, {workers} loader workers, float32",
             f"**{files / seconds[-1]:,.0f} images/s** ({seconds[-1]:.1f} s; first run {seconds[0]:.1f} s)")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small batches and few repeats (a check that it runs)")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers for the cache build (default: up to 8 on a GPU, 0 on the CPU)")
    args = parser.parse_args(argv)
    from bench.common import print_command
    from captioner.runtime import pick_device

    try:
        device = pick_device(args.device)
    except ValueError as e:
        print(f"gpu.py: {e}", file=sys.stderr)
        return 2
    quick = args.quick
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False             # float32 means float32 (torch's default too)
    workers = args.workers if args.workers is not None else (min(8, os.cpu_count() or 1) if device.type == "cuda"
                                                             else 0)
    sizes = dict(decode=(4, 8), train=(8, 16), encoder=8, files=16, cache_batch=8, repeats=1, warmup=1) if quick else \
        dict(decode=(32, 256), train=(64, 256), encoder=256, files=2048, cache_batch=128, repeats=5, warmup=2)
    print_command()
    started = time.perf_counter()
    rows = []
    for part in ("decoding", "training", "encoder", "cache"):
        t0 = time.perf_counter()
        if part == "decoding":
            rows += decoding(device, sizes["decode"], sizes["repeats"])
        elif part == "training":
            train_rows, rates = training(device, sizes["train"], sizes["repeats"] + 2, sizes["warmup"])
            rows += train_rows
        elif part == "encoder":
            rows += encoder(device, sizes["encoder"], 224, sizes["repeats"])
        else:
            rows += cache_build(device, sizes["files"], sizes["cache_batch"], workers, 224)
        print(f"  {part}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    rows += epoch_rows(rates)
    header = [f"Device: {device_name(device)}; torch {torch.__version__}"
              + (f" (CUDA {torch.version.cuda})" if device.type == "cuda" else "")
              + f"; date {time.strftime('%Y-%m-%d %H:%M')}; {'--quick sizes' if quick else 'full sizes'}; "
              f"script time {time.perf_counter() - started:.0f} s"]
    table = markdown(header, rows)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
