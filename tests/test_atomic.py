"""dequant.atomic: the one atomic writer (files, groups of files, folders)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dequant.atomic import PARTIAL_SUFFIX, atomic_folder, atomic_path, partial_path, write_all, write_text


def test_write_text_replaces_the_file_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "report.md"
    write_text(path, "old\n")
    assert write_text(path, "new\r\n") == path
    assert path.read_bytes() == b"new\r\n" and os.listdir(path.parent) == ["report.md"]
    # mkstemp's 0600 would hide outputs from the rest of a group; the umask decides, as for any other file.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("durable", [False, True])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "last.ckpt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk"), atomic_path(path, durable=durable) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".last.ckpt.") and tmp.name.endswith(PARTIAL_SUFFIX)
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["last.ckpt"]


def test_partial_path_names_an_unwritable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match=f"cannot write {blocker / 'out.png'}: the folder {blocker} cannot be created"):
        partial_path(blocker / "out.png")


def test_write_all_writes_every_file_or_none(tmp_path: Path) -> None:
    seen = []

    def writer(text: str):
        def write(tmp: Path) -> None:
            seen.append(tmp.suffix)  # the target's suffix, for writers that pick a format by it
            tmp.write_text(text)
        return write

    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    assert write_all({a: writer("a"), b: writer("b")}) == [a, b]
    assert a.read_text() == "a" and b.read_text() == "b" and seen == [".png", ".jpg"]

    def broken(tmp: Path) -> None:
        raise ValueError("bad image")

    with pytest.raises(ValueError, match="bad image"):
        write_all({a: writer("new a"), tmp_path / "c.png": broken})
    assert a.read_text() == "a" and sorted(os.listdir(tmp_path)) == ["a.png", "b.jpg"]


def test_atomic_folder_replaces_a_folder_whole(tmp_path: Path) -> None:
    out = tmp_path / "export"
    with atomic_folder(out) as tmp:
        (tmp / "config.json").write_text("{}")
    with pytest.raises(KeyboardInterrupt), atomic_folder(out) as tmp:
        (tmp / "other.json").write_text("{}")
        raise KeyboardInterrupt
    assert os.listdir(out) == ["config.json"] and os.listdir(tmp_path) == ["export"]
    with atomic_folder(out) as tmp:
        (tmp / "new.json").write_text("{}")
    assert os.listdir(out) == ["new.json"] and os.listdir(tmp_path) == ["export"]
