"""The captioner: VGG encoder + attention LSTM decoder behind one small surface.

Dimensions:
    B  batch    3, H, W  image    L  annotation vectors    D  encoder_dim
    T  teacher-forced steps       V  vocabulary size

    encode(images (B, 3, H, W))          -> annotations (B, L, D)
    forward(images or annotations, inputs (B, T)) -> logits (B, T, V), alphas (B, T, L), betas (B, T)
        (return_trace=True adds hard/local attention's per-step `AttentionTrace`, see decoder.py)
    init_state(annotations), step(tokens, state) -> one decoding step (used by beam search)

The loss lives in `losses.py`; decoding lives in `beam.py`.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .decoder import Decoder, DecoderState, StepOutput
from .encoder import build_encoder, preprocessing_for


class Captioner(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config)
        self.decoder = Decoder(config)

    @property
    def preprocessing(self):
        """How photos become this model's input (size, resize rule, normalisation): `encoder.Preprocessing`."""
        return preprocessing_for(self.config)

    def train(self, mode: bool = True) -> Captioner:
        """Training mode for what is trained; a frozen part of the encoder stays in eval mode.

        The paper's encoder is a fixed ImageNet network (sec. 3.1.1, 4.3): its batch-norm layers
        must keep their ImageNet running statistics (train mode would update them from every
        batch, so a "frozen" encoder would drift) and any dropout in it must stay off. A module of
        the encoder whose parameters all have requires_grad=False (the whole encoder when frozen,
        the blocks before the last one under --finetune-encoder) is put back in eval mode. Decided
        from requires_grad at every call, so it holds for any encoder and however the parts were
        frozen; `caption_set`'s train(was_training) after validation goes through here too."""
        super().train(mode)
        if mode:
            for module in _frozen_subtrees(self.encoder):
                module.eval()
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images normalised as `self.preprocessing` says (B, 3, H, W) -> annotation vectors (B, L, D)."""
        return self.encoder(images)

    def forward(self, inputs: torch.Tensor, captions: torch.Tensor, mask: torch.Tensor | None = None,
                hard_mode: str | None = None, return_trace: bool = False):
        """Teacher-forced pass. `inputs` is a batch of images (B, 3, H, W) or of precomputed
        annotations (B, L, D), e.g. from the feature cache; `captions` (B, T) starts with <start>
        and holds the previous word of each step. The batch is never reordered.
        `hard_mode`, `return_trace`: see `Decoder.forward` (hard attention's training needs them)."""
        annotations = self.encode(inputs) if inputs.dim() == 4 else inputs
        return self.decoder(annotations, captions, mask, hard_mode=hard_mode, return_trace=return_trace)

    def init_state(self, annotations: torch.Tensor) -> DecoderState:
        return self.decoder.init_state(annotations)

    def step(self, tokens: torch.Tensor, state: DecoderState, mask: torch.Tensor | None = None,
             hard_mode: str | None = None) -> tuple[StepOutput, DecoderState]:
        return self.decoder.step(tokens, state, mask, hard_mode)

    @property
    def grid_size(self) -> int:
        return self.config.grid_size


def _frozen_subtrees(module: nn.Module):
    """The largest submodules of `module` (itself included) that hold parameters, all frozen.
    A parameter-free module (ReLU, pooling, dropout) counts as frozen only inside a frozen parent,
    so dropout beside trained layers keeps training."""
    params = list(module.parameters())
    if params and not any(p.requires_grad for p in params):
        yield module
        return
    for child in module.children():
        yield from _frozen_subtrees(child)
