"""bench/speed/gpu.py's arithmetic (the rest of it is measurement, run by hand: BENCHMARKS)."""

from __future__ import annotations

from bench.speed.gpu import EPOCH_CAPTIONS, epoch_rows, markdown


def test_an_epoch_takes_its_captions_over_the_fastest_training_rate_measured():
    rows = epoch_rows({"batch 256, fp32": 7464.0, "batch 256, bf16": 6303.0, "batch 64, fp32": 2000.0})
    assert EPOCH_CAPTIONS == {"Flickr8k": 30_000, "COCO": 414_000}
    (flickr, setting, figure), (coco, _, coco_figure) = rows
    assert "Flickr8k" in flickr and "30,000" in flickr and setting == "at batch 256, fp32"
    assert figure == "4.0 s (0.07 min)"                                   # 30,000 / 7,464
    assert coco_figure == "55.5 s (0.92 min)"                             # 414,000 / 7,464


def test_the_table_is_markdown_under_its_header_lines():
    table = markdown(["Device: X; torch 2; date D"], [("a", "b", "c")]).splitlines()
    assert table == ["Device: X; torch 2; date D", "", "| measurement | setting | figure |", "| --- | --- | --- |",
                     "| a | b | c |"]
