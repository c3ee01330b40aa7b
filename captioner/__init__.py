"""captioner: image captioning after Show, Attend and Tell (Xu et al., 2015).

`import captioner` stays cheap: plotting, evaluation and torchvision load only where used, and
torch itself only when one of the names below is first used (PEP 562), so that `caption.py` can
set up the process (`captioner.runtime`) before torch loads.
"""

import importlib

_EXPORTS = {"Caption": "beam", "beam_search": "beam", "CheckpointError": "checkpoint",
            "load_captioner": "checkpoint", "ModelConfig": "config", "TrainConfig": "config",
            "Captioner": "model", "Vocabulary": "vocab"}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__version__ = "0.1.0"
__all__ = ["Caption", "Captioner", "CheckpointError", "ModelConfig", "TrainConfig", "Vocabulary", "beam_search",
           "load_captioner"]
