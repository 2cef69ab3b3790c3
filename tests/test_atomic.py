"""latentquant._atomic: the crash-safe placement helpers shared by rundir, the caches and the downloads."""

from __future__ import annotations

import os
import subprocess
import sys

from latentquant._atomic import fsync_replace, pid_alive, remove_orphans, temp_path
from latentquant.data.download import _clean_stale


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_pid_alive_tells_a_live_process_from_an_exited_one():
    assert pid_alive(os.getpid())
    assert not pid_alive(_dead_pid())


def test_remove_orphans_removes_only_entries_of_dead_writers(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    (tmp_path / f".a.npy.tmp-{dead}").write_bytes(b"partial")
    (tmp_path / f".b.unpack-{dead}").mkdir()
    (tmp_path / f".b.unpack-{dead}" / "x.png").write_bytes(b"png")
    (tmp_path / f".c.npy.tmp-{alive}").write_bytes(b"being written")
    (tmp_path / ".d.npy.tmp-x").write_bytes(b"no pid")
    remove_orphans(tmp_path.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".c.npy.tmp-{alive}", ".d.npy.tmp-x"]


def test_download_clean_stale_touches_only_unpack_folders(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".cars.unpack-{dead}").mkdir()
    (tmp_path / f".cars.npy.tmp-{dead}").write_bytes(b"a cache's temporary: not the downloader's")
    _clean_stale(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f".cars.npy.tmp-{dead}"]


def test_fsync_replace_puts_the_temporary_in_place(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    tmp = temp_path(target)
    assert tmp == tmp_path / f".out.bin.tmp-{os.getpid()}"
    tmp.write_bytes(b"new")
    fsync_replace(tmp, target)
    assert target.read_bytes() == b"new" and not tmp.exists()
