"""The training loop: teacher forcing, Adam, gradient clipping, learning-rate schedule, validation
by *decoding* (never teacher-forced), early stopping on validation BLEU-4, JSONL metrics, and
checkpoints that resume exactly (same data order, same random state)."""

from __future__ import annotations

import json
import math
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .config import ModelConfig, TrainConfig
from .data import CaptionPairs, EpochSampler, collate_pairs, load_split
from .images import normalize
from .inference import caption_set, score_captions
from .losses import caption_loss
from .model import Captioner
from .vocab import Vocabulary, tokenize

# Model defaults per data set; the paper's (ModelConfig's own) apply to real photos.
DATASET_MODEL_DEFAULTS = {
    "shapes": dict(encoder="vgg_tiny", image_size=64, encoder_dim=128, embed_dim=64, hidden_dim=256,
                   attention_dim=128, positional="sine", dropout=0.3, max_len=20),
}


class TrainingError(Exception):
    """Training cannot go on; str() is one line saying why."""


def model_config_for(dataset: str, vocab_size: int, **overrides) -> ModelConfig:
    """The model configuration for `dataset`: its defaults, then the user's overrides (None = keep)."""
    fields = dict(DATASET_MODEL_DEFAULTS.get(dataset, {}))
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(vocab_size=vocab_size, **fields)


def build_vocab(train_images, min_count: int) -> Vocabulary:
    """From the training split's references only: words seen only in val/test never enter."""
    return Vocabulary.build((tokenize(r) for refs in train_images.references for r in refs), min_count)


def load_encoder_weights(model: Captioner, tc: TrainConfig) -> None:
    """--pretrained (torchvision's ImageNet weights) or --encoder-weights PATH (a local file)."""
    from .encoder import pretrained_state_dict

    if tc.encoder_weights:
        path = Path(tc.encoder_weights)
        if not path.is_file():
            raise TrainingError(f"{path}: encoder weights file not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure becomes one line
            raise TrainingError(f"{path}: cannot read encoder weights ({str(e).splitlines()[0][:160]})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    elif tc.pretrained:
        try:
            state = pretrained_state_dict(model.config.encoder)
        except ValueError as e:
            raise TrainingError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - no network, bad cache, ...
            raise TrainingError(
                f"could not get ImageNet weights for {model.config.encoder} ({str(e).splitlines()[0][:160]}); "
                "on a machine without internet, download torchvision's file elsewhere and pass it with "
                "--encoder-weights PATH") from None
    else:
        return
    try:
        model.encoder.load_torchvision_state_dict(state)
    except (ValueError, AttributeError) as e:
        raise TrainingError(str(e)) from None


def encoder_parameters_to_train(model: Captioner, tc: TrainConfig) -> list:
    """End to end from scratch; frozen with pretrained weights, unless --finetune-encoder (conv5 block)."""
    pretrained = tc.pretrained or tc.encoder_weights
    if tc.freeze_encoder or (pretrained and not tc.finetune_encoder):
        return []
    if pretrained:
        return [p for m in model.encoder.last_block() for p in m.parameters()]
    return list(model.encoder.parameters())


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0], "python_gauss": random.getstate()[2],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    s = state["numpy"]
    np.random.set_state((s[0], s[1].numpy().astype(np.uint32), *s[2:]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _LR:
    """One-cycle (Smith & Topin 2019: warm-up then cosine annealing), step decay on plateau, or constant."""

    def __init__(self, tc: TrainConfig):
        self.tc, self.scale = tc, 1.0

    def __call__(self, step: int) -> float:
        tc = self.tc
        if tc.lr_schedule != "onecycle":
            return tc.lr * self.scale
        warm = max(1, int(0.15 * tc.steps))
        if step < warm:  # from lr/25 up to lr
            return tc.lr * (0.04 + 0.96 * step / warm)
        progress = min(1.0, (step - warm) / max(1, tc.steps - warm))
        return tc.lr * (1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_loss(model, inputs: torch.Tensor, captions: torch.Tensor, pad_id: int, tc: TrainConfig) -> dict:
    """The training objective for one batch: `inputs` are normalised images (B, 3, H, W) or cached
    annotations (B, L, D); `captions` (B, T+1) run <start> .. <end> <pad>..."""
    logits, alphas, _ = model(inputs, captions[:, :-1])
    return caption_loss(logits, alphas, captions[:, 1:], pad_id, tc.doubly_stochastic)


def train(tc: TrainConfig, model_overrides: dict | None = None, device: str | torch.device = "cpu",
          log=print) -> dict:
    """Run one training job; returns a summary dict. Writes into `tc.out_dir`:
    `last.pt` (resumable), `best.pt` (best validation BLEU-4), `metrics.jsonl`, `config.json`."""
    device = torch.device(device)
    out = Path(tc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path, metrics_path = out / "last.pt", out / "best.pt", out / "metrics.jsonl"
    seed_everything(tc.seed)

    resume_data = None
    if tc.resume:
        if not last_path.exists():
            raise TrainingError(f"{last_path}: nothing to resume (no last.pt in {out})")
        try:
            resume_data = read_checkpoint(last_path)
        except CheckpointError as e:
            raise TrainingError(str(e)) from None
        if "train_state" not in resume_data:
            raise TrainingError(f"{last_path}: has no training state to resume from")

    image_size = (model_overrides or {}).get("image_size") or DATASET_MODEL_DEFAULTS.get(tc.dataset, {}).get(
        "image_size", 224)
    if resume_data is not None:
        image_size = resume_data["model_config"]["image_size"]
    train_set = load_split(tc.dataset, "train", image_size=image_size, num_images=tc.train_images, seed=tc.seed,
                           data_root=tc.data_root, split_file=tc.split_file)
    val_set = load_split(tc.dataset, "val", image_size=image_size, num_images=tc.val_images, seed=tc.seed,
                         data_root=tc.data_root, split_file=tc.split_file)
    if len(train_set) == 0:
        raise TrainingError(f"the {tc.dataset} training split has no images")

    if resume_data is not None:
        vocab = Vocabulary.from_dict(resume_data["vocab"])
        config = ModelConfig.from_dict(resume_data["model_config"])
    else:
        vocab = build_vocab(train_set, tc.min_count)
        config = model_config_for(tc.dataset, len(vocab), **(model_overrides or {}))
    model = Captioner(config)
    if resume_data is None:
        load_encoder_weights(model, tc)
    model.to(device)

    trainable_encoder = encoder_parameters_to_train(model, tc)
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    for p in trainable_encoder:
        p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)
    lr_at = _LR(tc)

    pairs = CaptionPairs(train_set, vocab, config.max_len)
    steps_per_epoch = max(1, len(pairs) // tc.batch_size)
    step, best, stale, history_tail = 0, -1.0, 0, None
    if resume_data is not None:
        ts = resume_data["train_state"]
        model.load_state_dict(resume_data["state_dict"])
        optimizer.load_state_dict(ts["optimizer"])
        step, best, stale, lr_at.scale = ts["step"], ts["best_bleu4"], ts["stale"], ts["lr_scale"]
        _set_rng_state(ts["rng"])
        log(f"resuming {out} at step {step}")
    (out / "config.json").write_text(json.dumps({"train": tc.to_dict(), "model": config.to_dict()}, indent=2))

    def batches_from(step0: int):
        """Batches in the order an uninterrupted run would see them from step `step0` on."""
        epoch, offset = divmod(step0, steps_per_epoch)
        while True:
            sampler = EpochSampler(len(pairs), tc.seed, epoch, offset * tc.batch_size)
            loader = torch.utils.data.DataLoader(
                pairs, batch_size=tc.batch_size, sampler=sampler, drop_last=True, num_workers=tc.num_workers,
                collate_fn=lambda b: collate_pairs(b, vocab.pad),
                # A private generator: the loader must not draw from the global RNG (exact resume).
                generator=torch.Generator().manual_seed(tc.seed))
            yield from loader
            epoch, offset = epoch + 1, 0

    def save_last():
        save_checkpoint(last_path, model, vocab, train_state={
            "step": step, "best_bleu4": best, "stale": stale, "lr_scale": lr_at.scale,
            "optimizer": optimizer.state_dict(), "rng": _rng_state(), "train_config": tc.to_dict()})

    def evaluate() -> dict:
        captions = caption_set(model, val_set, vocab, beam_size=tc.eval_beam_size, batch_size=100)
        return score_captions(captions, val_set, config.grid_size)

    interrupted = {"flag": False}

    def on_sigint(signum, frame):  # finish the current step, then save and leave
        interrupted["flag"] = True

    previous_handler = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    progress = None
    if tc.progress:
        from tqdm import tqdm

        progress = tqdm(total=tc.steps, initial=step, desc="training", unit="step", dynamic_ncols=True)
    model.train()
    start_time, running, stop_reason = time.time(), {}, "finished"
    batches = batches_from(step)
    try:
        while step < tc.steps:
            images, captions = next(batches)
            images, captions = images.to(device, non_blocking=True), captions.to(device, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            losses = batch_loss(model, normalize(images), captions, vocab.pad, tc)
            if not torch.isfinite(losses["loss"]):
                stop_reason = "non-finite loss"
                raise TrainingError(f"loss became {losses['loss'].item()} at step {step + 1}; stopped. "
                                    f"The last good checkpoint is {last_path if last_path.exists() else 'none'}; "
                                    "try a lower --lr or --grad-clip")
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            optimizer.step()
            step += 1
            for k in ("loss", "nll", "reg"):
                running[k] = running.get(k, 0.0) + losses[k].item()
            running["n"] = running.get("n", 0) + 1
            if progress is not None:
                progress.update(1)
                if step % 10 == 0:
                    progress.set_postfix(loss=f"{losses['loss'].item():.3f}", nll=f"{losses['nll'].item():.3f}")
            if step % tc.eval_every == 0 or step == tc.steps:
                scores = evaluate()
                n = max(1, running.pop("n", 1))
                record = {"step": step, "epoch": step / steps_per_epoch, "lr": lr_at(step - 1),
                          **{k: running[k] / n for k in ("loss", "nll", "reg") if k in running},
                          "grad_norm": float(grad_norm), "elapsed_s": round(time.time() - start_time, 1),
                          **{f"val_{k}": v for k, v in scores.items()}}
                running = {}
                improved = scores["Bleu_4"] > best
                if improved:
                    best, stale = scores["Bleu_4"], 0
                    save_checkpoint(best_path, model, vocab, metrics=record)
                else:
                    stale += 1
                    if tc.lr_schedule == "plateau":
                        lr_at.scale *= tc.lr_decay
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                history_tail = record
                save_last()
                msg = (f"step {step}: loss {record.get('loss', float('nan')):.3f}, "
                       f"val BLEU-4 {scores['Bleu_4']:.3f}")
                if "attention_localization" in scores:
                    msg += f", attention localisation {scores['attention_localization']:.3f}"
                (progress.write if progress is not None else log)(msg)
                if tc.patience and stale >= tc.patience:
                    stop_reason = f"early stop: no BLEU-4 gain in {stale} evaluations"
                    break
            if interrupted["flag"]:
                stop_reason = "interrupted"
                save_last()
                log(f"interrupted at step {step}; saved {last_path}; continue with --resume")
                break
    finally:
        if progress is not None:
            progress.close()
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
    return {"steps": step, "best_bleu4": best, "stop": stop_reason, "last": history_tail,
            "best_checkpoint": str(best_path), "seconds": time.time() - start_time}


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


__all__ = ["train", "batch_loss", "TrainingError", "model_config_for", "build_vocab", "DATASET_MODEL_DEFAULTS"]
