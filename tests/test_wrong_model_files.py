"""Files of a model directory that load but are wrong (a hostile user's fourth pass on issue 16):
a checkpoint records the tokenizers its ids belong to, so loading it beside other vocabulary
files (replaced, edited, or from another run of the same size) is one line, not wrong outputs;
a damaged or odd train log is resumed from, or refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import tiny_config

from seq2seqkit.checkpoint import load_checkpoint, write_average
from seq2seqkit.cli import main
from seq2seqkit.training import Trainer
from seq2seqkit.translate import Translator


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("stamp")
    cfg = tiny_config(tmp, max_steps=30, validate_every=15, checkpoint_every=15, num_threads=1,
                      keep_epoch_checkpoints=2)
    Trainer(cfg).train()
    return Path(cfg.output_dir)


def swapped_copy(trained: Path, tmp_path: Path, side: str) -> Path:
    """The model directory with two entries of a vocabulary swapped: same size, other ids."""
    model = tmp_path / "model"
    shutil.copytree(trained, model)
    vocab = model / f"{side}.vocab.json"
    itos = json.loads(vocab.read_text(encoding="utf-8"))
    itos[5], itos[6] = itos[6], itos[5]
    vocab.write_text(json.dumps(itos), encoding="utf-8")
    return model


def test_checkpoints_record_their_tokenizers(trained):
    for name in ("best", "last"):
        assert set(load_checkpoint(trained / "checkpoints" / f"{name}.pt")["tokenizers"]) == {"src", "tgt"}
    assert Translator.load(trained).translate(["a b c"])  # the directory's own tokenizers: loads


@pytest.mark.parametrize("side", ["src", "tgt"])
def test_other_vocabulary_files_are_refused_when_decoding(trained, tmp_path, capsys, side):
    model = swapped_copy(trained, tmp_path, side)
    (tmp_path / "in.txt").write_text("a b c\n", encoding="utf-8")
    assert main(["generate", "-m", str(model), "-i", str(tmp_path / "in.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"was trained with another {side} tokenizer than the model directory's" in err


def test_other_vocabulary_files_are_refused_on_resume(trained, tmp_path, capsys):
    model = swapped_copy(trained, tmp_path, "tgt")
    assert main(["train", "--resume", str(model), "training.max_steps=40"]) == 2
    err = capsys.readouterr().err
    assert "last.pt: was trained with another tgt tokenizer" in err.splitlines()[-1]


def test_an_average_keeps_the_stamp(trained, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained, model)
    out, chosen = write_average(model, 1)
    assert [p.name for p in chosen] == ["epoch-1.pt"]
    assert load_checkpoint(out)["tokenizers"] == load_checkpoint(model / "checkpoints" / "best.pt")["tokenizers"]
    vocab = model / "tgt.vocab.json"
    itos = json.loads(vocab.read_text(encoding="utf-8"))
    vocab.write_text(json.dumps(itos[:5] + itos[6:7] + itos[5:6] + itos[7:]), encoding="utf-8")
    with pytest.raises(Exception, match="another tgt tokenizer"):
        Translator.load(model, checkpoint="averaged")


def test_resume_reads_a_damaged_or_odd_train_log_in_one_line_or_not_at_all(trained, tmp_path, capsys):
    """Resuming keeps the log's entries up to the checkpoint: a line that is JSON but no entry
    ('5', a list, a non-numeric step) was an AttributeError traceback; a log that is a link to
    /dev/zero was read without end (the OOM killer)."""
    model = tmp_path / "model"
    shutil.copytree(trained, model)
    log = model / "train_log.jsonl"
    entries = log.read_text(encoding="utf-8")
    log.write_text(entries + '5\n[1]\n{"step": "x"}\n{"step": 1, "note": "kept"}\n{"step": 10**9}\n', encoding="utf-8")
    assert main(["train", "--resume", str(model), "training.max_steps=31"]) == 0
    lines = log.read_text(encoding="utf-8").splitlines()
    assert '{"step": 1, "note": "kept"}' in lines and "5" not in lines and '{"step": "x"}' not in lines
    capsys.readouterr()
    log.unlink()
    log.symlink_to("/dev/zero")
    assert main(["train", "--resume", str(model), "training.max_steps=32"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (f"s2s: error: {log}: not a regular file (the run's log); "
                                                        f"will not read or replace it")


def test_a_checkpoint_path_without_the_pt_suffix_is_that_file(trained, tmp_path, capsys):
    """``--checkpoint NAME`` is checkpoints/NAME.pt; anything with a directory part is a path, as
    given (``/etc/passwd`` was reported as ``/etc/passwd.pt``, a file nobody named)."""
    own = tmp_path / "weights"
    shutil.copy(trained / "checkpoints" / "last.pt", own)
    assert Translator.load(trained, checkpoint=str(own)).translate(["a b c"])
    junk = tmp_path / "notes"
    junk.write_text("not a checkpoint\n", encoding="utf-8")
    (tmp_path / "in.txt").write_text("a b c\n", encoding="utf-8")
    assert main(["generate", "-m", str(trained), "--checkpoint", str(junk), "-i", str(tmp_path / "in.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{junk}:" in err and "notes.pt" not in err


@pytest.mark.parametrize("name", ["tokenizers.json", "src.vocab.json", "tgt.vocab.json", "config.yaml"])
def test_a_model_file_linked_to_a_device_is_one_line_not_a_memory_error(trained, tmp_path, capsys, name):
    """A model directory's config or tokenizer file linked to /dev/zero was read until memory ran
    out (a MemoryError traceback, or the OOM killer); a huge one likewise. Now: one line naming it."""
    model = tmp_path / "model"
    shutil.copytree(trained, model)
    (model / name).unlink()
    (model / name).symlink_to("/dev/zero")
    (tmp_path / "in.txt").write_text("a b c\n", encoding="utf-8")
    assert main(["generate", "-m", str(model), "-i", str(tmp_path / "in.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{model / name}: not a regular file" in err


def test_a_huge_vocabulary_file_is_refused_by_its_size(trained, tmp_path, capsys, monkeypatch):
    import seq2seqkit.data.tokenizers as tokenizers

    monkeypatch.setattr(tokenizers, "MAX_TOKENIZER_BYTES", 20)
    model = tmp_path / "model"
    shutil.copytree(trained, model)
    assert (model / "src.vocab.json").stat().st_size > 20
    with pytest.raises(tokenizers.UserError, match=r"src\.vocab\.json: over \d+ MiB: not a tokenizer file"):
        Translator.load(model)


@pytest.mark.parametrize("given, says", [
    ("DIR", "{tmp}: a directory, not a checkpoint"),
    ("/dev/zero", "/dev/zero: not a regular file, not a checkpoint"),
    ("", "--checkpoint: empty"),
    ("best.pt", "best.pt: no such file here; the model's own is --checkpoint best"),
])
def test_a_checkpoint_argument_that_names_no_checkpoint_file_says_what_it_is(trained, tmp_path, monkeypatch, capsys,
                                                                            given, says):
    """A directory or a device was reported as 'no such checkpoint', an empty name as
    checkpoints/.pt, and 'best.pt' (a file of the model's checkpoints/, not of the current
    directory) without a hint."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("a b c\n", encoding="utf-8")
    given = str(tmp_path) if given == "DIR" else given
    assert main(["generate", "-m", str(trained), "--checkpoint", given, "-i", "in.txt"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says.format(tmp=tmp_path) in err, err
