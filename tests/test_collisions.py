"""Two commands writing the same place at once: neither deletes the other's work in progress
(a hostile user's fourth pass on issue 16)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import tiny_config

from seq2seqkit.data import shards
from seq2seqkit.data.shards import is_shards_dir, preprocess
from seq2seqkit.rundir import abandoned_scratch, scratch_dir


def test_a_second_preprocess_into_the_same_out_dir_leaves_the_first_build_alone(tmp_path: Path, monkeypatch):
    """`s2s preprocess CFG OUT` twice at once: the second removed the first's build in progress
    as if it were an abandoned one (the first then failed: '.OUT.xxxx.tmp/...: No such file or
    directory'). Here the second runs to its end while the first is between tokenizers and
    shards; both finish, and OUT is one complete shards directory."""
    cfg, out = tiny_config(tmp_path), tmp_path / "shards"
    write_split, second = shards._write_split, {}

    def second_run_meanwhile(*args, **kwargs):
        if not second:
            second["started"] = True
            second["header"] = preprocess(cfg, out)  # the other process, while this build is in progress
        return write_split(*args, **kwargs)

    monkeypatch.setattr(shards, "_write_split", second_run_meanwhile)
    first = preprocess(cfg, out)
    assert first["splits"]["train"]["pairs"] == second["header"]["splits"]["train"]["pairs"] > 0
    assert is_shards_dir(out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".shards")) == []  # nothing left beside


def test_only_builds_of_dead_processes_count_as_abandoned(tmp_path: Path):
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f".out.{dead.stdout.strip()}.abcd1234.tmp"
    gone.mkdir()
    live = scratch_dir(out, ".tmp")
    assert live.name.startswith(".out.") and live.name.endswith(".tmp")
    other = tmp_path / f".outside.{dead.stdout.strip()}.abcd1234.tmp"
    other.mkdir()
    assert abandoned_scratch(out) == [gone]


def test_a_second_prepare_into_a_directory_being_written_is_refused(tmp_path: Path):
    """Two `s2s prepare` into one directory (say babi --size 1k and --size 10k) both wrote and
    both reported success; interleaved, the manifest of one could describe the files of the
    other. The writer holds the directory's lock; the other is refused, naming it."""
    from seq2seqkit.errors import UserError
    from seq2seqkit.rundir import RunLock
    from seq2seqkit.tasks.prepared import write_splits

    out = tmp_path / "data"
    paths = {"train": out / "train.tsv", "test": out / "test.tsv"}
    assert write_splits(paths, {"size": "1k"}, lambda: {"train": ["a\tb\n"], "test": ["c\td\n"]}) == {"train": 1, "test": 1}
    with RunLock(out):  # another prepare writing now
        try:
            write_splits(paths, {"size": "10k"}, lambda: {"train": ["x\ty\n"] * 2, "test": ["z\tw\n"]})
        except UserError as e:
            assert f"in use by another run (process {os.getpid()})" in str(e)
        else:
            raise AssertionError("written while another prepare held the directory")
    assert paths["train"].read_text() == "a\tb\n"
    assert write_splits(paths, {"size": "10k"}, lambda: {"train": ["x\ty\n"] * 2, "test": ["z\tw\n"]}) == {"train": 2, "test": 1}
