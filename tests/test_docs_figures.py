"""What the README says of the shipped models equals what BENCHMARKS.md measured (issue 26): the real-photo
model's Flickr8k test scores, the paper's row it is compared with, its training time, the checkpoints'
sizes, the shapes demo's training times; and no README command writes into weights/."""

from __future__ import annotations

import re
from pathlib import Path

from test_readme import readme_commands

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BENCHMARKS = (ROOT / "BENCHMARKS.md").read_text()
COLUMNS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def benchmarks_row(starts: str) -> dict[str, float]:
    """A row of BENCHMARKS' Flickr8k table against the paper (percent), by the start of its first cell."""
    line = next(line for line in BENCHMARKS.splitlines() if line.startswith(f"| {starts}"))
    cells = [cell.strip().strip("*") for cell in line.strip("|").split("|")[1:]]
    return {name: float(cell) for name, cell in zip(COLUMNS, cells, strict=True) if cell}


def test_the_readme_states_the_shipped_models_scores_as_measured():
    ours = benchmarks_row("**ours, `weights/flickr8k_soft.pt`**")
    paper = benchmarks_row("Xu et al. 2015, soft attention")
    match = re.search(r"BLEU-4 \*\*([0-9.]+)\*\*, METEOR \*\*([0-9.]+)\*\* and CIDEr \*\*([0-9.]+)\*\* \(beam 3\)",
                      README)
    assert match, "the README's opening states BLEU-4, METEOR and CIDEr"
    stated = dict(zip(("BLEU-4", "METEOR", "CIDEr"), map(float, match.groups()), strict=True))
    for name, value in stated.items():
        assert value == round(ours[name] / 100, 3), (name, value, ours[name])
    soft = re.search(r"paper's soft-attention row \(([0-9.]+) and ([0-9.]+)\) is met", README)
    assert soft and (float(soft.group(1)), float(soft.group(2))) == (
        round(paper["BLEU-4"] / 100, 3), round(paper["METEOR"] / 100, 3))
    assert ours["BLEU-4"] >= paper["BLEU-4"] and ours["METEOR"] >= paper["METEOR"]   # "is met"


def test_training_times_and_sizes_are_benchmarks_and_the_files():
    minutes = re.search(r"\*\*(\d+) min\*\* \([\d,]+ s `elapsed_s`[^|]*\| two torch threads", BENCHMARKS)
    assert minutes and f"{minutes.group(1)} minutes of decoder training" in README
    for shapes_time in ("7 min 11 s", "13 min 40 s"):
        assert shapes_time in README and shapes_time in BENCHMARKS
    real = re.search(r"`flickr8k_soft.pt` \([^)]*, (\d+) MB\)", README)
    assert real and int(real.group(1)) == round((ROOT / "weights" / "flickr8k_soft.pt").stat().st_size / 1e6)
    demo = re.search(r"each about (\d+) MB", README)
    for name in ("shapes_soft.pt", "shapes_hard.pt"):
        assert demo and int(demo.group(1)) == round((ROOT / "weights" / name).stat().st_size / 1e6)


def test_no_readme_command_writes_into_the_shipped_weights():
    for command in readme_commands():
        for part in command.split(" && "):
            words = part.split()
            if words and words[0] in ("cp", "mv", "ln"):
                assert not words[-1].startswith("weights"), part
            assert not re.search(r"--out-dir\s+weights\b", part), part
