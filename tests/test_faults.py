"""Faults of the operating system and of checkpoints are one line and exit 2, never a traceback,
and a run that diverges stops without overwriting its last good checkpoint.

How the faults are made, so that they also work as root (where permissions do not stop writes):
- read-only location: a read-only bind mount of the directory (root), else chmod a-w (other
  users); skipped only where neither is possible;
- full disk: the model directory on a small tmpfs (root: a real ENOSPC), else RLIMIT_FSIZE
  (a per-process file size limit: EFBIG, "File too large", for any user);
- a path under a regular file (ENOTDIR) and an output path that is a directory need nothing.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import seq2seqkit.training as training_module
from seq2seqkit.cli import main
from seq2seqkit.checkpoint import load_checkpoint
from conftest import write_reverse_task

PREFIX = "s2s: error: "
CANNOT_WRITE = ("Read-only file system", "Permission denied")


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(PREFIX) or "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    return lines[0][len(PREFIX):]


def write_config(tmp: Path, out: Path, pairs: int = 120, **training: object) -> Path:
    train = write_reverse_task(tmp / "train", pairs, seed=1)
    dev = write_reverse_task(tmp / "dev", 12, seed=2)
    settings = {"max_steps": 2, "batch_tokens": 60, "lr": 0.01, "checkpoint_every": 1, "log_every": 1,
                "num_threads": 1, "exposure_bias": False, **training}
    text = (f"output_dir: {out}\n"
            f"data:\n  train: {{src: {train[0]}, tgt: {train[1]}}}\n  dev: {{src: {dev[0]}, tgt: {dev[1]}}}\n"
            "tokenizer:\n  src: {kind: word}\n  tgt: {kind: word}\n"
            "model: {family: rnn, embed_dim: 8, hidden_size: 16, dropout: 0.0}\n"
            "evaluation: {metrics: [exact]}\n"
            "training:\n" + "".join(f"  {k}: {'null' if v is None else v}\n" for k, v in settings.items()))
    path = tmp / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny model directory trained for 2 steps (tests copy it before changing it)."""
    tmp = tmp_path_factory.mktemp("trained")
    assert main(["-q", "train", str(write_config(tmp, tmp / "model"))]) == 0
    return tmp / "model"


def copy_model(trained: Path, dest: Path) -> Path:
    shutil.copytree(trained, dest)
    text = (dest / "config.yaml").read_text(encoding="utf-8").replace(str(trained), str(dest))
    (dest / "config.yaml").write_text(text, encoding="utf-8")
    return dest


def _mount(*args: str) -> bool:
    if shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """``directory`` (and everything under it) cannot be written while the block runs."""
    if os.geteuid() != 0:
        mode = directory.stat().st_mode
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(mode)
        return
    if not _mount("--bind", str(directory), str(directory)):
        pytest.skip("running as root and cannot bind-mount: no way to make a read-only directory")
    try:
        if not _mount("-o", "remount,bind,ro", str(directory)):
            pytest.skip("cannot remount read-only")
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


@contextlib.contextmanager
def small_disk(directory: Path, free: int) -> Iterator[str]:
    """Writes into ``directory`` fail once about ``free`` more bytes are written; yields the
    error text to expect. The directory's files are kept (copied onto the small disk and back)."""
    used = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    keep = directory.with_name(directory.name + ".orig")
    if os.geteuid() == 0 and shutil.which("mount"):
        directory.rename(keep)
        directory.mkdir()
        if _mount("-t", "tmpfs", "-o", f"size={used + free + 64 * 1024}", "tmpfs", str(directory)):
            try:
                shutil.copytree(keep, directory, dirs_exist_ok=True)
                yield "No space left on device"
                shutil.copytree(directory, keep, dirs_exist_ok=True)
            finally:
                subprocess.run(["umount", str(directory)], check=True)
                directory.rmdir()
                keep.rename(directory)
            return
        directory.rmdir()
        keep.rename(directory)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)  # Python ignores SIGXFSZ: writes fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (free, hard))
    try:
        yield "File too large"
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


# --- read-only locations -----------------------------------------------------------------

def test_train_into_read_only_output_dir(tmp_path: Path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    cfg = write_config(tmp_path, out)
    with read_only(out):
        assert main(["-q", "train", str(cfg)]) == 2
    msg = one_line(capsys)
    assert msg.startswith(f"{out}/") and msg.endswith(CANNOT_WRITE), msg


def test_train_output_dir_under_a_file(tmp_path: Path, capsys):
    (tmp_path / "notes.txt").write_text("mine\n")
    cfg = write_config(tmp_path, tmp_path / "notes.txt" / "model")
    assert main(["-q", "train", str(cfg)]) == 2
    assert one_line(capsys) == f"{tmp_path / 'notes.txt' / 'model'}: Not a directory (a part of the path is a file)"
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_train_output_dir_that_is_a_file(tmp_path: Path, capsys):
    (tmp_path / "notes.txt").write_text("mine\n")
    assert main(["-q", "train", str(write_config(tmp_path, tmp_path / "notes.txt"))]) == 2
    assert one_line(capsys) == f"{tmp_path / 'notes.txt'}: exists and is not a directory; choose another output_dir"
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_stdout_on_a_full_disk_is_one_line(trained: Path, tmp_path: Path):
    """`s2s translate > /dev/full`: the error when stdout is flushed, and nothing at interpreter exit."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    src = tmp_path / "in.txt"
    src.write_text("a b c\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "seq2seqkit.cli", "translate", "-m", str(trained), "-i", str(src)],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert proc.stderr == "s2s: error: No space left on device\n"


def test_resume_read_only_model_dir(trained: Path, tmp_path: Path, capsys):
    model = copy_model(trained, tmp_path / "model")
    before = (model / "checkpoints" / "last.pt").read_bytes()
    with read_only(model):
        assert main(["-q", "train", "--resume", str(model), "training.max_steps=4"]) == 2
    msg = one_line(capsys)
    assert msg.startswith(f"{model}/") and msg.endswith(CANNOT_WRITE), msg
    assert (model / "checkpoints" / "last.pt").read_bytes() == before


def test_translate_output_read_only_or_a_directory(trained: Path, tmp_path: Path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("a b c\n")
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        assert main(["-q", "translate", "-m", str(trained), "-i", str(src), "-o", str(ro / "out.txt")]) == 2
    msg = one_line(capsys)
    assert msg.startswith(f"{ro / 'out.txt'}: ") and msg.endswith(CANNOT_WRITE), msg
    assert main(["-q", "translate", "-m", str(trained), "-i", str(src), "-o", str(ro)]) == 2
    assert one_line(capsys) == f"{ro}: Is a directory"
    assert list(ro.iterdir()) == []  # no temporary file left behind


@pytest.mark.skipif(not Path("/proc/version").is_file(), reason="needs Linux's /proc")
def test_an_output_in_a_directory_that_takes_no_new_file_says_so(trained: Path, tmp_path: Path, capsys):
    """``-o /proc/version --force`` said "No such file or directory" about a file that exists
    (the temporary beside it cannot be made)."""
    src = tmp_path / "in.txt"
    src.write_text("a b c\n")
    assert main(["-q", "translate", "-m", str(trained), "-i", str(src), "-o", "/proc/version", "--force"]) == 2
    assert one_line(capsys) == ("/proc/version: cannot be written (no new file can be made in /proc, so it is "
                                "not replaced)")


def test_prepare_into_read_only_dir(tmp_path: Path, capsys):
    with read_only(tmp_path):
        assert main(["prepare", "cmudict", str(tmp_path / "data")]) == 2
    msg = one_line(capsys)
    assert msg.startswith(f"{tmp_path / 'data'}") and msg.endswith(CANNOT_WRITE), msg


def test_read_only_cache_says_it_is_the_cache(tmp_path: Path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("S2S_CACHE_DIR", str(cache))
    cfg = write_config(tmp_path, tmp_path / "model")
    with read_only(cache):
        assert main(["prepare", "cmudict"]) == 2
        first = one_line(capsys)
        assert main(["-q", "train", str(cfg), "data.dataset=cmudict", "data.train.src=", "data.train.tgt=",
                     "data.dev.src=", "data.dev.tgt="]) == 2
        second = one_line(capsys)
    for msg in (first, second):
        assert msg.startswith(f"{cache}/datasets") and "the data cache cannot be written (set S2S_CACHE_DIR " in msg, msg


# --- full disk -------------------------------------------------------------------------------

def test_full_disk_keeps_the_previous_checkpoint(trained: Path, tmp_path: Path, capsys):
    model = copy_model(trained, tmp_path / "model")
    last = model / "checkpoints" / "last.pt"
    before = last.read_bytes()
    with small_disk(model, free=len(before) // 2) as reason:
        code = main(["-q", "train", "--resume", str(model), "training.max_steps=6"])
    assert code == 2
    msg = one_line(capsys)
    assert msg.startswith(f"{model}/") and msg.endswith(reason), msg
    assert last.read_bytes() == before  # the previous checkpoint intact
    assert not list(model.rglob("*.tmp"))  # and no half-written temporary left


# --- checkpoints that load but are not what they should be -----------------------------------

def test_resume_with_another_model_shape(trained: Path, tmp_path: Path, capsys):
    model = copy_model(trained, tmp_path / "model")
    assert main(["-q", "train", "--resume", str(model), "model.hidden_size=32", "training.max_steps=4"]) == 2
    msg = one_line(capsys)
    assert msg.startswith(f"{model / 'checkpoints' / 'last.pt'}: encoder.rnn.weight_ih_l0 has shape (48, 8) in the "
                          f"checkpoint but (96, 8) in the model the config describes"), msg


def test_translate_with_a_config_that_no_longer_matches(trained: Path, tmp_path: Path, capsys):
    model = copy_model(trained, tmp_path / "model")
    cfg = model / "config.yaml"
    cfg.write_text(cfg.read_text(encoding="utf-8").replace("family: rnn", "family: attention"), encoding="utf-8")
    assert main(["-q", "translate", "-m", str(model), "-i", str(cfg)]) == 2
    msg = one_line(capsys)
    assert msg.startswith(f"{model / 'checkpoints' / 'best.pt'}: its weights do not fit the model the config "
                          f"describes (missing "), msg
    assert "attention.u.weight" in msg and "model.family" in msg


def test_checkpoint_without_weights_or_garbage_or_weights_only(trained: Path, tmp_path: Path, capsys):
    model = copy_model(trained, tmp_path / "model")
    best = model / "checkpoints" / "best.pt"
    src = tmp_path / "in.txt"
    src.write_text("a b\n")
    torch.save({"step": 3, "note": "hi"}, best)
    assert main(["-q", "translate", "-m", str(model), "-i", str(src)]) == 2
    assert one_line(capsys) == f"{best}: not a model checkpoint: no 'model' weights (it holds step, note)"
    best.write_bytes(b"PK\x03\x04 this is not a checkpoint at all")
    assert main(["-q", "translate", "-m", str(model), "-i", str(src)]) == 2
    msg = one_line(capsys)
    assert msg.startswith(f"{best}: cannot load checkpoint: not a PyTorch checkpoint, or a damaged or truncated one")
    assert "weights_only" not in msg and "trust" not in msg  # no advice to load it unsafely
    last = model / "checkpoints" / "last.pt"
    torch.save({"model": load_checkpoint(last)["model"]}, last)
    assert main(["-q", "train", "--resume", str(model), "training.max_steps=4"]) == 2
    assert one_line(capsys) == (f"{last}: not a training checkpoint: no 'optimizer' state (weights only, "
                                f"e.g. an epoch or averaged checkpoint?)")


def test_damaged_tokenizers_are_one_line(trained: Path, tmp_path: Path, capsys):
    model = copy_model(trained, tmp_path / "model")
    manifest = model / "tokenizers.json"
    manifest.write_text('{"src": ', encoding="utf-8")
    assert main(["-q", "translate", "-m", str(model), "-i", str(manifest)]) == 2
    assert one_line(capsys).startswith(f"{manifest}: damaged (Expecting value")
    manifest.write_text('{"src": {"kind": "word", "vocab": "gone.json"}, "tgt": {"kind": "word"}}', encoding="utf-8")
    assert main(["-q", "translate", "-m", str(model), "-i", str(manifest)]) == 2
    assert one_line(capsys) == f"{model / 'gone.json'}: missing from the model directory (named in tokenizers.json)"


@pytest.mark.parametrize("vocab, says", [
    ("[]", "it must start with <pad>, <unk>, <s>, </s>"),  # built a model with no rows: IndexError traceback
    ("[1, 2, 3]", "expected a JSON list of tokens"),
    ('{"a": 1}', "expected a JSON list of tokens"),
    ('["<pad>", "<unk>", "<s>", "</s>", "a", "a"]', "entry 5 repeats the token 'a'"),
])
def test_an_edited_vocabulary_is_one_line(trained: Path, tmp_path: Path, capsys, vocab, says):
    model = copy_model(trained, tmp_path / "model")
    (model / "src.vocab.json").write_text(vocab, encoding="utf-8")
    src = tmp_path / "in.txt"
    src.write_text("a b\n")
    assert main(["-q", "translate", "-m", str(model), "-i", str(src)]) == 2
    msg = one_line(capsys)
    assert msg.startswith(f"{model / 'src.vocab.json'}: ") and says in msg, msg


@pytest.mark.parametrize("change, says", [
    ("nan", "holds non-finite values (NaN or infinity)"),  # decoded every input to an empty line, exit 0
    ("inf", "holds non-finite values (NaN or infinity)"),
    ("int64", "holds int64 values where the model has float32 ones"),  # cast on loading, decoded to nonsense
])
def test_weights_that_fit_but_are_no_trained_model_are_refused(trained: Path, tmp_path: Path, capsys, change, says):
    model = copy_model(trained, tmp_path / "model")
    src = tmp_path / "in.txt"
    src.write_text("a b\n")
    for name in ("best", "last"):
        path = model / "checkpoints" / f"{name}.pt"
        ckpt = load_checkpoint(path)
        first = next(iter(ckpt["model"]))
        if change == "int64":
            ckpt["model"] = {k: v.to(torch.int64) for k, v in ckpt["model"].items()}
        else:
            ckpt["model"][first] = ckpt["model"][first].clone()
            ckpt["model"][first].view(-1)[0] = float(change)
        torch.save(ckpt, path)
    assert main(["-q", "translate", "-m", str(model), "-i", str(src)]) == 2
    best = model / "checkpoints" / "best.pt"
    assert one_line(capsys).startswith(f"{best}: {first} {says}")
    assert main(["-q", "train", "--resume", str(model), "training.max_steps=4"]) == 2
    assert one_line(capsys).startswith(f"{model / 'checkpoints' / 'last.pt'}: {first} {says}")


def test_a_full_disk_under_a_command_that_writes_a_directory_names_it(trained: Path, tmp_path: Path, capsys):
    """A failed write or close names no file (``OSError.filename`` is None): the command's
    OUT_DIR is named instead (preprocess and export printed a bare 'No space left on device')."""
    disk = tmp_path / "disk"
    disk.mkdir()
    with small_disk(disk, free=4096) as reason:
        code = main(["-q", "preprocess", str(write_config(tmp_path, tmp_path / "unused", pairs=20000)),
                     str(disk / "shards")])
    assert code == 2
    msg = one_line(capsys)
    assert msg.startswith(str(disk / "shards")) and msg.endswith(reason), msg


# --- training that diverges ------------------------------------------------------------------

def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch, capsys):
    calls = {"n": 0}
    real = training_module.token_loss

    def nan_at_step_5(logits, gold, label_smoothing=0.0):
        calls["n"] += 1
        loss = real(logits, gold, label_smoothing)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(training_module, "token_loss", nan_at_step_5)
    out = tmp_path / "model"
    cfg = write_config(tmp_path, out, max_steps=8, checkpoint_every=2, clip_grad_norm=None)
    assert main(["-q", "train", str(cfg)]) == 2
    assert one_line(capsys) == (f"step 5: training diverged, the loss is nan; {out / 'checkpoints' / 'last.pt'} is "
                                f"kept as it was. Try a lower training.lr (now 0.01) or "
                                f"training.clip_grad_norm=1.0 (now off)")
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["progress"]["step"] == 4
    assert all(torch.isfinite(w).all() for w in ckpt["model"].values())


def test_non_finite_weights_are_never_saved(tmp_path: Path, monkeypatch, capsys):
    """A finite loss can still leave non-finite weights (an overflowing update): saving refuses them."""
    real_step = torch.optim.Adam.step
    steps = {"n": 0}

    def poisoned(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        steps["n"] += 1
        if steps["n"] == 4:  # the update of step 4, saved at step 4 (checkpoint_every=2)
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned)
    out = tmp_path / "model"
    assert main(["-q", "train", str(write_config(tmp_path, out, max_steps=8, checkpoint_every=2))]) == 2
    msg = one_line(capsys)
    assert msg.startswith("step 4: training diverged, the weights are no longer finite; "), msg
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["progress"]["step"] == 2
    assert all(torch.isfinite(w).all() for w in ckpt["model"].values())
