"""The captioner: an image encoder (VGG or EfficientNet-Lite) and the attention LSTM decoder behind one small surface.

Dimensions:
    B  batch    3, H, W  image    L  annotation vectors    D  encoder_dim
    T  teacher-forced steps       V  vocabulary size

    encode(images (B, 3, H, W))          -> annotations (B, L, D)
    forward(images or annotations, inputs (B, T)) -> logits (B, T, V), alphas (B, T, L), betas (B, T)
        (return_trace=True adds hard/local attention's per-step `AttentionTrace`, see decoder.py)
    init_state(annotations), step(tokens, state) -> one decoding step (used by beam search)

The loss lives in `losses.py`; decoding lives in `beam.py`.

For users, two calls (the Python API, see the README):
    model = Captioner.load()                     # a checkpoint (default: the shipped one), vocabulary attached
    model.caption("photo.jpg", beam_size=3)      # paths, PIL images or tensors -> `Caption`s
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .decoder import Decoder, DecoderState, StepOutput
from .encoder import build_encoder, preprocessing_for


class Captioner(nn.Module):
    vocab = None  # the Vocabulary, attached by `load` (a model built from a config has none)

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

    @classmethod
    def load(cls, path=None, device="cpu") -> Captioner:
        """The model of a checkpoint file (default: the shipped default checkpoint), in eval mode on
        `device`, with its vocabulary as `.vocab`. Raises CheckpointError (one line) for a bad file."""
        from .checkpoint import load_captioner

        model, vocab = load_captioner(path, device)
        model.vocab = vocab
        return model

    def caption(self, images, beam_size: int = 3, length_penalty: float = 0.0, batch_size: int = 32,
                vocab=None):
        """Caption one image or a list of them; returns one `Caption` (or a list, for a list).

        An image is a file path, an RGB PIL image, or a tensor (3, H, W) (uint8 0..255, or float
        0..1), of any size: each goes through the model's own preprocessing
        (`images.preprocessing_for`), as in caption.py. A (B, 3, H, W) tensor is B images.
        A `Caption` has `.text`, `.words`, `.log_prob` (natural log, <end> included), `.candidates`
        (the beam's (words, log_prob), best first) and `.alphas`, the attention map of every word
        as (len(words), L) weights over the annotation grid: `.alphas.view(-1, model.grid_size,
        model.grid_size)`; `captioner.render.render_attention` draws them over the picture.
        An unreadable file raises `images.ImageError` with a one-line reason."""
        from .images import preprocessing_for
        from .inference import batched, caption_batches

        vocab = vocab if vocab is not None else self.vocab
        if vocab is None:
            raise ValueError("this model has no vocabulary: load it with Captioner.load(path), or pass vocab=")
        if not 1 <= beam_size:
            raise ValueError(f"beam_size must be at least 1, got {beam_size}")
        # A (B, 3, H, W) tensor is B images; a (3, H, W) one is one image.
        single = not isinstance(images, (list, tuple)) and not (torch.is_tensor(images) and holds_images(images))
        prepare = preprocessing_for(self)
        pixels = [prepare(_photo(item)) for item in ([images] if single else list(images))]  # every file read first
        captions = [caption for _, batch in caption_batches(self, batched(pixels, batch_size), vocab,
                                                            beam_size=beam_size, length_penalty=length_penalty)
                    for caption in batch]
        return captions[0] if single else captions

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images normalised as `self.preprocessing` says (B, 3, H, W) -> annotation vectors (B, L, D)."""
        return self.encoder(images)

    def forward(self, inputs: torch.Tensor, captions: torch.Tensor, mask: torch.Tensor | None = None,
                hard_mode: str | None = None, return_trace: bool = False):
        """Teacher-forced pass. `inputs` is a batch of images (B, 3, H, W) or of precomputed
        annotations (B, L, D), e.g. from the feature cache; `captions` (B, T) starts with <start>
        and holds the previous word of each step. The batch is never reordered.
        `hard_mode`, `return_trace`: see `Decoder.forward` (hard attention's training needs them)."""
        return self.decoder(self.annotations_of(inputs), captions, mask, hard_mode=hard_mode,
                            return_trace=return_trace)

    def annotations_of(self, inputs: torch.Tensor) -> torch.Tensor:
        """Annotation vectors (B, L, D) of a batch: images (B, 3, H, W), normalised as
        `self.preprocessing` says, are encoded; annotations (B, L, D) (the feature cache's) pass as
        they are. Which of the two a batch holds is `holds_images`'s answer."""
        return self.encode(inputs) if holds_images(inputs) else inputs

    def init_state(self, annotations: torch.Tensor) -> DecoderState:
        return self.decoder.init_state(annotations)

    def step(self, tokens: torch.Tensor, state: DecoderState, mask: torch.Tensor | None = None,
             hard_mode: str | None = None) -> tuple[StepOutput, DecoderState]:
        return self.decoder.step(tokens, state, mask, hard_mode)

    @property
    def grid_size(self) -> int:
        return self.config.grid_size


def holds_images(inputs: torch.Tensor) -> bool:
    """Whether a batch holds images (B, 3, H, W) rather than annotation vectors (B, L, D), such as
    the feature cache's. Told apart by rank alone, here only, so every caller agrees."""
    return inputs.dim() == 4


def _photo(item):
    """A file path, a PIL image or a (3, H, W) tensor -> an RGB PIL image, for `Captioner.caption`.
    An unreadable file raises `images.ImageError` naming the file."""
    from .images import ImageError, load_image

    if torch.is_tensor(item):
        return _tensor_to_pil(item)
    if hasattr(item, "convert") and hasattr(item, "size"):  # a PIL image
        return item.convert("RGB")
    try:
        return load_image(item)
    except ImageError as e:
        raise ImageError(f"{item}: {e}") from None


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


def _tensor_to_pil(image: torch.Tensor):
    """(3, H, W) uint8 0..255 or float 0..1 -> RGB PIL image (then preprocessed like any picture)."""
    from PIL import Image

    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"an image tensor must be (3, H, W), got {tuple(image.shape)}")
    image = image.detach().cpu()
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
