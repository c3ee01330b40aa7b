"""Feature cache: the annotation vectors (L, D) of every image of a split, computed once by a frozen
encoder and read back by the decoder's training, so that epochs after the first cost no VGG passes.

Layout of one cached split, `CACHE_DIR/<dataset>-<split>-<fingerprint[:16]>/`:

    features.f16   N x L x D float16, C order, no header: `np.memmap(path, np.float16, "r", shape=(N, L, D))`
                   opens it (`FeatureSet.memmap()`); COCO at 224 (123,287 x 196 x 512) is about 25 GB
    index.json     {"format", "version", "fingerprint", "key", "shape", "dtype", "complete", ...}

The fingerprint is a SHA-256 of the key: encoder name, input size, annotation size, a SHA-256 of the
encoder's weights, and the data set, split and list of image files. Anything that changes the
features changes the folder, so a stale cache is never read.

Training never loads a cache whole: `FeatureSet.image(i)` reads one row with `pread` into a fresh
buffer. Reading through an `mmap` would be as fast, but every page touched stays mapped into the
process and counts in its resident memory until the kernel reclaims it, so random access over a
25 GB file would grow the trainer to the file's size; `pread` leaves the data in the kernel's page
cache, which is shared, evictable and not part of any process. Writes use `pwrite` for the same
reason. Building is batched, shows a progress bar, and is split across ranks under torchrun.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_text_atomic

FORMAT, VERSION = "captioner-features", 1
DATA_FILE, INDEX_FILE = "features.f16", "index.json"
FLOAT16_MAX = 65504.0


class CacheError(ValueError):
    """A feature cache that cannot be built or read; str() is one line."""


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state_dict (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too
    return h.hexdigest()


def images_key(images) -> dict:
    """What identifies the images of a set: its own `cache_key()`, the shapes generator's seed, or its ids."""
    if hasattr(images, "cache_key"):
        return images.cache_key()
    if getattr(images, "name", None) == "shapes":  # generated: the pixels themselves identify the set
        pixels = hashlib.sha256(images.pixels.contiguous().numpy().tobytes()).hexdigest()
        return {"dataset": "shapes", "seed": images.seed, "images": len(images), "pixels_sha256": pixels}
    digest = hashlib.sha256("\n".join(map(str, images.ids)).encode()).hexdigest()
    return {"dataset": type(images).__name__, "images": len(images), "ids_sha256": digest}


def cache_key(model, images) -> dict:
    c = model.config
    return {"format_version": VERSION, "encoder": c.encoder, "image_size": c.image_size,
            "encoder_dim": c.encoder_dim, "grid_size": c.grid_size, "encoder_layer": c.encoder_layer,
            "resize": c.resize,
            "encoder_weights_sha256": weights_digest(model.encoder), **images_key(images)}


def fingerprint(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class FeatureSet:
    """An image set (see `captioner.data`) whose `image(i)` is image i's cached annotations,
    float16 (L, D). References and ids are those of the image set the cache was built from."""

    is_feature_set = True

    def __init__(self, folder, references, ids):
        self.folder = Path(folder)
        index = read_index(self.folder)
        if not index.get("complete"):
            raise CacheError(f"{self.folder}: the feature cache was not finished; delete the folder to rebuild it")
        self.shape = tuple(index["shape"])
        self.references, self.ids = references, ids
        if len(ids) != self.shape[0]:
            raise CacheError(f"{self.folder}: the cache holds {self.shape[0]} images, the data set {len(ids)}")
        self.row_bytes = self.shape[1] * self.shape[2] * 2
        self.path = self.folder / DATA_FILE
        size = self.path.stat().st_size if self.path.exists() else -1
        if size != self.shape[0] * self.row_bytes:
            raise CacheError(f"{self.path}: {size} bytes, expected {self.shape[0] * self.row_bytes} "
                             f"for {self.shape} float16; delete the folder to rebuild it")
        self._fd, self._pid = None, None

    def __len__(self) -> int:
        return self.shape[0]

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # one descriptor per (DataLoader worker) process
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)  # no read-ahead for random rows
        return self._fd

    def image(self, i: int) -> torch.Tensor:
        """float16 (L, D), read from disk (or the page cache) into a fresh buffer."""
        if not 0 <= i < self.shape[0]:
            raise IndexError(f"image {i} of {self.shape[0]}")
        row = np.empty(self.shape[1:], dtype=np.float16)
        got = os.preadv(self._file(), [row], i * self.row_bytes)
        if got != self.row_bytes:
            raise CacheError(f"{self.path}: short read at image {i} ({got} of {self.row_bytes} bytes)")
        return torch.from_numpy(row)

    def memmap(self) -> np.memmap:
        """The whole cache as a read-only memory map (N, L, D), for inspection and notebooks."""
        return np.memmap(self.path, dtype=np.float16, mode="r", shape=self.shape)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fd"] = state["_pid"] = None
        return state

    def __del__(self):
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass


def read_index(folder: Path) -> dict:
    path = Path(folder) / INDEX_FILE
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise CacheError(f"{path}: no feature cache index") from None
    except (OSError, ValueError) as e:
        raise CacheError(f"{path}: unreadable feature cache index ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
        raise CacheError(f"{path}: not a version-{VERSION} captioner feature cache index")
    return index


def _write_index(folder: Path, index: dict) -> None:
    write_text_atomic(folder / INDEX_FILE, json.dumps(index, indent=1))


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


class _Single:
    """Stand-in for a distributed context in a single process."""

    rank, world_size, is_main = 0, 1, True

    def barrier(self) -> None:
        pass


def _build(model, images, folder: Path, key: dict, fp: str, *, device, batch_size: int, num_workers: int,
           progress: bool, dist, log: Callable[[str], None], also: tuple = ()) -> None:
    """Encode every image once; rank r encodes batches r, r + W, ... and writes their rows.
    `also`: further (layer, folder, key, fp) caches of other layers of the same EfficientNet-Lite
    encoder, filled from the same pass (`build_layers`)."""
    from torch.utils.data import DataLoader

    from . import ImagesOnly, collate_images

    n = len(images)
    targets = [(model.config.encoder_layer, folder, key, fp)] + list(also)
    shapes = [(n, model.config.grid_size ** 2, t[2]["encoder_dim"]) for t in targets]   # each (N, L, D)
    if dist.is_main:
        for target, shape in zip(targets, shapes):
            _start_cache(target, shape)
    dist.barrier()
    all_batches = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    mine = all_batches[dist.rank::dist.world_size]
    loader = DataLoader(ImagesOnly(images), batch_sampler=mine, num_workers=num_workers,
                        collate_fn=collate_images, pin_memory=torch.device(device).type == "cuda",
                        generator=torch.Generator())  # never draw from the global RNG (exact resume)
    bar = _progress_bar(n, key) if progress and dist.is_main else None

    def advance(rows: int) -> None:  # rank 0's share stands for every rank's: they encode as many batches
        if bar is not None:
            bar.update(rows * dist.world_size)

    start = time.time()
    try:
        _write_rows(model, loader, targets, shapes, device, bool(also), advance)
    finally:
        if bar is not None:
            bar.close()
    dist.barrier()
    if dist.is_main:
        for (_layer, folder_, key_, fp_), shape in zip(targets, shapes):
            _write_index(folder_, {"format": FORMAT, "version": VERSION, "fingerprint": fp_, "key": key_,
                                   "shape": list(shape), "dtype": "float16", "complete": True,
                                   "build_seconds": round(time.time() - start, 1)})
            log(f"cached features of {n} images in {folder_} ({n * _row_bytes(shape) / 2**30:.2f} GiB, "
                f"{time.time() - start:.0f} s)")
    dist.barrier()


def _progress_bar(n: int, key: dict):
    """The bar over the `n` images of the cache `key` names."""
    from tqdm import tqdm

    return tqdm(total=n, desc=f"caching features ({key.get('dataset')} {key.get('split', '')})".replace(" )", ")"),
                unit="img", dynamic_ncols=True)


def _row_bytes(shape: tuple) -> int:
    """Bytes of one image's float16 annotations in a cache of `shape` (N, L, D)."""
    return shape[1] * shape[2] * 2


def _start_cache(target: tuple, shape: tuple) -> None:
    """A cache's data file at its full size (sparse until written) and its index, marked incomplete."""
    _layer, folder, key, fp = target
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / DATA_FILE, "wb") as f:
        f.truncate(shape[0] * _row_bytes(shape))
    _write_index(folder, {"format": FORMAT, "version": VERSION, "fingerprint": fp, "key": key,
                          "shape": list(shape), "dtype": "float16", "complete": False})


def _write_rows(model, loader, targets: list, shapes: list, device, several: bool,
                advance: Callable[[int], None]) -> None:
    """Encode the loader's batches (pixels, indices of consecutive images) and write each image's
    annotations into its row of every target's data file (`shapes`: theirs, (N, L, D); `several`:
    the targets are several layers of one encoder). The encoder is in eval mode meanwhile;
    `advance(images)` is called after each batch."""
    from ..images import normalize

    encoder = model.encoder
    layers = [t[0] for t in targets]
    was_training = encoder.training
    encoder.eval()
    fds = [os.open(t[1] / DATA_FILE, os.O_WRONLY) for t in targets]
    try:
        with torch.inference_mode():
            for pixels, index in loader:
                x = normalize(pixels.to(device, non_blocking=True), model.preprocessing)
                outs = encoder.annotations_at(x, layers) if several else [encoder(x)]          # each (B, L, D)
                for fd, out, shape in zip(fds, outs, shapes):
                    out = out.float().clamp_(-FLOAT16_MAX, FLOAT16_MAX).to(torch.float16).cpu().numpy()
                    _pwrite_all(fd, np.ascontiguousarray(out).data.cast("B"),
                                index[0] * _row_bytes(shape))  # the batch's images are consecutive rows
                advance(len(index))
        for fd in fds:
            os.fsync(fd)
    finally:
        for fd in fds:
            os.close(fd)
        encoder.train(was_training)


def _location(model, images, cache_dir, split: str, config=None) -> tuple[Path, dict, str]:
    key = cache_key(model, images)
    if config is not None:  # another layer of the same encoder
        key.update(encoder_layer=config.encoder_layer, encoder_dim=config.encoder_dim)
    key.setdefault("split", split)
    fp = fingerprint(key)
    return Path(cache_dir) / f"{key.get('dataset', 'images')}-{split}-{fp[:16]}", key, fp


def build_layers(model, images, cache_dir, split: str, layers, *, device="cpu", batch_size: int = 64,
                 num_workers: int = 0, progress: bool = True, log: Callable[[str], None] = print) -> list[Path]:
    """Caches of several EfficientNet-Lite `layers` (see ModelConfig.encoder_layer) from one pass of
    the encoder, each exactly where `open_or_build` looks for that layer's: for comparing layers
    (bench/quality/encoder_layers.py) at the cost of one. Returns the folders, in the order of `layers`."""
    from ..config import lite_encoder_dim, replace

    configs = [replace(model.config, encoder_layer=layer, encoder_dim=lite_encoder_dim(model.config.encoder, layer))
               for layer in layers]
    places = [_location(model, images, cache_dir, split, c) for c in configs]
    missing = []
    for layer, (folder, key, fp) in zip(layers, places):
        try:
            index = read_index(folder)
            if index.get("complete") and index.get("fingerprint") == fp:
                log(f"using cached features {folder}")
                continue
        except CacheError:
            pass
        missing.append((layer, folder, key, fp))
    if missing:
        first, rest = missing[0], tuple(missing[1:])
        reader = replace(model.config, encoder_layer=first[0], encoder_dim=first[2]["encoder_dim"])
        view = _ConfigView(model, reader)
        _build(view, images, first[1], first[2], first[3], device=device, batch_size=batch_size,
               num_workers=num_workers, progress=progress, dist=_Single(), log=log, also=rest)
    return [p[0] for p in places]


class _ConfigView:
    """A model seen with another configuration (same encoder and preprocessing): for `_build`."""

    def __init__(self, model, config):
        self.encoder, self.config, self.preprocessing = model.encoder, config, model.preprocessing


def open_or_build(model, images, cache_dir, split: str, *, device="cpu", batch_size: int = 64, num_workers: int = 0,
                  progress: bool = True, dist=None, log: Callable[[str], None] = print) -> FeatureSet:
    """The FeatureSet of `images` under `model`'s encoder: reused when `cache_dir` already holds it
    (same fingerprint, complete), built otherwise."""
    dist = dist or _Single()
    folder, key, fp = _location(model, images, cache_dir, split)
    try:
        index = read_index(folder)
        reuse = bool(index.get("complete")) and index.get("fingerprint") == fp
    except CacheError:
        reuse = False
    dist.barrier()  # every rank decided before rank 0 may start rewriting the folder
    if reuse:
        if dist.is_main:
            log(f"using cached features {folder}")
    else:
        try:
            _build(model, images, folder, key, fp, device=device, batch_size=batch_size, num_workers=num_workers,
                   progress=progress, dist=dist, log=log)
        except OSError as e:
            raise CacheError(f"{folder}: cannot write the feature cache ({e.strerror or e})") from None
    return FeatureSet(folder, images.references, images.ids)


def model_inputs(batch: torch.Tensor, preprocessing=None) -> torch.Tensor:
    """A training batch as the model takes it: uint8 images (B, 3, H, W) -> float normalised as the
    model's `preprocessing` says; cached float16 annotations (B, L, D) -> float32 (autocast, where
    on, lowers it again)."""
    if batch.dtype == torch.uint8:
        from ..images import normalize

        return normalize(batch, preprocessing)
    return batch.float()


def training_feature_sets(model, train_set, val_set, tc, trainable_encoder: list, device, dist=None,
                          log: Callable[[str], None] = print):
    """(train, val) FeatureSets for `train` with --feature-cache: built on the first run, reused after."""
    if trainable_encoder:
        raise CacheError("--feature-cache needs a frozen encoder: give --pretrained or --encoder-weights PATH "
                         "(without --finetune-encoder), or --freeze-encoder")
    common = dict(device=device, batch_size=tc.batch_size, num_workers=tc.num_workers, progress=tc.progress,
                  dist=dist, log=log)
    return (open_or_build(model, train_set, tc.feature_cache, "train", **common),
            open_or_build(model, val_set, tc.feature_cache, "val", **common))


__all__ = ["FeatureSet", "open_or_build", "cache_key", "fingerprint", "weights_digest", "CacheError", "model_inputs",
           "training_feature_sets"]
