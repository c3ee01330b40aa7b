"""Faster decoding on the CPU, for a model that only captions (caption.py, the benchmarks).

`optimize_for_cpu(model)` changes how two things are computed, not what:

* The decoder's matrix products (LSTM, vocabulary projection, attention and deep-output layers)
  run on oneDNN's linear primitive (which already runs the VGG convolutions) instead of MKL's
  sgemm, which on the AMD EPYC machine of BENCHMARKS.md reaches only about 60-70% of oneDNN's
  speed on these shapes (MKL is known to choose generic code paths on non-Intel processors).
* Additive attention's tanh over B x L x attention_dim values per step (the beam search's largest
  single cost) is computed through sigmoid, tanh(u) = 2 sigmoid(2u) - 1, folded into the energy
  layer; torch's float tanh is about 6x slower than its sigmoid on this machine.

Together they make the beam search about a third faster (figures in BENCHMARKS.md). The arithmetic stays float32; the
order of additions inside dot products and the tanh formula differ, so values move in the last
bits (attention weights and log-probabilities agree to about 1e-6 relative) and the captions are
the same: tests/test_performance_paths.py checks it, and bench/caption_speed.py and
bench/tutorial_reference.py check it on every run. The layers keep their parameters, so
state_dict, saving and `.to()` are unchanged; whenever autograd is recording, or a tensor is not a
float32 CPU tensor, a layer runs its usual forward. Without oneDNN in this build of torch nothing
is changed.
"""

from __future__ import annotations

import types

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


# Rows of the (B, L, A) attention temporary handled at once: about this many bytes, so that the
# sum, the sigmoid and the energy product of a chunk stay in cache instead of streaming B*L*A
# floats through memory three times per step.
CHUNK_BYTES = 4 << 20


def _additive_scores(self, keys: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Additive attention's e_ti = w^T tanh(k_i + W_h h) + b, through the identity
    tanh(u) = 2 sigmoid(2u) - 1:  e_ti = (2w)^T sigmoid(2(k_i + W_h h)) + (b - sum(w)).
    torch's float tanh is about 6x slower than its sigmoid on the benchmark machine, and this
    tanh over B x L x attention_dim values was the beam search's largest single cost. Multiplying
    by 2 is exact; the scores agree with `Attention.scores` to about 1e-6."""
    if _plain(h, self.query_proj.weight) or keys.requires_grad or keys.dtype != torch.float32 or keys.dim() != 3:
        return type(self).scores(self, keys, h)
    B, L, A = keys.shape
    query = self.query_proj(h).unsqueeze(1)                                   # (B, 1, A)
    w = self.energy.weight                                                    # (1, A)
    w2 = w * 2
    bias = -w.sum(dim=1) if self.energy.bias is None else self.energy.bias - w.sum(dim=1)
    scores = keys.new_empty(B, L)
    rows = max(1, CHUNK_BYTES // max(1, L * A * keys.element_size()))
    for start in range(0, B, rows):
        u = keys[start:start + rows] + query[start:start + rows]              # (b, L, A) + (b, 1, A)
        u.mul_(2).sigmoid_()                                                  # in place
        scores[start:start + rows] = _linear(u, w2, bias).view(-1, L)         # (b, L, 1) -> (b, L)
    return scores.unsqueeze(1)                                                # (B, L) -> (B, 1, L)


def optimize_for_cpu(model: nn.Module) -> int:
    """Route the linear layers and LSTM cells of `model.decoder` (or of `model` itself) through
    oneDNN on the CPU, and additive attention's tanh through sigmoid; returns how many layers now
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
        elif isinstance(module, Attention) and module.score == "additive":
            module.scores = types.MethodType(_additive_scores, module)
        else:
            continue
        count += 1
    return count


__all__ = ["onednn_available", "optimize_for_cpu"]
