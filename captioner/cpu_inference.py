"""The decoder's matrix products through oneDNN when decoding on the CPU (caption.py, benchmarks).

PyTorch runs `nn.Linear` and `nn.LSTMCell` on the CPU with MKL's sgemm. On the AMD EPYC machine
of BENCHMARKS.md that reaches about 60% of the speed oneDNN (which already runs the VGG
convolutions) gets on the same products: MKL picks a slower code path on non-Intel processors.
A beam-search step is about half matrix products (LSTM, the vocabulary projection, the attention
and deep-output layers), so `use_onednn(model)` routes the decoder's linear layers and its LSTM
cell through oneDNN's linear primitive: the beam search gets about 25% faster.

The arithmetic is the same (float32 throughout); only the order of the additions inside each
dot product differs, so values move in the last bits (relative 1e-6) and the captions are the
same (tests/test_performance_paths.py; bench/caption_speed.py checks it on 32 images). The layers
keep their parameters, so state_dict, saving and `.to()` are unchanged; whenever autograd is
recording, or a tensor is not a float32 CPU tensor, a layer runs its usual forward. Without
oneDNN in this build of torch nothing is changed.
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


def use_onednn(model: nn.Module) -> int:
    """Route the linear layers and LSTM cells of `model.decoder` (or of `model` itself) through
    oneDNN on the CPU; returns how many layers now do. The encoder is left alone (its convolutions
    already run on oneDNN). Calling it twice changes nothing more."""
    if not onednn_available():
        return 0
    root = getattr(model, "decoder", model)
    count = 0
    for module in root.modules():
        if type(module) is nn.Linear:
            module.forward = types.MethodType(_linear_forward, module)
        elif type(module) is nn.LSTMCell and module.bias:
            module.forward = types.MethodType(_lstm_cell_forward, module)
        else:
            continue
        count += 1
    return count


__all__ = ["onednn_available", "use_onednn"]
