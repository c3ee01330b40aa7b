"""The notebook's pictures: shapes scenes with their ground truth, photos read from files or folders
(`images.load_image`, the one loader), captioned with the one beam search (`inference.caption_batches`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..beam import Caption


@dataclass
class Example:
    """One picture to caption: a name, the RGB PIL image, and (shapes only) its ground truth."""

    name: str
    photo: object                                   # PIL.Image.Image, RGB
    objects: tuple = ()                             # shapes: the ShapeObjects, boxes in `photo` pixels
    references: list[str] = field(default_factory=list)

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        return [o.box for o in self.objects]


def repo_root(start=None) -> Path:
    """The checkout holding `captioner/` and `weights/`: `start` (default: the working directory) or the
    nearest parent that does, so the notebook runs from the repository root or from notebooks/."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "captioner" / "__init__.py").is_file() and (folder / "weights").is_dir():
            return folder
    return Path(__file__).resolve().parents[2]


def shapes_examples(count: int = 3, image_size: int = 64, split: str = "test", seed: int = 0,
                    start: int = 0) -> list[Example]:
    """`count` scenes of the held-out shapes split (generated, never seen in training) from scene `start`
    on, picked so that scenes with 1, 2 and 3 objects all appear when `count` allows."""
    from PIL import Image

    from ..data import shapes_seed
    from ..data.shapes import make_scene

    generator_seed = shapes_seed(split, seed)
    scenes = [(i, make_scene(generator_seed, i, image_size)) for i in range(start, start + max(3 * count, 12))]
    first: dict[int, int] = {}                           # object count -> the first scene (position) that has it
    for k, (_, scene) in enumerate(scenes):
        first.setdefault(len(scene.objects), k)
    chosen = [first[n] for n in sorted(first)][:count]
    chosen += [k for k in range(len(scenes)) if k not in chosen][:count - len(chosen)]
    picked = [scenes[k] for k in chosen]
    return [Example(f"shapes {split} #{i}", Image.fromarray(scene.image), scene.objects, list(scene.captions))
            for i, scene in picked]


def photo_examples(paths) -> tuple[list[Example], list[str]]:
    """Read image files (a folder stands for the images in it) with `load_image`.
    Returns (examples, problems): each problem is one line, `<path>: <reason>`."""
    from ..images import ImageError, image_files, load_image

    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    problems: list[str] = []
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            try:
                files.extend(map(Path, image_files(p)))    # caption.py's suffixes, sorted by name
            except ImageError as e:
                problems.append(f"{p}: {e}")
        else:
            files.append(p)
    examples = []
    for f in files:
        try:
            examples.append(Example(f.name, load_image(f)))
        except ImageError as e:
            problems.append(f"{f}: {e}")
    return examples, problems


def caption_examples(model, vocab, examples: list[Example], beam_size: int = 3, batch_size: int = 16,
                     length_penalty: float = 0.0) -> list[Caption]:
    """One beam-search `Caption` per example (its words, alphas, betas, candidates, locations)."""
    from ..inference import batched, caption_batches

    def pixels(batch: list[Example]) -> torch.Tensor:   # (B, 3, S, S), as the model's preprocessing makes them
        return torch.stack([model.preprocessing(e.photo) for e in batch])

    return [caption for _, captions in caption_batches(model, batched(examples, batch_size), vocab, pixels,
                                                        beam_size, length_penalty) for caption in captions]


def describe_model(model, path=None) -> str:
    """One line: what the checkpoint is (attention mechanism, grid, gate, vocabulary)."""
    c = model.config
    kind = {"soft": "soft (deterministic) attention, sec. 4.2", "hard": "hard (stochastic) attention, sec. 4.1",
            "local": "local attention"}.get(c.attention, c.attention)
    gate = "gating scalar beta on" if c.gate else "no gate (beta = 1)"
    where = f"{_shown_path(path)}: " if path is not None else ""
    return (f"{where}{kind}, {c.score} scores over a {c.grid_size}x{c.grid_size} grid of {c.encoder_dim}-d "
            f"annotations ({c.encoder}, {c.image_size}px input), {gate}, {c.vocab_size} words")


def _shown_path(path) -> str:
    """`path` relative to the repository root when it lies inside it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(repo_root()))
    except (ValueError, OSError):
        return str(path)


