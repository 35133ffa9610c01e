"""Nothing a user owns is deleted or overwritten by surprise, and runs cannot collide
(seq2seqkit/rundir.py): model-directory marks, the run lock, refusals of demo/export/average."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seq2seqkit.checkpoint import load_checkpoint, save_checkpoint
from seq2seqkit.cli import main
from seq2seqkit.config import dump_config
from seq2seqkit.errors import UserError
from seq2seqkit.rundir import LOCK, MARKER, MODEL, RunLock, kind_of, remove_model_dir
from seq2seqkit.training import Trainer, load_for_resume

from conftest import tiny_config, tiny_model


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("s2s: error: ") and err.count("\n") == 1, err
    return err


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def trained(tmp_path) -> Path:
    """A tiny RNN run (3 updates) in tmp_path/model."""
    cfg = tiny_config(tmp_path, max_steps=3, num_threads=1)
    Trainer(cfg).train()
    return Path(cfg.output_dir)


# ------------------------------------------------------------------- what is a model directory
def test_a_run_marks_its_directory_and_earlier_versions_directories_count_too(trained, tmp_path):
    assert (trained / MARKER).is_file() and kind_of(trained) == MODEL
    legacy = tmp_path / "legacy"  # as written before the marker existed
    (legacy / "checkpoints").mkdir(parents=True)
    (legacy / "config.yaml").write_text("{}")
    (legacy / "tokenizers.json").write_text("{}")
    assert kind_of(legacy) == MODEL
    (legacy / "checkpoints").rmdir()
    assert kind_of(legacy) is None
    assert kind_of(tmp_path / "train") is None  # the reverse task's data folder


def test_demo_retrain_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("years of work")
    assert main(["demo", "--retrain", "--output-dir", str(thesis)]) == 2
    assert "not a model directory written by seq2seq-kit; will not delete it" in one_line_error(capsys)
    assert (thesis / "chapter1.tex").read_text() == "years of work"
    assert sorted(p.name for p in thesis.iterdir()) == ["chapter1.tex"]  # no lock or marker left in it

    # without --retrain the demo would train into it: refused as well, before any work
    assert main(["demo", "--output-dir", str(thesis)]) == 2
    assert "is not empty and is not a seq2seq-kit model directory" in one_line_error(capsys)
    assert sorted(p.name for p in thesis.iterdir()) == ["chapter1.tex"]


def test_demo_retrain_refuses_a_model_directory_holding_a_users_file(trained, capsys):
    (trained / "notes.txt").write_text("mine")
    (trained / "checkpoints" / "keep.bin").write_bytes(b"mine too")
    assert main(["demo", "--retrain", "--output-dir", str(trained)]) == 2
    err = one_line_error(capsys)
    assert "holds files seq2seq-kit did not write (checkpoints/keep.bin, notes.txt)" in err
    assert (trained / "notes.txt").read_text() == "mine"
    (trained / "notes.txt").unlink()
    (trained / "checkpoints" / "keep.bin").unlink()
    (trained / "checkpoints" / "averaged.pt").write_bytes(b"")  # `s2s average` output is ours
    remove_model_dir(trained)
    assert not trained.exists()


def test_demo_retrain_refuses_a_directory_in_use_and_a_symlink(trained, tmp_path, capsys):
    with RunLock(trained):
        assert main(["demo", "--retrain", "--output-dir", str(trained)]) == 2
        assert f"in use by another run (process {os.getpid()})" in one_line_error(capsys)
    assert (trained / "checkpoints" / "last.pt").is_file()
    link = tmp_path / "link"
    link.symlink_to(trained)
    assert main(["demo", "--retrain", "--output-dir", str(link)]) == 2
    assert "symbolic link" in one_line_error(capsys)
    assert (trained / "checkpoints" / "last.pt").is_file()


def test_demo_retrain_deletes_only_a_demo_model(trained, capsys):
    """A model directory the toolkit wrote for another config (days of a user's training) is not
    an earlier demo model: --retrain deleted it all the same."""
    before = snapshot(trained)
    assert main(["demo", "--retrain", "--output-dir", str(trained)]) == 2
    assert "holds the model 'model', not a 'g2p-quick' model; will not delete it" in one_line_error(capsys)
    assert snapshot(trained) == before
    remove_model_dir(trained, name="model")  # what --retrain does to a demo model
    assert not trained.exists()


def test_a_new_run_refuses_a_non_empty_folder_and_a_file(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=1)
    out = Path(cfg.output_dir)
    out.mkdir()
    (out / "config.yaml").write_text("my own config")
    with pytest.raises(UserError, match="is not empty and is not a seq2seq-kit model directory"):
        Trainer(cfg)
    assert (out / "config.yaml").read_text() == "my own config"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]
    (out / "config.yaml").unlink()
    out.rmdir()
    out.write_text("a file")
    with pytest.raises(UserError, match="exists and is not a directory"):
        Trainer(cfg)


def test_resume_refuses_a_folder_that_only_has_a_config_and_writes_nothing_into_it(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.yaml").write_text(dump_config(tiny_config(tmp_path)))
    assert main(["train", "--resume", str(folder)]) == 2
    assert "not a seq2seq-kit model directory (nothing to resume)" in one_line_error(capsys)
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml"]


def test_translate_output_is_neither_the_input_nor_a_file_of_a_model(trained, tmp_path, capsys):
    words = tmp_path / "words.txt"
    words.write_text("a b\n")
    assert main(["translate", "-m", str(trained), "-i", str(words), "-o", str(words)]) == 2
    assert "is the input file (-i)" in one_line_error(capsys)
    assert words.read_text() == "a b\n"
    best = trained / "checkpoints" / "best.pt"
    before = best.read_bytes()
    for target in (best, trained / "config.yaml", trained / "checkpoints" / "new.pt"):
        assert main(["translate", "-m", str(trained), "-i", str(words), "-o", str(target)]) == 2
        assert f"is one of the files of the model directory {trained}" in one_line_error(capsys)
    assert best.read_bytes() == before
    assert main(["translate", "-m", str(trained), "-i", str(words), "-o", str(trained / "out.txt")]) == 0
    assert len((trained / "out.txt").read_text().splitlines()) == 1


def test_translate_replaces_an_existing_output_only_with_force(trained, tmp_path, capsys):
    words, out, empty = tmp_path / "words.txt", tmp_path / "notes.txt", tmp_path / "empty.txt"
    words.write_text("a b\n")
    out.write_text("my notes\n")
    empty.touch()
    assert main(["translate", "-m", str(trained), "-i", str(words), "-o", str(out)]) == 2
    assert one_line_error(capsys).strip() == f"s2s: error: -o {out}: exists and is not empty; will not replace it (--force replaces it)"
    assert out.read_text() == "my notes\n"
    assert main(["-q", "translate", "-m", str(trained), "-i", str(words), "-o", str(out), "--force"]) == 0
    assert main(["-q", "translate", "-m", str(trained), "-i", str(words), "-o", str(empty)]) == 0
    assert len(out.read_text().splitlines()) == len(empty.read_text().splitlines()) == 1


def test_an_output_file_a_killed_run_left_half_written_is_removed_by_the_next_run_to_that_output(trained, tmp_path):
    """A SIGKILLed ``s2s generate -o out.txt`` left ``.out.txt.XXXXXXXX.tmp`` in the user's folder,
    and every later run to that output kept it. The writer holds a lock on its temporary while it
    writes: the next run removes the unlocked ones (not one still being written, not a young
    one that its writer may not have locked yet, not other files)."""
    out, words = tmp_path / "out.txt", tmp_path / "words.txt"
    words.write_text("a b\n")
    writer = subprocess.Popen([sys.executable, "-c",  # writes out.txt through atomic_open and waits
                               "import sys, time\nfrom seq2seqkit.checkpoint import atomic_open\n"
                               "with atomic_open(sys.argv[1]) as f:\n    f.write('half'); f.flush(); print(flush=True); "
                               "time.sleep(600)\n", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        writer.stdout.readline()
        [busy] = tmp_path.glob(".out.txt.*.tmp")
        old = time.time() - 3600
        os.utime(busy, (old, old))
        young, other = tmp_path / ".out.txt.abcdefgh.tmp", tmp_path / ".notes.txt.abcdefgh.tmp"
        young.write_text("x")
        other.write_text("y")
        os.utime(other, (old, old))
        assert main(["-q", "translate", "-m", str(trained), "-i", str(words), "-o", str(out)]) == 0
        assert busy.exists() and young.exists() and other.exists()  # a write under way, a young file, another's
    finally:
        writer.kill()
        writer.wait()
    os.utime(young, (old, old))
    assert main(["-q", "translate", "-m", str(trained), "-i", str(words), "-o", str(out), "--force"]) == 0
    assert not busy.exists() and not young.exists() and other.read_text() == "y"
    assert len(out.read_text().splitlines()) == 1


def test_prepare_never_replaces_files_it_did_not_write(tmp_path, capsys):
    (tmp_path / "train.tsv").write_text("my own data\n")
    assert main(["prepare", "cmudict", str(tmp_path)]) == 2
    assert "train.tsv: exists and was not written by 's2s prepare'" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.tsv"]
    assert (tmp_path / "train.tsv").read_text() == "my own data\n"


# -------------------------------------------------------------------------------------- export
def fake_model_dir(path: Path) -> Path:
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.yaml").write_text("model: {}\n")
    (path / "tokenizers.json").write_text("{}")
    save_checkpoint({"model": {"w": torch.ones(2)}}, path / "checkpoints" / "best.pt")
    return path


@pytest.mark.parametrize("where", ["same", "inside", "around", "symlink"])
def test_export_refuses_a_destination_that_is_inside_or_around_the_source(tmp_path, capsys, where):
    pytest.importorskip("ctranslate2")
    src = fake_model_dir(tmp_path / "runs" / "model")
    dst = {"same": src, "inside": src / "ct2", "around": tmp_path / "runs", "symlink": tmp_path / "link"}[where]
    if where == "symlink":
        dst.symlink_to(src)
    before = snapshot(src)
    assert main(["export", "--format", "ctranslate2", str(src), str(dst), "--force"]) == 2
    err = one_line_error(capsys)
    assert "the model directory being exported" in err and "choose an OUT_DIR outside it" in err
    assert snapshot(src) == before


def test_export_force_replaces_only_an_earlier_export(tmp_path, capsys):
    pytest.importorskip("ctranslate2")
    cfg = tiny_config(tmp_path, max_steps=2, num_threads=1)
    cfg.model = tiny_model("transformer", embed_dim=16, heads=2, ff_dim=32, encoder_layers=1, decoder_layers=1)
    Trainer(cfg).train()
    src, dst = cfg.output_dir, tmp_path / "ct2"
    export = ["-q", "export", "--format", "ctranslate2", src, str(dst), "--checkpoint", "last"]
    assert main(export) == 0
    assert kind_of(dst) == "ctranslate2"
    (dst / "model.bin").write_bytes(b"old")
    assert main(export + ["--force"]) == 0  # our own earlier export: replaced
    assert (dst / "model.bin").read_bytes() != b"old" and kind_of(dst) == "ctranslate2"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ct2")] == []  # no scratch left
    capsys.readouterr()
    assert main(["-q", "export", "--format", "ctranslate2", str(dst), str(tmp_path / "again")]) == 2  # an export's export
    assert one_line_error(capsys).strip() == (f"s2s: error: {dst}: is already a CTranslate2 export (it has no "
                                              f"checkpoints to convert); export the model directory it was made from")
    assert not (tmp_path / "again").exists()
    # an export killed mid-way left its scratch; a running one's is kept; look-alikes of users' are not ours
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = [tmp_path / f".ct2.{dead.stdout.strip()}.abcd1234.tmp", tmp_path / f".ct2.{dead.stdout.strip()}.abcd1234.old"]
    live, other = tmp_path / f".ct2.{os.getpid()}.efgh5678.tmp", tmp_path / f".ct2.{dead.stdout.strip()}.notmine"
    for d in (*stale, live, other):
        d.mkdir()
        (d / "model.bin").write_bytes(b"partial")
    assert main(export + ["--force"]) == 0
    assert [d.exists() for d in (*stale, live, other)] == [False, False, True, True]
    live.joinpath("model.bin").unlink()
    live.rmdir()

    (dst / "results.txt").write_text("mine")
    assert main(export + ["--force"]) == 2
    assert "holds files seq2seq-kit did not write (results.txt); will not replace it" in one_line_error(capsys)
    assert (dst / "results.txt").read_text() == "mine"

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"someone else's")
    assert main(export[:-3] + [str(folder), "--force"]) == 2
    assert "not a CTranslate2 export written by seq2seq-kit" in one_line_error(capsys)
    assert (folder / "model.bin").read_bytes() == b"someone else's"


# ------------------------------------------------------------------------------------- average
@pytest.mark.parametrize("name", ["../x", "/tmp/x", "a/b", "..", "", "epoch-3", "last"])
def test_average_output_is_a_plain_name(tmp_path, capsys, name):
    model = fake_model_dir(tmp_path / "model")
    for e in (1, 2):
        save_checkpoint({"model": {"w": torch.full((2,), float(e))}}, model / "checkpoints" / f"epoch-{e}.pt")
    before = snapshot(tmp_path)
    assert main(["average", str(model), "--last", "2", "--output", name]) == 2
    err = one_line_error(capsys)
    assert "not a path" in err or "would overwrite a training checkpoint" in err
    assert snapshot(tmp_path) == before


def test_average_overwrites_its_own_output_but_not_a_users_file(tmp_path, capsys):
    model = fake_model_dir(tmp_path / "model")
    for e in (1, 2):
        save_checkpoint({"model": {"w": torch.full((2,), float(e))}}, model / "checkpoints" / f"epoch-{e}.pt")
    mine = model / "checkpoints" / "mine.pt"
    save_checkpoint({"model": {"w": torch.zeros(2)}}, mine)
    assert main(["average", str(model), "--last", "2", "--output", "mine"]) == 2
    assert "exists and is not an average written by 's2s average'" in one_line_error(capsys)
    assert torch.equal(load_checkpoint(mine)["model"]["w"], torch.zeros(2))
    assert main(["average", str(model), "--last", "2"]) == 0
    assert main(["average", str(model), "--last", "1"]) == 0  # replaces its own earlier average
    assert load_checkpoint(model / "checkpoints" / "averaged.pt")["averaged"] == ["epoch-2.pt"]
    with RunLock(model):  # not while a run holds the directory
        assert main(["average", str(model), "--last", "2"]) == 2
        assert f"(process {os.getpid()})" in one_line_error(capsys)


# ------------------------------------------------------------------- stale temporaries, lock
def test_the_next_run_removes_stale_temporaries_it_owns_and_nothing_else(trained, caplog):
    ckpt = trained / "checkpoints"
    stale = [ckpt / ".last.pt.k2j4x_9a.tmp", ckpt / ".epoch-4.pt.abcdefgh.tmp", trained / ".train_log.jsonl.a1b2c3d4.tmp"]
    kept = [trained / ".thesis.tex.abcdefgh.tmp", trained / "notes.tmp", ckpt / ".notes.txt.abcdefgh.tmp",
            ckpt / ".last.pt.tmp", trained / ".config.yaml.TOOLONG123.tmp"]
    for i, p in enumerate(stale + kept):
        p.write_bytes(b"x" * (1000 * (i + 1)))
    with caplog.at_level(logging.INFO, logger="seq2seqkit"):
        Trainer(load_for_resume(trained, ["training.max_steps=4"]), resume=True).train()
    assert [p for p in stale if p.exists()] == []
    assert all(p.read_bytes() == b"x" * (1000 * (i + 1 + len(stale))) for i, p in enumerate(kept))
    assert "removed 3 stale temporary files (6000 bytes)" in caplog.text
    assert load_checkpoint(ckpt / "last.pt")["progress"]["step"] == 4


def test_the_lock_is_held_from_set_up_to_the_end_of_training_and_never_leaks(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=2, num_threads=1)
    trainer = Trainer(cfg)  # set up now, trained later (the Python API allows it)
    with pytest.raises(UserError, match=rf"in use by another run \(process {os.getpid()}\)"):
        Trainer(cfg)
    trainer.train()
    assert (Path(cfg.output_dir) / LOCK).read_text() == ""  # released: no pid left in it
    with RunLock(cfg.output_dir):
        pass

    crashing = Trainer(tiny_config(tmp_path / "crash", max_steps=2, num_threads=1))

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    crashing.train_step = boom
    with pytest.raises(RuntimeError, match="boom"):
        crashing.train()  # an error inside training (the Trainer itself stays alive here) ...
    with RunLock(crashing.out):  # ... releases the lock too
        pass

    bad = tiny_config(tmp_path / "bad")
    bad.data.dev.src = str(tmp_path / "missing.txt")
    with pytest.raises(UserError) as failure:
        Trainer(bad)  # fails during set-up, after taking the lock
    assert failure.tb is not None  # the traceback keeps the half-built Trainer alive (as in a notebook) ...
    with RunLock(bad.output_dir):  # ... but it gave the lock back
        pass


def test_a_second_run_and_a_resume_are_refused_while_a_run_trains_and_a_killed_run_leaves_no_lock(tmp_path, capsys):
    cfg = tiny_config(tmp_path, max_steps=1_000_000, epochs=1000, num_threads=1, checkpoint_every=5)
    cfg.data.dev = type(cfg.data.dev)()  # no validation: just updates
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(dump_config(cfg))
    out = Path(cfg.output_dir)
    log_file = (tmp_path / "first.log").open("w")
    first = subprocess.Popen([sys.executable, "-m", "seq2seqkit.cli", "train", str(cfg_file)],
                             stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300  # a guard against a hang, not a measurement
        while not (out / "checkpoints" / "last.pt").exists():
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "the first run wrote no checkpoint"
            time.sleep(0.1)
        assert (out / LOCK).read_text().strip() == str(first.pid)

        assert main(["train", str(cfg_file)]) == 2
        err = one_line_error(capsys)
        assert f"{out}: in use by another run (process {first.pid})" in err
        assert main(["train", "--resume", str(out)]) == 2
        assert f"{out}: in use by another run (process {first.pid})" in one_line_error(capsys)
        assert first.poll() is None  # undisturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        log_file.close()
    assert (out / LOCK).read_text().strip() == str(first.pid)  # the dead pid is still written there ...
    step = load_checkpoint(out / "checkpoints" / "last.pt")["progress"]["step"]
    assert main(["-q", "train", "--resume", str(out), f"training.max_steps={step + 2}"]) == 0  # ... but no lock
    assert load_checkpoint(out / "checkpoints" / "last.pt")["progress"]["step"] == step + 2


def test_generate_refuses_what_training_refuses(trained, tmp_path, capsys):
    """A control character where text is expected is one FILE:LINE error in generate, as in training."""
    text, jsonl = tmp_path / "in.txt", tmp_path / "in.jsonl"
    text.write_bytes(b"a b\nc\x00d\n")
    jsonl.write_text('{"src": "a b"}\n{"src": "c\\u001bd"}\n')
    assert main(["translate", "-m", str(trained), "-i", str(text), "-o", str(tmp_path / "a.txt")]) == 2
    assert one_line_error(capsys).startswith(f"s2s: error: {text}:2: control character U+0000 (NUL), where text is expected")
    assert main(["generate", "-m", str(trained), "-i", str(jsonl), "-o", str(tmp_path / "b.txt")]) == 2
    assert one_line_error(capsys).startswith(f"s2s: error: {jsonl}:2: control character U+001B (escape)")
    assert not (tmp_path / "a.txt").exists() and not (tmp_path / "b.txt").exists()


def _fifo_feeding(path: Path, data: bytes) -> "threading.Thread":
    """A FIFO at ``path`` and a thread that writes ``data`` into it once, as a shell's
    ``<(command)`` or ``mkfifo`` pipeline gives its bytes once."""
    import threading

    os.mkfifo(path)

    def feed() -> None:
        with open(path, "wb") as f:
            f.write(data)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread


def test_generate_writes_into_a_device_or_pipe_in_place_and_through_a_symlink(trained, tmp_path, capsys):
    """-o a FIFO (as /dev/null or /dev/stdout) is written into, never renamed over: the node stays.
    A symlink is written through; the link stays a link."""
    import stat
    import threading

    words = tmp_path / "words.txt"
    words.write_text("a b\nb a\n")
    fifo, got = tmp_path / "out.fifo", []
    os.mkfifo(fifo)
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    assert main(["-q", "generate", "-m", str(trained), "-i", str(words), "-o", str(fifo)]) == 0
    reader.join(30)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and len(got[0].splitlines()) == 2
    target, link = tmp_path / "real.txt", tmp_path / "link.txt"
    link.symlink_to(target)
    assert main(["-q", "generate", "-m", str(trained), "-i", str(words), "-o", str(link)]) == 0
    assert link.is_symlink() and len(target.read_text().splitlines()) == 2
    assert main(["-q", "generate", "-m", str(trained), "-i", str(words), "-o", str(link)]) == 2  # now not empty
    assert "exists and is not empty" in one_line_error(capsys)


def test_generate_reads_a_pipe_once(trained, tmp_path):
    """-i a FIFO: the gzip check peeks instead of opening the file twice (which waited forever
    for a second writer)."""
    fifo = tmp_path / "in.fifo"
    feeder = _fifo_feeding(fifo, b"a b\nb a\na\n")
    out = tmp_path / "out.txt"
    proc = subprocess.run([sys.executable, "-m", "seq2seqkit.cli", "-q", "generate", "-m", str(trained), "-i", str(fifo),
                           "-o", str(out)], capture_output=True, text=True, timeout=120)
    feeder.join(5)
    assert proc.returncode == 0, proc.stderr
    assert len(out.read_text().splitlines()) == 3


def test_training_refuses_a_pipe_that_it_would_have_to_read_twice_and_a_directory(tmp_path, capsys):
    cfg = tiny_config(tmp_path, max_steps=1, num_threads=1)
    fifo = tmp_path / "train.fifo"
    os.mkfifo(fifo)  # nobody writes: a reader that opened it would wait forever
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    proc = subprocess.run([sys.executable, "-m", "seq2seqkit.cli", "train", str(path), f"data.train.src={fifo}",
                           "data.cache=false", f"output_dir={tmp_path / 'r'}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"s2s: error: {fifo}: is not a regular file (a pipe or a device); training reads it more")
    folder = tmp_path / "folder"
    folder.mkdir()
    assert main(["train", str(path), f"data.train.src={folder}", "data.cache=false", f"output_dir={tmp_path / 'r2'}"]) == 2
    assert one_line_error(capsys).strip() == f"s2s: error: {folder}: is a directory, not a file"


def test_a_line_without_end_is_refused_at_the_limit_instead_of_filling_memory(tmp_path, monkeypatch, capsys):
    from seq2seqkit.data import corpus

    monkeypatch.setattr(corpus, "MAX_LINE_BYTES", 1000)
    ok, long = tmp_path / "ok.txt", tmp_path / "long.txt"
    ok.write_bytes(b"a\n" + b"x" * 1000 + b"\nb")  # exactly the limit, and a last line without a break
    long.write_bytes(b"a\nb\n" + b"y" * 1001)
    assert [len(t) for _, t in corpus.read_lines(ok)] == [1, 1000, 1]
    assert main(["check-data", str(long), str(long)]) == 2
    assert one_line_error(capsys).startswith(f"s2s: error: {long}:3: a line of over 1,000 bytes without a line break")
