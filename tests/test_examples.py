"""examples/ (issue 26): `caption.py examples/` captions the photos, for the real-photo model; the synthetic
shapes scenes for the demo models live apart in examples/shapes/; examples/README.md names every file."""

from __future__ import annotations

from pathlib import Path

from captioner.images import image_files

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def test_the_examples_folder_captions_photos_only():
    photos = [Path(p).name for p in image_files(EXAMPLES)]   # what caption.py reads for `examples/`
    assert photos == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "grace_hopper.jpg"]
    scenes = [Path(p).name for p in image_files(EXAMPLES / "shapes")]
    assert scenes == ["shapes_1obj.png", "shapes_2obj.png", "shapes_3obj.png"]


def test_examples_readme_names_every_file():
    text = (EXAMPLES / "README.md").read_text()
    for name in image_files(EXAMPLES):
        assert f"`{Path(name).name}`" in text, name
    assert "`shapes/shapes_*.png`" in text
