"""The web server's models: found by name at start-up, each loaded once (in a thread of its own, on
first use) and kept; a load that failed is remembered for a while and answered at once."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .forms import RequestError, clip

FAILED_RETRY_S = 60.0          # a model that failed to load is not tried again for this long


def find_models(extra=(), folder=None) -> dict[str, Path]:
    """name -> checkpoint path: the `--weights` files given (in order), then `folder`/*.pt
    (default: the shipped weights/ folder), sorted. A name is the file's stem, made unique."""
    from ..checkpoint import WEIGHTS_DIR

    folder = Path(folder) if folder is not None else WEIGHTS_DIR
    paths = [Path(p) for p in extra]
    found = sorted(folder.glob("*.pt")) if folder.is_dir() else []
    seen = {p.resolve() for p in paths}
    paths += [p for p in found if p.resolve() not in seen]
    models: dict[str, Path] = {}
    for path in paths:
        name, n = path.stem, 2
        while name in models:
            name, n = f"{path.stem}-{n}", n + 1
        models[name] = path
    return models


@dataclass
class LoadedModel:
    name: str
    model: object
    vocab: object
    image_size: int
    grid_size: int
    attention: str
    preprocessing: object = None  # the model's encoder.Preprocessing (size, resize rule, normalisation)


def load_checkpoint(path: Path, device: str):
    """(model, vocab) of a checkpoint: the pool's default loader (checkpoint.load_captioner)."""
    import torch

    from ..checkpoint import load_captioner

    return load_captioner(path, torch.device(device))


class ModelPool:
    """The models a request may name; each is loaded the first time it is asked for, then kept.

    `load(name)` never waits: it returns a Future shared by everyone asking for that model while a
    thread loads it. Loading one model holds no lock another model or a loaded model needs, and a
    failed load is remembered for `retry_after` seconds (its exception given again at once), so a
    broken file costs one load, not one per request. `loader(path, device)` -> (model, vocab)."""

    def __init__(self, paths: dict[str, Path], default: str | None = None, device: str = "cpu",
                 loader=load_checkpoint, retry_after: float = FAILED_RETRY_S):
        if not paths:
            raise ValueError("no models: give --weights CKPT, or put checkpoints (*.pt) in weights/")
        self.paths = dict(paths)
        self.default = default if default is not None else next(iter(self.paths))
        if self.default not in self.paths:
            raise ValueError(f"default model {self.default!r} is not among {', '.join(self.paths)}")
        self.device, self.loader, self.retry_after = device, loader, retry_after
        self._loaded: dict[str, LoadedModel] = {}
        self._failed: dict[str, tuple[float, BaseException]] = {}
        self._loading: dict[str, concurrent.futures.Future] = {}
        self._lock = threading.Lock()   # guards the three dicts only: never held while a model loads

    def resolve(self, name: str | None) -> str:
        if name is None or name == "":
            return self.default
        if name not in self.paths:
            raise RequestError(400, f"unknown model {clip(name)!r}; the models are: {', '.join(self.paths)}")
        return name

    def loaded(self, name: str) -> bool:
        return name in self._loaded

    def get(self, name: str) -> LoadedModel:
        """The loaded model `name` (a resolved name), waiting for its load; CheckpointError (or whatever
        the loader raised) if its file cannot be used."""
        return self.load(name).result()

    def load(self, name: str) -> concurrent.futures.Future:
        """A Future of the LoadedModel `name`: done at once for a loaded model or a failure remembered,
        otherwise the one load of that model under way (started here if none is)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_running_or_notify_cancel()   # a waiter that gives up cannot cancel the shared load
        with self._lock:
            if name in self._loaded:
                future.set_result(self._loaded[name])
                return future
            failed = self._failed.get(name)
            if failed is not None and time.monotonic() - failed[0] < self.retry_after:
                future.set_exception(failed[1])
                return future
            if name in self._loading:
                return self._loading[name]
            self._loading[name] = future
        threading.Thread(target=self._load, args=(name, future), name=f"captioner-load-{name}", daemon=True).start()
        return future

    def _load(self, name: str, future: concurrent.futures.Future) -> None:
        try:
            model, vocab = self.loader(self.paths[name], self.device)
            model.requires_grad_(False)
            config = model.config
            loaded = LoadedModel(name, model, vocab, config.image_size, config.grid_size, config.attention,
                                 model.preprocessing)
        except BaseException as e:  # noqa: BLE001 - remembered and handed to every waiting request
            with self._lock:
                self._failed[name] = (time.monotonic(), e.with_traceback(None))
                del self._loading[name]
            future.set_exception(e)
            return
        with self._lock:
            self._loaded[name] = loaded
            self._failed.pop(name, None)
            del self._loading[name]
        future.set_result(loaded)
