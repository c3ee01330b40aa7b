"""Captioning many images with the one beam search: used by validation, evaluation, caption.py
and the notebook. Each image is decoded once, in batches."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator

import torch

from .beam import Caption, beam_search
from .images import normalize
from .precision import autocast


@torch.inference_mode()
def caption_batch(model, images_uint8: torch.Tensor, vocab, beam_size: int = 3, length_penalty: float = 0.0,
                  max_len: int | None = None, precision: str = "fp32") -> list[Caption]:
    """uint8 images (B, 3, S, S), or cached annotations (B, L, D) (see `captioner.data.cache`),
    -> one Caption per image. The model's device is used; the encoder and the beam search run under
    `precision`'s autocast (`captioner.precision`: fp32, bf16, fp16)."""
    from .model import holds_images

    device = next(model.parameters()).device
    inputs = images_uint8.to(device, non_blocking=True)
    if holds_images(inputs):
        inputs = normalize(inputs, model.preprocessing)            # uint8 -> the encoder's float input
    with autocast(device, precision):
        annotations = model.annotations_of(inputs).float()        # (B, L, D); cached float16 -> float32
        return beam_search(model, annotations, vocab, beam_size=beam_size, max_len=max_len,
                           length_penalty=length_penalty)


def batched(items: Iterable, size: int) -> Iterator[list]:
    """`items` in consecutive lists of `size` (the last one may be shorter), taken as they come:
    a stream (caption.py's files, read ahead in threads) is never read to its end first."""
    if size < 1:
        raise ValueError(f"a batch size must be at least 1, got {size}")
    items = iter(items)
    while batch := list(itertools.islice(items, size)):
        yield batch


def caption_batches(model, batches: Iterable, vocab, inputs: Callable = torch.stack, beam_size: int = 3,
                    length_penalty: float = 0.0, max_len: int | None = None,
                    precision: str = "fp32") -> Iterator[tuple[object, list[Caption]]]:
    """The one loop that decodes many images: yields (batch, its Captions) for each of `batches`, in
    order, as soon as that batch is decoded, so a caller can write its results (caption.py's lines
    and overlays) while the next batch is still being read.

    `inputs(batch)`: the batch as `caption_batch` takes it, uint8 images (B, 3, S, S) or annotations
    (B, L, D); by default a batch is a list of (3, S, S) tensors (see `batched`) and is stacked.
    The model decodes in eval mode (no dropout) and goes back to its own mode afterwards, also when
    decoding fails or the caller stops early (training validates in between its steps)."""
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            yield batch, caption_batch(model, inputs(batch), vocab, beam_size, length_penalty, max_len, precision)
    finally:
        model.train(was_training)


def caption_set(model, images, vocab, beam_size: int = 3, batch_size: int = 64, length_penalty: float = 0.0,
                progress: bool = False, max_len: int | None = None, num_workers: int = 0,
                precision: str = "fp32") -> list[Caption]:
    """Decode every image of an image set (see `captioner.data`) once; results in set order.
    With `num_workers` > 0, images are read and decoded in that many DataLoader worker processes."""
    if num_workers > 0 and len(images):
        from .data import ImagesOnly, collate_images

        batches = torch.utils.data.DataLoader(ImagesOnly(images), batch_size=batch_size, num_workers=num_workers,
                                              collate_fn=collate_images,
                                              generator=torch.Generator())  # leave the global RNG alone

        def inputs_of(batch):  # the loader's batches are (pixels (B, ...), indices), already stacked
            return batch[0]
    else:
        batches = batched(range(len(images)), batch_size)

        def inputs_of(batch):  # indices -> the images (B, 3, S, S) or cached annotations (B, L, D)
            return torch.stack([images.image(i) for i in batch])
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="decoding", unit="batch", leave=False,
                       total=(len(images) + batch_size - 1) // batch_size)
    return [caption for _, captions in caption_batches(model, batches, vocab, inputs_of, beam_size, length_penalty,
                                                        max_len, precision) for caption in captions]


def score_captions(captions: list[Caption], images, grid_size: int) -> dict[str, float]:
    """Multi-reference BLEU-1..4 and, on shapes, attention localisation: training's validation.

    BLEU comes from the function `python -m captioner.evaluate` scores with (`metrics.coco_scores`,
    the coco-caption toolkit's PTB tokenisation of the caption text and of the whole references,
    Java's where it is installed), so the BLEU-4 that picks best.pt is the one evaluation reports
    for the same captions, not a second tokenisation's (NLTK's, which drops tokens such as "&")."""
    from .metrics import BLEU, coco_scores

    scores = dict(coco_scores([c.text for c in captions], [list(refs) for refs in images.references],
                              metrics=(*BLEU, "CIDEr")).overall)
    if hasattr(images, "objects"):
        from .data.shapes import attention_localization

        scores["attention_localization"], scores["localized_words"] = attention_localization(
            captions, images.objects, grid_size, images.image_size)
    return scores


def quantize_decoder(model):
    """A copy of `model` for CPU captioning whose decoder's LSTM cell and linear layers outside
    attention run in int8 (torch's dynamic quantisation: weights stored in int8, activations
    quantised per batch). About twice as fast a beam search on the CPU as float32
    (BENCHMARKS.md); the numbers are not float32's, so some captions may differ. Decoding only: the copy cannot be trained or saved as a checkpoint."""
    import copy
    import warnings

    from torch import nn

    quantized = copy.deepcopy(model).eval()
    decoder = quantized.decoder
    names = {name for name, module in decoder.named_modules()
             if isinstance(module, (nn.Linear, nn.LSTMCell)) and not name.startswith("attention")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # torch.ao.quantization announces its move to torchao
        from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

        quantized.decoder = quantize_dynamic(decoder, {name: default_dynamic_qconfig for name in names},
                                             dtype=torch.qint8)
    return quantized
