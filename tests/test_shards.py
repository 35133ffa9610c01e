"""Tokenized corpora on disk (data/shards.py): `s2s preprocess`, data.preprocessed, the cache.

Training from shards must be training as before: the same tokenizers, batches, ids and losses
as the in-memory path (data.cache=false), which is how every run trained before shards."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_error, read_jsonl, tiny_config

from seq2seqkit.cli import main
from seq2seqkit.config import Config, from_dict
from seq2seqkit.data import shards
from seq2seqkit.data.dataset import collate, token_batches
from seq2seqkit.data.shards import open_preprocessed, preprocess, training_data
from seq2seqkit.training import Trainer, load_for_resume


def with_bad_pairs(cfg: Config, tmp_path: Path) -> Config:
    """``cfg`` with a training set that also holds an empty side and over-long pairs."""
    src = Path(cfg.data.train.src).read_text(encoding="utf-8").splitlines()
    tgt = Path(cfg.data.train.tgt).read_text(encoding="utf-8").splitlines()
    src[3], tgt[7] = "   ", ""
    src[10] = tgt[11] = " ".join("abcdef" * 3)
    (tmp_path / "bad").mkdir()
    for name, lines in (("src.txt", src), ("tgt.txt", tgt)):
        (tmp_path / "bad" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={
        "train": cfg.data.train.model_copy(update={"src": str(tmp_path / "bad/src.txt"), "tgt": str(tmp_path / "bad/tgt.txt")}),
        "max_src_len": 12, "max_tgt_len": 12})})


def override(cfg: Config, *overrides: str) -> Config:
    return from_dict(cfg.model_dump(mode="json"), "test", list(overrides))


SENTENCEPIECE = ("tokenizer.joint=true", "tokenizer.src.kind=sentencepiece", "tokenizer.tgt.kind=sentencepiece",
                 "tokenizer.src.vocab_size=20", "tokenizer.tgt.vocab_size=20")


@pytest.mark.parametrize("tokenizer", [(), SENTENCEPIECE, ("data.truncate_src=true",)], ids=["word", "spm-joint", "truncate"])
def test_shards_give_the_batches_of_the_in_memory_corpus(tmp_path: Path, tokenizer):
    cfg = override(with_bad_pairs(tiny_config(tmp_path, max_steps=2), tmp_path), *tokenizer)
    src_tok, tgt_tok, memory = training_data(override(cfg, "data.cache=false"))
    header = preprocess(cfg, tmp_path / "shards")
    s_tok, t_tok, disk = open_preprocessed(override(cfg, f"data.preprocessed={tmp_path / 'shards'}"), None)
    assert (s_tok.fingerprint(), t_tok.fingerprint()) == (src_tok.fingerprint(), tgt_tok.fingerprint())
    train = header["splits"]["train"]
    assert train["pairs_read"] == 2000 and train["pairs"] == len(memory) == len(disk)
    assert train["skipped_empty"] == 2 and train["skipped_too_long"] + train["cut"] >= 1
    assert disk.src_lens.itemsize == 1 and np.array_equal(disk.src_lens, memory.src_lens)
    assert np.array_equal(disk.tgt_lens, memory.tgt_lens)
    for epoch in range(3):
        a = token_batches(memory.src_lens, memory.tgt_lens, 300, 1234, epoch)
        b = token_batches(disk.src_lens, disk.tgt_lens, 300, 1234, epoch)
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    for idx in a:
        x, y = collate(memory, idx), collate(disk, idx)
        for name in ("src", "src_lens", "tgt_in", "tgt_out"):
            assert torch.equal(getattr(x, name), getattr(y, name)), name


def test_preprocess_then_train_equals_training_directly(tmp_path: Path, capsys):
    base = override(tiny_config(tmp_path, max_steps=6, log_every=1, checkpoint_every=3, num_threads=1),
                    "data.dev.src=null", "data.dev.tgt=null")  # no validation: the losses are compared
    direct = override(base, "data.cache=false", f"output_dir={tmp_path / 'direct'}")
    Trainer(direct).train()
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(base.model_dump(mode="json")), encoding="utf-8")
    assert main(["-q", "preprocess", str(config), str(tmp_path / "pre")]) == 0
    assert "data.preprocessed=" in capsys.readouterr().out
    # data.train left out: the shards are all training needs
    sharded = override(base, f"data.preprocessed={tmp_path / 'pre'}", "data.train.src=null", "data.train.tgt=null",
                   f"output_dir={tmp_path / 'sharded'}")
    Trainer(sharded).train()
    losses = [[r["loss"] for r in read_jsonl(Path(d) / "train_log.jsonl") if r["kind"] == "train"]
              for d in (direct.output_dir, sharded.output_dir)]
    assert len(losses[0]) == 6 and losses[0] == losses[1]
    a, b = (torch.load(Path(d) / "checkpoints/last.pt", weights_only=True)["model"] for d in (direct.output_dir, sharded.output_dir))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # resumed from the shards, it continues exactly
    Trainer(load_for_resume(sharded.output_dir, ["training.max_steps=8"]), resume=True).train()
    assert [r["step"] for r in read_jsonl(Path(sharded.output_dir) / "train_log.jsonl")][-1] == 8


def count_tokenizer_trainings(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = shards.train_tokenizers_on_pairs

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(shards, "train_tokenizers_on_pairs", counted)
    return calls


def test_second_run_reads_the_cache_and_a_changed_source_is_tokenized_again(tmp_path: Path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="seq2seqkit")
    calls = count_tokenizer_trainings(monkeypatch)
    cfg = tiny_config(tmp_path, max_steps=2)
    first = Trainer(override(cfg, f"output_dir={tmp_path / 'one'}"))
    first.close()
    assert len(calls) == 1 and "cached in" in caplog.text
    caplog.clear()
    second = Trainer(override(cfg, f"output_dir={tmp_path / 'two'}"))
    second.close()
    assert len(calls) == 1 and "read from the cache" in caplog.text and "training tokenizers" not in caplog.text
    assert (tmp_path / "one/src.vocab.json").read_bytes() == (tmp_path / "two/src.vocab.json").read_bytes()
    assert np.array_equal(first.train_data.tgt_lens, second.train_data.tgt_lens)
    # another tokenizer setting is another cache entry
    Trainer(override(cfg, f"output_dir={tmp_path / 'three'}", "tokenizer.src.lowercase=true")).close()
    assert len(calls) == 2
    # the source changes: stale, tokenized again (and the entry replaced)
    src = Path(cfg.data.train.src)
    src.write_text(src.read_text(encoding="utf-8").replace("a", "b"), encoding="utf-8")
    caplog.clear()
    Trainer(override(cfg, f"output_dir={tmp_path / 'four'}")).close()
    assert len(calls) == 3 and "has changed since the shards were written; tokenizing again" in caplog.text
    # a damaged entry is rebuilt too
    entry = next(p for p in shards.cache_root().iterdir() if p.is_dir() and (p / "train.src.ids").exists()
                 and json.loads((p / "shards.json").read_text())["splits"]["train"]["sources"][0]["path"] == str(src)
                 and not json.loads((p / "shards.json").read_text())["tokenizers"]["config"]["src"]["lowercase"])
    with open(entry / "train.tgt.ids", "r+b") as f:
        f.truncate(5)
    caplog.clear()
    Trainer(override(cfg, f"output_dir={tmp_path / 'five'}")).close()
    assert len(calls) == 4 and "damaged" in caplog.text


def test_a_stale_or_mismatched_preprocessed_directory_is_refused(tmp_path: Path, capsys):
    cfg = tiny_config(tmp_path, max_steps=2)
    pre = tmp_path / "pre"
    preprocess(cfg, pre)
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(cfg.model_dump(mode="json")), encoding="utf-8")

    def refused(*overrides: str) -> str:
        out = f"output_dir={tmp_path / 'run'}"
        assert main(["-q", "train", str(config), f"data.preprocessed={pre}", out, *overrides]) == 2
        return one_line_error(capsys)

    assert "tokenized with tokenizer.src.min_freq=1, but the config says 2" in refused("tokenizer.src.min_freq=2")
    assert "filtered with data.max_tgt_len=200" in refused("data.max_tgt_len=50")
    assert "but data.train names" in refused(f"data.train.src={cfg.data.train.tgt}", f"data.train.tgt={cfg.data.train.src}")
    src = Path(cfg.data.train.src)
    os.utime(src, ns=(1, 1))  # touched, the same content: still fresh
    assert main(["-q", "train", str(config), f"data.preprocessed={pre}", f"output_dir={tmp_path / 'ok'}"]) == 0
    capsys.readouterr()
    src.write_text(src.read_text(encoding="utf-8").replace("a", "c"), encoding="utf-8")
    assert f"data.preprocessed: {pre}: stale: {src.resolve()} has changed since the shards were written" in refused()


def damage(pre: Path, what: str) -> str:
    header = pre / "shards.json"
    if what == "truncated ids":
        with open(pre / "train.src.ids", "r+b") as f:
            f.truncate(10)
        return "train.src.ids: 10 bytes where the header says"
    if what == "offsets":
        off = np.fromfile(pre / "train.tgt.off", dtype=np.int64)
        off[5] = off[4] - 1
        off.tofile(pre / "train.tgt.off")
        return "train.tgt.off: pair 4 has length -1"
    if what == "id beyond the vocabulary":
        ids = np.fromfile(pre / "train.src.ids", dtype=np.uint8)
        ids[17] = 250
        ids.tofile(pre / "train.src.ids")
        return "train.src.ids: holds id 250, beyond the vocabulary of"
    if what == "header":
        header.write_text('{"seq2seqkit": "shards", "format": 1', encoding="utf-8")
        return "shards.json: damaged header"
    if what == "version":
        h = json.loads(header.read_text(encoding="utf-8"))
        h["format"] = 99
        header.write_text(json.dumps(h), encoding="utf-8")
        return "shards.json: format version 99, but this seq2seq-kit reads version 1"
    if what == "header fields":
        h = json.loads(header.read_text(encoding="utf-8"))
        del h["splits"]["train"]["src"]
        header.write_text(json.dumps(h), encoding="utf-8")
        return "shards.json: damaged header (KeyError"
    if what == "tokenizer":
        vocab = json.loads((pre / "tgt.vocab.json").read_text(encoding="utf-8"))
        (pre / "tgt.vocab.json").write_text(json.dumps(vocab[:-1]), encoding="utf-8")
        return "tokenizers.json: the tgt tokenizer is not the one the shards were written with"
    (pre / "shards.json").unlink()
    return "shards.json: missing"


@pytest.mark.parametrize("what", ["truncated ids", "offsets", "id beyond the vocabulary", "header", "version",
                                  "header fields", "tokenizer", "no header"])
def test_a_damaged_shards_directory_is_one_line_naming_the_file(tmp_path: Path, capsys, what):
    cfg = tiny_config(tmp_path, max_steps=2)
    pre = tmp_path / "pre"
    preprocess(cfg, pre)
    expected = damage(pre, what)
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(cfg.model_dump(mode="json")), encoding="utf-8")
    assert main(["-q", "train", str(config), f"data.preprocessed={pre}", f"output_dir={tmp_path / 'run'}"]) == 2
    line = one_line_error(capsys)
    assert str(pre) in line and expected in line, line


def test_an_interrupted_build_leaves_nothing_half_written(tmp_path: Path, monkeypatch, capsys):
    cfg = tiny_config(tmp_path, max_steps=2)
    pre = tmp_path / "out" / "pre"
    preprocess(cfg, pre)
    before = {p.name: p.read_bytes() for p in pre.iterdir()}
    monkeypatch.setattr(shards, "CHUNK", 64)  # many writes, so the failure comes in the middle
    flushes = []
    real = shards._SideWriter.flush

    def failing(self):
        flushes.append(1)
        if len(flushes) == 5:
            raise OSError(28, "No space left on device")
        real(self)

    monkeypatch.setattr(shards._SideWriter, "flush", failing)
    with pytest.raises(OSError):
        preprocess(override(cfg, "tokenizer.src.lowercase=true"), pre)
    assert {p.name: p.read_bytes() for p in pre.iterdir()} == before  # the earlier shards, untouched
    flushes.clear()
    with pytest.raises(OSError):
        preprocess(cfg, tmp_path / "out" / "new")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pre"]  # no temporary left, no "new"
    assert pre.stat().st_mode & 0o777 == 0o777 & ~current_umask()
    # a user's directory is never replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine", encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(cfg.model_dump(mode="json")), encoding="utf-8")
    assert main(["-q", "preprocess", str(config), str(mine)]) == 2
    assert "is not a shards directory written by 's2s preprocess'" in one_line_error(capsys)
    assert (mine / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_a_missing_training_file_is_named_as_before(tmp_path: Path, capsys):
    cfg = tiny_config(tmp_path, max_steps=2)
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(cfg.model_dump(mode="json")), encoding="utf-8")
    missing = tmp_path / "nowhere.txt"
    for cache in ("true", "false"):
        assert main(["-q", "train", str(config), f"data.train.src={missing}", f"data.cache={cache}"]) == 2
        assert one_line_error(capsys) == f"s2s: error: {missing}: no such file"


def test_set_up_reads_the_training_split_twice_then_not_at_all(tmp_path: Path, monkeypatch):
    """Once to train the tokenizers (both sides in one pass), once to encode; with the cache
    warm, never (the old set-up read it three times: each side's tokenizer, then encoding)."""
    from seq2seqkit.data import corpus

    opened: list[str] = []
    real = corpus.open_binary
    monkeypatch.setattr(corpus, "open_binary", lambda path: opened.append(str(path)) or real(path))
    cfg = override(tiny_config(tmp_path, max_steps=2), "data.dev.src=null", "data.dev.tgt=null")
    for cache, reads in (("false", 2), ("true", 2), ("true", 0)):
        opened.clear()
        Trainer(override(cfg, f"data.cache={cache}", f"output_dir={tmp_path / f'run{len(list(tmp_path.iterdir()))}'}")).close()
        assert opened.count(cfg.data.train.src) == reads, (cache, opened)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_set_up_reads_the_dev_split_once_and_a_resume_the_training_split_at_most_once(tmp_path: Path, monkeypatch):
    """A new run reads the dev split once (ids for the losses and texts for the metrics from the
    same read); a resumed run keeps its tokenizers, so it reads the training split only to
    encode it (once), or not at all from the cache."""
    from seq2seqkit.data import corpus

    opened: list[str] = []
    real = corpus.open_binary
    monkeypatch.setattr(corpus, "open_binary", lambda path: opened.append(str(path)) or real(path))
    cfg = tiny_config(tmp_path, max_steps=2)
    for cache, train_reads in (("false", 1), ("true", 0)):
        out = tmp_path / f"run-{cache}"
        new = Trainer(override(cfg, f"data.cache={cache}", f"output_dir={out}"))
        new.save("last")
        new.close()
        assert opened.count(cfg.data.dev.src) == 1, (cache, opened)
        opened.clear()
        Trainer(load_for_resume(out, []), resume=True).close()
        assert opened.count(cfg.data.train.src) == train_reads, (cache, opened)
        assert opened.count(cfg.data.dev.src) == 1, (cache, opened)
        opened.clear()


def test_cache_list_and_clear(tmp_path: Path, monkeypatch, capsys):
    """`s2s cache list` shows each entry (size, pairs, last use, current or stale); `s2s cache
    clear` removes what it is told (--stale, --older-than, KEY, --all) and nothing else: an entry
    whose lock a run holds stays, and one holding a file the toolkit did not write is refused."""
    import fcntl
    import time

    monkeypatch.setenv("S2S_CACHE_DIR", str(tmp_path / "cache"))
    cfgs = [tiny_config(tmp_path / name) for name in ("a", "b", "c")]
    for cfg in cfgs:
        shards.open_cached(cfg, None)
    a, b, c = (shards.cache_root() / shards.cache_key(cfg) for cfg in cfgs)
    old = time.time() - 10 * 86400
    os.utime(c / shards.HEADER, (old, old))
    shards.open_cached(cfgs[0], None)  # a cache hit: a's last use is now
    assert (a / shards.HEADER).stat().st_mtime > time.time() - 60
    with open(cfgs[1].data.train.src, "a", encoding="utf-8") as f:
        f.write("a b\n")  # b's training file changed: b is stale

    capsys.readouterr()
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{shards.cache_root()}: 3 entries")
    assert [line.split()[0] for line in out[1:]] == [c.name, b.name, a.name]  # least recently used first
    assert "2,000 pairs" in out[3] and "current" in out[3] and str(cfgs[0].data.train.src) in out[3]
    assert "stale: " in out[2] and "has changed since the shards were written" in out[2]

    assert main(["cache", "clear"]) == 2 and "say which entries" in one_line_error(capsys)
    assert main(["cache", "clear", "nosuchkey"]) == 2 and "no entry nosuchkey" in one_line_error(capsys)
    assert main(["cache", "clear", "--stale"]) == 0 and not b.exists() and a.exists() and c.exists()
    assert main(["cache", "clear", "--older-than", "5"]) == 0 and not c.exists() and a.exists()
    assert not (c.parent / f"{c.name}.lock").exists()

    (a / "notes.txt").write_text("mine")
    assert main(["cache", "clear", "--all"]) == 2
    assert "holds files seq2seq-kit did not write" in one_line_error(capsys) and (a / "notes.txt").exists()
    (a / "notes.txt").unlink()
    with open(a.parent / f"{a.name}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a run writing or opening a
        assert main(["cache", "clear", a.name]) == 0
        assert "kept 1 that a run is writing or opening now" in capsys.readouterr().out and a.exists()
    assert main(["cache", "clear", "--all"]) == 0 and not a.exists()
    assert "removed 1 entry" in capsys.readouterr().out
    assert sorted(os.listdir(shards.cache_root())) == []

    monkeypatch.setenv("S2S_CACHE_DIR", str(cfgs[0].data.train.src))  # a file: an error, not "0 entries"
    for command in (["cache", "list"], ["cache", "clear", "--all"]):
        assert main(command) == 2
        assert "is a file, where the shards cache should be a directory" in one_line_error(capsys)
