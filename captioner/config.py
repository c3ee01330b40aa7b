"""Configuration as data: frozen dataclasses for the model and for a training run.

The model never sees argparse; `train.py` maps its flags onto these fields and
checkpoints store `ModelConfig` as a plain dict (see `checkpoint.py`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

ENCODERS = (
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "vgg_tiny", "vgg_tiny_bn", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
)
LITE_LAYERS = ("stage5", "expand", "head")  # where EfficientNet-Lite's annotations are read (encoder.py)
RESIZES = ("crop", "squash")
DEEP_OUTPUTS = ("tanh", "linear")
ATTENTIONS = ("soft", "hard", "local")
SCORES = ("additive", "dot", "general", "scaled-dot", "multihead")
POSITIONAL = ("none", "sine")
REFERENCE_LOSSES = ("each", "any")
OBJECTIVES = ("xe", "scst")
SELECT_BY = ("auto", "Bleu_4", "CIDEr")
LITE_DEFAULT_LAYER = "head"  # the layer with the best dev captions (BENCHMARKS.md, "Which layer")


# Upper bounds of the model's sizes, far above any model this code trains (the paper's: 10,000 words,
# 224 px, D=512, n=1,800; the shipped ones are smaller), so that a configuration asking for absurd
# sizes (a damaged or hostile checkpoint, a typo in a flag) is refused in one line before anything of
# that size is built: hidden_dim=100,000 would be an LSTM of 4e10 weights.
MODEL_SIZE_LIMITS = {
    "vocab_size": 1_000_000, "image_size": 1024, "encoder_dim": 8192, "embed_dim": 8192, "hidden_dim": 8192,
    "attention_dim": 8192, "num_heads": 256, "max_len": 1000,
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a `Captioner` (stored inside every checkpoint).

    Defaults follow Xu et al. (2015): VGG-19 conv5_4 annotations (14x14x512 at 224),
    additive soft attention with the gating scalar beta, deep output layer, dropout,
    doubly stochastic regularisation (its weight lives in `TrainConfig`).
    """

    vocab_size: int
    encoder: str = "vgg19"          # torchvision VGG family member, EfficientNet-Lite, or the narrow demo net
    image_size: int = 224           # input side; annotation grid side = image_size / 16 (VGG, Lite) or / 8 (tiny)
    encoder_dim: int = 512          # D: size of one annotation vector
    encoder_layer: str = ""         # where annotations are read: VGG "conv5" (conv5_4); Lite stage5|expand|head
    resize: str = ""                # photo -> input: "crop" (shorter side, centre crop) | "squash" (whole frame)
    embed_dim: int = 512            # m: word embedding size
    hidden_dim: int = 1024          # n: LSTM state size
    attention_dim: int = 512        # size of the attention MLP's hidden layer
    attention: str = "soft"         # soft (sec. 4.2) | hard (sec. 4.1) | local (Luong local-p on the grid)
    score: str = "additive"         # f_att: additive (Bahdanau, the paper's) | dot | general | scaled-dot | multihead
    num_heads: int = 4              # heads for score="multihead"
    gate: bool = True               # the gating scalar beta of sec. 4.2.1
    dropout: float = 0.5            # before the deep output layer (sec. 5.2)
    deep_output: str = "tanh"       # L_o(tanh(E y + L_h h + L_z z)) as the authors' code; "linear": no tanh
    init: str = "authors"           # decoder weights: the authors' N(0, 0.01^2)/orthogonal, or "pytorch" defaults
    positional: str = "none"        # add a 2-D sinusoidal encoding to the annotations ("sine")
    max_len: int = 20               # most decoding steps, <end> included: captions of up to max_len - 1 words
                                    # (training drops longer references; decoding stops here unfinished)
    local_sigma: float = 1.0        # local attention: Gaussian window width, in grid cells
    hard_test: str = "expected"     # hard attention at test time: "expected" context or "argmax" location

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        lite = self.encoder.startswith("efficientnet_lite")
        # "" means the encoder family's default; it is resolved here so checkpoints store what was used.
        if not self.encoder_layer:
            object.__setattr__(self, "encoder_layer", LITE_DEFAULT_LAYER if lite else "conv5")
        if not self.resize:
            object.__setattr__(self, "resize", "squash" if lite else "crop")
        layers = LITE_LAYERS if lite else ("conv5",)
        if self.encoder_layer not in layers:
            raise ValueError(f"encoder_layer of {self.encoder} must be one of {', '.join(layers)}, "
                             f"got {self.encoder_layer!r}")
        if self.resize not in RESIZES:
            raise ValueError(f"resize must be one of {', '.join(RESIZES)}, got {self.resize!r}")
        if self.init not in ("authors", "pytorch"):
            raise ValueError(f"init must be 'authors' or 'pytorch', got {self.init!r}")
        if self.deep_output not in DEEP_OUTPUTS:
            raise ValueError(f"deep_output must be one of {', '.join(DEEP_OUTPUTS)}, got {self.deep_output!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if self.positional not in POSITIONAL:
            raise ValueError(f"positional must be one of {', '.join(POSITIONAL)}, got {self.positional!r}")
        if self.hard_test not in ("expected", "argmax"):
            raise ValueError(f"hard_test must be 'expected' or 'argmax', got {self.hard_test!r}")
        for name, most in MODEL_SIZE_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
            if not 1 <= value <= most:
                raise ValueError(f"{name} must be between 1 and {most:,}, got {value:,}")
        if self.score == "multihead" and self.encoder_dim % self.num_heads:
            raise ValueError("encoder_dim must be divisible by num_heads for score='multihead'")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.local_sigma < 0.25:  # the window (2 sigma each way) must reach the nearest cell centre
            raise ValueError(f"local_sigma must be at least 0.25 grid cells, got {self.local_sigma}")

    @property
    def grid_size(self) -> int:
        """Side of the annotation grid: VGG cut before its last pool and EfficientNet-Lite's stride-16
        layers downsample by 16, the tiny net by 8; Lite's head (stride 32) gives its own grid, upsampled
        to the paper's 14x14 when coarser (224 px: 7x7 -> 14x14; 448 px: a native 14x14)."""
        if self.encoder.startswith("efficientnet_lite") and self.encoder_layer == "head":
            return max(-(-self.image_size // 32), 14)
        stride = 8 if self.encoder.startswith("vgg_tiny") else 16
        return self.image_size // stride

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model configuration fields: {', '.join(unknown)}")
        data = dict(data)
        # Checkpoints written before the deep output had its tanh decode as they were trained.
        data.setdefault("deep_output", "linear")
        data.setdefault("init", "pytorch")
        return cls(**data)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Every field has a `train.py` flag of the same name (dashes for underscores)."""

    dataset: str = "shapes"
    data_root: str | None = None
    images: str | None = None       # the photos' folder when not under data_root (read in place)
    split_file: str | None = None
    out_dir: str = "runs/shapes"
    # optimisation
    steps: int = 3000               # optimizer steps in total (the one-cycle schedule needs the horizon)
    batch_size: int = 64
    lr: float = 2e-3                # peak learning rate
    weight_decay: float = 0.0
    lr_schedule: str = "onecycle"   # onecycle | plateau (decay by lr_decay when val BLEU-4 stalls) | constant
    lr_decay: float = 0.5
    grad_clip: float = 5.0
    doubly_stochastic: float = 1.0  # lambda of eq. (14)
    reference_loss: str = "each"    # each: every reference is a training caption | any: -log sum_r p(ref_r) per image
    objective: str = "xe"           # xe: the paper's cross-entropy (eq. 14) | scst: self-critical on CIDEr-D
    init_from: str | None = None    # start from this checkpoint's model, vocabulary and weights (scst fine-tunes one)
    scst_samples: int = 5           # scst: captions sampled per image (the baseline is the others' mean reward)
    # evaluation, early stopping
    eval_every: int = 500
    eval_images: int = 200
    eval_beam_size: int = 1
    patience: int = 0               # evaluations without improvement before stopping; 0 disables
    select_by: str = "auto"         # validation metric that picks best.pt: Bleu_4 | CIDEr | auto (CIDEr for scst)
    # data
    train_images: int | None = 12000  # shapes: images generated; real data: use only the first N (None: all)
    val_images: int | None = 200
    min_count: int = 5
    seed: int = 0
    num_workers: int = 0
    strict: bool = False            # an annotated image that is missing/unreadable/outside the root is an error
    group_by_length: bool = True    # batches of captions of similar length (less padding)
    feature_cache: str | None = None  # folder of cached encoder features (frozen encoder only)
    amp: bool = True                # on CUDA: bf16 autocast for the training step
    # encoder
    pretrained: bool = False
    encoder_weights: str | None = None
    from_scratch: bool = False      # real data: train the encoder from random weights (else a pretrained one is required)
    finetune_encoder: bool = False  # for pretrained VGG: train the last conv block too
    freeze_encoder: bool = False    # train the decoder only (features may come from a cache)
    # hard attention (sec. 4.1)
    baseline_decay: float = 0.9
    entropy_weight: float = 0.01
    expectation_prob: float = 0.5
    reinforce_weight: float = 1.0   # lambda_r of eq. (12)
    expectation_warmup: int = 0     # first batches that all use the expected context, before sampling starts
    # misc
    resume: bool = False
    log_every: int = 50
    progress: bool = True

    def __post_init__(self) -> None:
        if self.reference_loss not in REFERENCE_LOSSES:
            raise ValueError(f"reference_loss must be one of {', '.join(REFERENCE_LOSSES)}, "
                             f"got {self.reference_loss!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.select_by not in SELECT_BY:
            raise ValueError(f"select_by must be one of {', '.join(SELECT_BY)}, got {self.select_by!r}")
        if self.objective == "scst" and self.scst_samples < 2:
            raise ValueError(f"scst_samples must be at least 2 (the baseline is the other samples' mean), "
                             f"got {self.scst_samples}")
        if self.lr_schedule not in ("onecycle", "plateau", "constant"):
            raise ValueError(f"lr_schedule must be onecycle, plateau or constant, got {self.lr_schedule!r}")
        for name in ("steps", "batch_size", "eval_every", "eval_images", "eval_beam_size", "train_images",
                     "val_images", "log_every"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("lr", "weight_decay", "lr_decay", "grad_clip", "doubly_stochastic", "entropy_weight",
                     "reinforce_weight"):
            if not math.isfinite(getattr(self, name, 0.0)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        for name in ("weight_decay", "doubly_stochastic", "entropy_weight", "patience", "min_count", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be zero or more, got {getattr(self, name)}")
        if self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive, got {self.grad_clip}")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if not 0.0 <= self.expectation_prob <= 1.0:
            raise ValueError(f"expectation_prob must be in [0, 1], got {self.expectation_prob}")
        if not 0.0 <= self.baseline_decay < 1.0:
            raise ValueError(f"baseline_decay must be in [0, 1), got {self.baseline_decay}")
        if self.from_scratch and (self.pretrained or self.encoder_weights):
            raise ValueError("--from-scratch trains the encoder from random weights; it cannot go with --pretrained "
                             "or --encoder-weights")
        if self.expectation_warmup < 0:
            raise ValueError(f"expectation_warmup must be zero or more, got {self.expectation_warmup}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def selection_metric(self) -> str:
        """The validation score that picks best.pt and counts towards --patience."""
        if self.select_by != "auto":
            return self.select_by
        return "CIDEr" if self.objective == "scst" else "Bleu_4"


# What `python train.py --dataset NAME` uses for the flags left unset, over the dataclasses' own
# defaults. ModelConfig's defaults are the paper's (VGG-19, 224 px, 14x14x512 annotations);
# TrainConfig's are the CPU demo's. `shapes` is small, so it gets a narrow encoder, and a
# positional encoding on the annotations that spatial words ("left of", "above") learn far faster
# with. Its convolutions have batch norm: without it the trained attention of shape words settles
# on cells at the object's edge, often just outside its box (BENCHMARKS.md, issue 2). On shapes
# the doubly stochastic penalty (eq. 14) is off: with 64 cells and captions of about 12 words its
# lambda=1 pull towards even coverage outweighs the word loss and keeps the attention from
# settling on the object being named.
DATASET_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    # The authors' deep output and initialisation (real data's defaults) were measured on shapes at
    # the demo's budget: validation BLEU-4 0.61 and localisation 0.36, against 0.99 and 0.99 for
    # PyTorch's initialisation without the tanh (BENCHMARKS.md, "Deep output and initialisation"),
    # so the demo keeps the latter.
    "shapes": dict(encoder="vgg_tiny_bn", image_size=64, encoder_dim=64, embed_dim=64, hidden_dim=256,
                   attention_dim=64, positional="sine", dropout=0.5, max_len=20, deep_output="linear",
                   init="pytorch"),
    # Real photos: the shipped model's offline recipe, EfficientNet-Lite0 read at its head (LITE_DEFAULT_LAYER),
    # whose ImageNet weights install with pip; the paper's VGG-19 is one flag away (`encoder_defaults`).
    **{name: dict(encoder="efficientnet_lite0") for name in ("coco", "flickr8k", "flickr30k")},
}
# TrainConfig fields that only a VGG encoder takes: given without --encoder, they pick the paper's VGG-19.
VGG_WEIGHT_FIELDS = ("pretrained", "encoder_weights", "finetune_encoder", "from_scratch")
_REAL_DATA_TRAINING: dict[str, Any] = dict(
    steps=100_000, lr=4e-4, doubly_stochastic=1.0, eval_every=2000, eval_images=5000, eval_beam_size=3,
    patience=5, train_images=None, val_images=None, out_dir=None)
DATASET_TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    # Length-grouped batches would be one object count per batch on shapes (length follows the
    # number of objects): too uniform a gradient for the demo's short schedule.
    # A shapes image has one reference per order of its objects, so the first colour word of a
    # reference is any object's: trained on each reference (the paper's objective), the model must
    # spread its first prediction, and its attention, over all the objects. With "any" it is trained
    # to write one of them (-log sum_r p(y_r | a)) and settles on an order of its own, attending to
    # the object it is about to name. Batches are then 32 images with all their references (about
    # 3.7 each). Measured in BENCHMARKS.md.
    # Hard attention (sec. 4.1) on shapes: 1,000 batches with the expected context first, so that
    # sampling starts from attention that already finds the objects, and lambda_r = 0.1 (eq. 12's
    # hyper-parameter, "set by cross-validation" in the paper): at 1.0 the REINFORCE term's
    # gradient outgrew the likelihood's under clipping and the captions fell apart (BENCHMARKS.md).
    "shapes": dict(doubly_stochastic=0.0, group_by_length=False, reference_loss="any", batch_size=32,
                   expectation_warmup=1000, reinforce_weight=0.1),
    "coco": dict(_REAL_DATA_TRAINING, out_dir="runs/coco"),
    "flickr8k": dict(_REAL_DATA_TRAINING, out_dir="runs/flickr8k"),
    "flickr30k": dict(_REAL_DATA_TRAINING, out_dir="runs/flickr30k"),
}


def train_config_for(dataset: str, **flags) -> TrainConfig:
    """The TrainConfig for `dataset`: its defaults, then every flag that was given (None = not given)."""
    fields_ = dict(DATASET_TRAIN_DEFAULTS.get(dataset, {}))
    fields_.update({k: v for k, v in flags.items() if v is not None})
    if fields_.get("out_dir") is None:
        fields_["out_dir"] = f"runs/{dataset}"
    return TrainConfig(dataset=dataset, **fields_)


def lite_encoder_dim(encoder: str, layer: str) -> int:
    """D of EfficientNet-Lite's annotations at `layer` (Lite2's stride-16 stage is 120 wide, the others 112)."""
    stage5 = 120 if encoder == "efficientnet_lite2" else 112
    return {"stage5": stage5, "expand": 6 * stage5, "head": 1280}[layer or LITE_DEFAULT_LAYER]


def encoder_defaults(tc: TrainConfig, overrides: dict | None) -> dict:
    """The model overrides of a run, with the encoder made explicit where the run's flags choose it: a real
    data set's default is EfficientNet-Lite0 (DATASET_MODEL_DEFAULTS), but --pretrained, --encoder-weights,
    --finetune-encoder or --from-scratch without --encoder mean the paper's VGG-19 (ModelConfig's default)."""
    overrides = dict(overrides or {})
    if overrides.get("encoder") is None and tc.dataset != "shapes" and any(
            getattr(tc, name) for name in VGG_WEIGHT_FIELDS):
        overrides["encoder"] = ModelConfig.encoder
    return overrides


def model_config_for(dataset: str, vocab_size: int, **overrides) -> ModelConfig:
    """The ModelConfig for `dataset`: its defaults, then the user's overrides (None = keep).
    An EfficientNet-Lite encoder fixes encoder_dim unless it was given."""
    fields_ = dict(DATASET_MODEL_DEFAULTS.get(dataset, {}))
    fields_.update({k: v for k, v in overrides.items() if v is not None})
    encoder = fields_.get("encoder", "vgg19")
    if encoder.startswith("efficientnet_lite") and overrides.get("encoder_dim") is None:
        layer = fields_.get("encoder_layer") or ""
        if layer in LITE_LAYERS or not layer:
            fields_["encoder_dim"] = lite_encoder_dim(encoder, layer)
    return ModelConfig(vocab_size=vocab_size, **fields_)


def replace(config, **changes):
    """`dataclasses.replace` re-exported so callers need not import dataclasses."""
    return dataclasses.replace(config, **changes)


__all__ = ["ModelConfig", "TrainConfig", "replace", "train_config_for", "model_config_for",
           "encoder_defaults", "DATASET_MODEL_DEFAULTS",
           "DATASET_TRAIN_DEFAULTS", "ENCODERS", "ATTENTIONS", "SCORES", "POSITIONAL"]
