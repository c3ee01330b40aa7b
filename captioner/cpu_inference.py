"""Faster decoding on the CPU, for a model that only captions (caption.py, the benchmarks).

`optimize_for_cpu(model)` changes how three things are computed, not what:

* The decoder's matrix products (LSTM, vocabulary projection, attention and deep-output layers)
  run on oneDNN's linear primitive (which already runs the VGG convolutions) instead of MKL's
  sgemm, which on the AMD EPYC machine of BENCHMARKS.md reaches only about 60-70% of oneDNN's
  speed on these shapes (MKL is known to choose generic code paths on non-Intel processors).
* Additive attention's tanh over N x L x attention_dim values per step (N = images x beams; the
  beam search's largest single cost) is computed through sigmoid, tanh(u) = 2 sigmoid(2u) - 1,
  folded into the energy weights; torch's float tanh is about 6x slower than its sigmoid on this
  machine. The factor 2 inside the sigmoid comes from keys doubled once per batch and a doubled
  query, so a step makes one pass for the sum, one for the sigmoid and a matrix-vector product.
* The beam search hands the decoder K identical copies of each image's keys and annotations (one
  per beam). Where the rows are such copies (checked element by element, once per batch),
  attention reads each image's once per step: the doubled keys are kept once per image (an
  extra B x L x attention_dim floats while the batch is decoded) and broadcast over its beams,
  and the context is one (K, L) @ (L, D) product per image instead of K (1, L) ones, so a step
  streams a third of the data from memory at beam size 3.

Together they take about 40% off the beam search's time (0.61 s against 1.01 s for 32 images in
BENCHMARKS.md, issue 8). The arithmetic stays float32; the order of additions inside dot products
and the tanh formula differ, so values move in the last bits (attention weights and
log-probabilities agree to about 1e-6 relative) and the captions are the same:
tests/test_performance_paths.py checks it, and bench/caption_speed.py and
bench/tutorial_reference.py check it on every run. The layers keep their parameters, so
state_dict, saving and `.to()` are unchanged; whenever autograd is recording, or a tensor is not a
float32 CPU tensor, a layer runs its usual forward. Without oneDNN in this build of torch nothing
is changed.
"""

from __future__ import annotations

import types
import weakref

import torch
import torch.nn.functional as F
from torch import nn


def onednn_available() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def _plain(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True where the usual forward must run: autograd recording, or not a float32 CPU product."""
    return ((torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))
            or x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (..., in) @ weight (out, in)^T + bias, by oneDNN."""
    rows = x.reshape(-1, x.shape[-1])
    if not rows.is_contiguous():
        rows = rows.contiguous()
    out = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")
    return out.view(*x.shape[:-1], weight.shape[0])


def _linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if _plain(x, self.weight) or x.dim() == 0 or x.numel() == 0:
        return F.linear(x, self.weight, self.bias)
    return _linear(x, self.weight, self.bias)


def _lstm_cell_forward(self: nn.LSTMCell, x: torch.Tensor, hx=None):
    if hx is None or x.dim() != 2 or _plain(x, self.weight_ih) or x.shape[0] == 0:
        return nn.LSTMCell.forward(self, x, hx)
    h, c = hx
    # The same gates as torch's lstm_cell: W_ih x + b_ih + W_hh h + b_hh, chunks i, f, g, o.
    gates = _linear(x, self.weight_ih, self.bias_ih) + _linear(h, self.weight_hh, self.bias_hh)
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


# Images of the attention temporary (K x L x A values each) handled at once: about this many
# bytes, so that the sum, the sigmoid and the energy product of a chunk stay in cache instead of
# streaming the whole temporary through memory three times per step.
CHUNK_BYTES = 4 << 20

# Where `_per_batch` keeps what it derives from a batch's keys and annotations: the attention
# module's __dict__ (not buffers: they are not parameters of the model and must not reach state_dict).
_PER_BATCH = "_cpu_inference_per_batch"


class _PerBatchCache(dict):
    """slot -> (weak reference to the source tensor, its version, derived value). Copying or
    pickling the module gives an empty cache: the entries belong to this module's current batch."""

    def __deepcopy__(self, memo):
        return _PerBatchCache()

    def __reduce__(self):
        return _PerBatchCache, ()


def _per_batch(module: nn.Module, slot: str, tensor: torch.Tensor, derive):
    """derive(tensor), computed once per tensor and reused while that tensor lives.

    Decoding passes the same keys and annotations objects at every step (they are fixed per image,
    and beam reordering keeps them: `DecoderState.reorder_within_image`), so what is derived from
    them once per batch saves a pass over B x L x D values per step. An entry is recognised by the
    identity of its tensor (a weak reference: a finished batch's tensors are not kept alive, and
    the entry is dropped when they die) and, where torch tracks it, by the tensor's version
    counter, so a tensor written in place is derived again. (Inference-mode tensors have no
    version counter; decoding never writes its keys or annotations in place.)"""
    cache = module.__dict__.get(_PER_BATCH)
    if cache is None:
        cache = module.__dict__[_PER_BATCH] = _PerBatchCache()
    version = None if tensor.is_inference() else tensor._version
    entry = cache.get(slot)
    if entry is not None and entry[0]() is tensor and entry[1] == version:
        return entry[2]

    def forget(ref, cache=cache, slot=slot):
        current = cache.get(slot)
        if current is not None and current[0] is ref:
            del cache[slot]

    value = derive(tensor)
    cache[slot] = (weakref.ref(tensor, forget), version, value)
    return value


def _repeats(t: torch.Tensor) -> int:
    """K when the rows of `t` come in runs of K equal rows (beam search gives each image's K beams
    copies of the image's keys and annotations: `DecoderState.index_select`), else 1. Checked
    element by element, so a K > 1 is exact; one pass over `t`, once per batch."""
    n = t.shape[0]
    run = 1
    while run < n and torch.equal(t[run], t[0]):
        run += 1
    for k in range(run, 1, -1):                  # run > K when the first images are equal
        if run % k == 0 and n % k == 0:
            groups = t.unflatten(0, (n // k, k))
            if all(torch.equal(groups[:, i], groups[:, 0]) for i in range(1, k)):
                return k
    return 1


def _per_image_doubled_keys(keys: torch.Tensor) -> tuple[int, torch.Tensor]:
    k = _repeats(keys)
    return k, keys[::k] * 2                                                  # (N/k, L, A), 2 k_i


def _per_image(annotations: torch.Tensor) -> tuple[int, torch.Tensor]:
    k = _repeats(annotations)
    return k, annotations[::k]                                               # (N/k, L, D), a view


def _additive_scores(self, keys: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Additive attention's e_ti = w^T tanh(k_i + W_h h) + b, through the identity
    tanh(u) = 2 sigmoid(2u) - 1:  e_ti = (2w)^T sigmoid(2k_i + 2 W_h h) + (b - sum(w)).
    torch's float tanh is about 6x slower than its sigmoid on the benchmark machine, and this
    tanh over N x L x attention_dim values was the beam search's largest single cost. The keys are
    doubled once per batch, one copy per image rather than per beam (`_per_batch`, `_repeats`),
    and the query once per step, so the per-step work is one sum into a reused buffer (each
    image's keys broadcast over its beams), one sigmoid in place and one matrix-vector product per
    chunk, with the bias added to the scores at the end. Multiplying by 2 is exact (2k + 2q equals
    2(k + q) bit for bit); the scores agree with `Attention.scores` to about 1e-6."""
    if _plain(h, self.query_proj.weight) or keys.requires_grad or keys.dtype != torch.float32 or keys.dim() != 3:
        return type(self).scores(self, keys, h)
    N, L, A = keys.shape
    k, keys2 = _per_batch(self, "doubled_keys", keys, _per_image_doubled_keys)  # (B, L, A), B = N / k
    B = N // k
    query2 = self.query_proj(h).mul_(2).view(B, k, 1, A)                      # (N, A) -> (B, k, 1, A), 2 W_h h
    w = self.energy.weight                                                    # (1, A)
    w2 = (w * 2).view(A)                                                      # (A,)
    bias = -w.sum(dim=1) if self.energy.bias is None else self.energy.bias - w.sum(dim=1)
    scores = keys.new_empty(B, k, L)
    images = max(1, min(B, CHUNK_BYTES // max(1, k * L * A * keys.element_size())))
    buffer = keys.new_empty(images, k, L, A)
    for start in range(0, B, images):
        stop = min(B, start + images)
        u = buffer[:stop - start]
        torch.add(keys2[start:stop].unsqueeze(1), query2[start:stop], out=u)  # (b, 1, L, A) + (b, k, 1, A)
        u.sigmoid_()                                                          # in place
        torch.matmul(u, w2, out=scores[start:stop])                           # (b, k, L, A) @ (A,) -> (b, k, L)
    scores.add_(bias)
    return scores.view(N, 1, L)                                               # (B, k, L) -> (N, 1, L)


def _read(self, weights: torch.Tensor, keys: torch.Tensor, annotations: torch.Tensor) -> torch.Tensor:
    """The context sum_i w_i a_i, reading each image's annotations once for all its beams: one
    (k, L) @ (L, D) product per image instead of k products of (1, L) with k equal copies (the
    annotations are B x L x D floats streamed from memory at every step)."""
    if (self.score == "multihead" or _plain(weights, annotations) or annotations.requires_grad
            or annotations.dim() != 3 or weights.dim() != 3 or weights.shape[1] != 1):
        return type(self).read(self, weights, keys, annotations)
    k, per_image = _per_batch(self, "annotations", annotations, _per_image)
    if k == 1:
        return type(self).read(self, weights, keys, annotations)
    N, _, L = weights.shape
    return torch.bmm(weights.reshape(N // k, k, L), per_image).view(N, -1)  # (B, k, L) @ (B, L, D) -> (N, D)


def optimize_for_cpu(model: nn.Module) -> int:
    """Route the linear layers and LSTM cells of `model.decoder` (or of `model` itself) through
    oneDNN on the CPU, additive attention's tanh through sigmoid, and attention's reads once per
    image rather than per beam (multihead attention is left as it is); returns how many layers now
    do. The encoder is left alone (its convolutions already run on oneDNN). Calling it twice
    changes nothing more."""
    if not onednn_available():
        return 0
    from .attention import Attention

    root = getattr(model, "decoder", model)
    count = 0
    for module in root.modules():
        if type(module) is nn.Linear:
            module.forward = types.MethodType(_linear_forward, module)
        elif type(module) is nn.LSTMCell and module.bias:
            module.forward = types.MethodType(_lstm_cell_forward, module)
        elif isinstance(module, Attention) and module.score != "multihead":
            module.read = types.MethodType(_read, module)
            if module.score == "additive":
                module.scores = types.MethodType(_additive_scores, module)
        else:
            continue
        count += 1
    return count


__all__ = ["onednn_available", "optimize_for_cpu"]
