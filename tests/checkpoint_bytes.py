"""Where a torch.save checkpoint keeps its tensors' bytes: for the corrupted-checkpoint tests
(tests/test_hostile_files.py) and bench/reliability/hostile.py."""

from __future__ import annotations

import zipfile
from pathlib import Path


def tensor_regions(path: Path) -> list[tuple[int, int]]:
    """(start, end) byte offsets of every tensor's data inside a torch.save zip archive."""
    data = path.read_bytes()
    regions = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if "/data/" not in info.filename or info.filename.endswith(".pkl"):
                continue
            assert info.compress_type == zipfile.ZIP_STORED
            # local header: 30 bytes, then the name and the extra field (torch's alignment padding)
            name_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
            extra_len = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
            start = info.header_offset + 30 + name_len + extra_len
            regions.append((start, start + info.compress_size))
    return regions
