"""Atomic writes: each output is written under a temporary name beside it and renamed over it in one step, so a
reader (or a resumed run) sees the old file or the whole new one, never half of one.

The one place that does this for files, folders and groups of files (no maintained library covers all three:
`atomicwrites` is archived).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

# Temporary names are `.<name>.<random>.partial`: hidden, and recognisable after a kill (callbacks removes stale
# checkpoint ones).
PARTIAL_SUFFIX = ".partial"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def partial_path(path: str | os.PathLike, suffix: str = PARTIAL_SUFFIX) -> Path:
    """A new empty temporary file beside `path` (its folder made if needed), readable like any other output."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as err:
        raise OSError(f"cannot write {path}: the folder {path.parent} cannot be created or written ({err})") from err
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are shared like any other file
    return Path(tmp)


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make a rename durable (POSIX: the directory entry lives in the directory's own data)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename itself is still atomic
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; when the block ends without error it replaces `path`, else it is removed.

    `durable=True` also flushes the data and the rename to disk (checkpoints)."""
    path = Path(path)
    tmp = partial_path(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_folder(path.parent)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8, newlines as given) to `path` atomically; returns the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return Path(path)


def write_all(writers: Mapping[Path, Callable[[Path], object]]) -> list[Path]:
    """Call each `writer(temporary path)`, then rename every file into place: an error leaves none of them.

    The temporary names end in the target's suffix, for writers that pick a format by suffix."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, write in writers.items():
            staged.append((partial_path(path, PARTIAL_SUFFIX + Path(path).suffix), Path(path)))
            write(staged[-1][0])
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return [path for _, path in staged]


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary folder beside `path`; when the block ends without error it replaces `path` (an
    existing folder there is removed first), else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
