"""VGG encoder: an image becomes a grid of annotation vectors (Xu et al. 2015, sec. 3.1.1).

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
        from torchvision import models

        import torch

        url = getattr(models, _WEIGHT_ENUMS[name]).IMAGENET1K_V1.url
        cache = f"{torch.hub.get_dir()}/checkpoints/"
        return (f"on a machine with internet, download {url} and pass the file with --encoder-weights PATH "
                f"(or copy it into {cache})")
    except Exception:  # noqa: BLE001 - the hint must never fail
        return ("download torchvision's ImageNet file for this VGG on a machine with internet and pass it with "
                "--encoder-weights PATH")
