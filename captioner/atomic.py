"""Atomic file writes: a crash or kill at any moment leaves the old file or the new one, never half of one.

Every file the package writes for later use (checkpoints, a run's config.json and metrics.jsonl,
the feature cache's index) goes through `write_atomic`: the data goes to a temporary file in the
same folder (`.<name>.<random>.tmp`), is flushed and fsynced, then renamed over the final name, and
the folder is fsynced so the rename itself survives a power cut. `remove_temporaries` deletes what
a kill -9 between the two left behind. `make_folder` creates the folder a command writes into, or
says in one line why it cannot. `folder_lock` keeps a folder to one process at a time (a training
run's folder).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(f)` on a temporary binary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def write_text_atomic(path, text: str) -> None:
    """`write_atomic` for UTF-8 text."""
    data = text.encode("utf-8")
    write_atomic(path, lambda f: f.write(data))


def remove_temporaries(folder) -> None:
    """Delete the `.<name>.*.tmp` files a kill -9 during `write_atomic` left in `folder`."""
    for tmp in Path(folder).glob(".*.tmp"):
        try:
            tmp.unlink()
        except OSError:
            pass


def make_folder(path, not_a_folder: str, cannot_create: str) -> str | None:
    """Create folder `path` and its parents; None when it is there, else the caller's line for why not:
    `not_a_folder` when a file has its name, `cannot_create` with the system's reason in brackets."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return not_a_folder
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"{cannot_create} ({e.strerror or e})"
    return None


LOCK_NAME = ".lock"


class FolderInUse(Exception):
    """Another process holds the folder's lock (`folder_lock`)."""


@contextlib.contextmanager
def folder_lock(folder):
    """Hold an exclusive lock on `folder` (flock on `folder/.lock`) for the body's life; raises
    FolderInUse at once, without waiting, when another process (or another open of the lock in this
    one) holds it. The operating system drops the lock when its holder exits, crashes or is killed,
    so a stale `.lock` file left by a kill -9 locks nothing. The file is removed on release, so a
    folder holds nothing of it once the body is done; a process that locked a file someone has
    removed in between tries again with the new one (flock locks the open file, not the name)."""
    import fcntl

    path = Path(folder) / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUse(str(folder)) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # its holder removed it on release: lock the next one
            same = False
        if same:
            break
        os.close(fd)
    try:
        with contextlib.suppress(OSError):  # for a person wondering who holds it
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # still locked, so no other process can be holding this file
        os.close(fd)


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for a moment, for every thread)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022
