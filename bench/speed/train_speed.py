"""Training-step throughput: decoder from cached features, end to end with the VGG-16 encoder, and
the shapes demo configuration; on the CPU, and on a CUDA GPU (bf16 autocast) when one is present.

    python -m bench.speed.train_speed [--device cpu|cuda] [--steps 6] [--warmup 2] [--parts cached,frozen,full,shapes]

One step is exactly train.py's: `captioner.training.batch_loss` (cross-entropy + doubly stochastic
term) under `torch.autocast` (bf16, CUDA only, as train.py's --amp), backward, gradient clipping,
Adam. Inputs are random tensors of the real shapes (speed does not depend on the values; data
loading is not included: for the cached case see bench/memory/cache_memory.py, which reads a real cache):
  cached   paper-sized decoder (embed 512, LSTM 1024, attention 512, vocabulary 10,000) on cached
           annotations (B, 196, 512): captions per second
  frozen   VGG-16 at 224 in the forward pass (frozen: pretrained weights, as the paper trains),
           the same decoder: images per second
  full     the same with the whole VGG-16 trained too (train.py's default without --pretrained)
  shapes   the shapes demo model (weights/shapes_soft.pt's configuration: vgg_tiny_bn at 64 px), end to
           end: steps and captions per second
Captions are 16 tokens (<start>, 14 words, <end>; COCO's mean caption has about 11 words).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

import torch  # noqa: E402

from bench.common import bench_config, environment, print_command, threads_from_args  # noqa: E402
from captioner.checkpoint import DEFAULT_WEIGHTS, CheckpointError, read_checkpoint  # noqa: E402
from captioner.config import ModelConfig, TrainConfig, model_config_for  # noqa: E402
from captioner.model import Captioner  # noqa: E402
from captioner.training import batch_loss  # noqa: E402

CAPTION_TOKENS = 16


def time_steps(model, make_batch, device, steps: int, warmup: int, amp: bool,
               train_encoder: bool) -> tuple[list[float], list[float]]:
    """Wall seconds and CPU seconds (this process, all threads) of each timed step. With other jobs
    on the machine the CPU time is the steadier measure: it does not count waiting for a core."""
    tc = TrainConfig(doubly_stochastic=1.0)
    model.to(device).train()
    model.encoder.requires_grad_(train_encoder)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4)
    inputs, captions = make_batch()
    inputs, captions = inputs.to(device), captions.to(device)
    times, cpu_times = [], []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            losses = batch_loss(model, inputs, captions, 0, tc)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        optimizer.step()
        losses["loss"].item()                                   # waits for the step, as train.py's logging does
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    return times, cpu_times


def captions_batch(batch: int, vocab_size: int) -> torch.Tensor:
    words = torch.randint(4, vocab_size, (batch, CAPTION_TOKENS))
    words[:, 0], words[:, -1] = 1, 2                            # <start> ... <end>
    return words


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per part")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--parts", default="cached,frozen,full,shapes")
    parser.add_argument("--cached-batch", type=int, default=64)
    parser.add_argument("--image-batch", type=int, default=16, help="batch for the VGG-16 parts")
    parser.add_argument("--shapes-batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    threads_from_args(args.threads)
    device = torch.device(args.device)
    amp = device.type == "cuda"
    print_command()
    print(environment())
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}; bf16 autocast")
    else:
        print(f"CPU, float32 (train.py's bf16 autocast is for CUDA only); CUDA available: {torch.cuda.is_available()}")
    parts = args.parts.split(",")

    def report(name, timings, per_step, unit, extra=""):
        times, cpu_times = timings
        med = statistics.median(times)
        cpu_med = statistics.median(cpu_times)
        cpu = (f"; CPU time {cpu_med:.3f} s per step -> {per_step / cpu_med:.1f} {unit} per CPU-second"
               if device.type == "cpu" else "")
        print(f"{name}: {med:.3f} s per step (median of {len(times)}, min {min(times):.3f}) -> "
              f"{per_step / med:.1f} {unit}/s{extra}{cpu}", flush=True)

    torch.manual_seed(0)
    if "cached" in parts:
        config = bench_config()
        model = Captioner(config)
        B = args.cached_batch
        times = time_steps(model, lambda: (torch.randn(B, 196, 512).relu_(), captions_batch(B, config.vocab_size)),
                           device, args.steps, args.warmup, amp, train_encoder=False)
        report(f"decoder on cached annotations, batch {B} captions x {CAPTION_TOKENS} tokens", times, B, "captions")
    for part, train_encoder in (("frozen", False), ("full", True)):
        if part not in parts:
            continue
        config = bench_config()
        model = Captioner(config)
        B = args.image_batch
        times = time_steps(model, lambda: (torch.randn(B, 3, 224, 224), captions_batch(B, config.vocab_size)),
                           device, args.steps, args.warmup, amp, train_encoder=train_encoder)
        what = "VGG-16 trained too" if train_encoder else "VGG-16 frozen (forward only)"
        report(f"end to end at 224, {what}, batch {B} images (one caption each)", times, B, "images")
    if "shapes" in parts:
        try:                                                    # the shipped demo model's configuration
            config = ModelConfig.from_dict(read_checkpoint(DEFAULT_WEIGHTS)["model_config"])
        except CheckpointError:
            config = model_config_for("shapes", vocab_size=23)
        model = Captioner(config)
        B = args.shapes_batch
        times = time_steps(model, lambda: (torch.randn(B, 3, config.image_size, config.image_size),
                                           captions_batch(B, config.vocab_size)),
                           device, max(args.steps, 20), args.warmup, amp, train_encoder=True)
        med = statistics.median(times[0])
        report(f"shapes demo model end to end ({config.encoder} at {config.image_size} px), batch {B}", times, B,
               "captions", extra=f", {1 / med:.2f} steps/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
