"""`s2s check-data` is the same gate as training: whatever it accepts training accepts, whatever
training refuses it refuses, and every refusal is a DataError naming the file (and the line
where there is one), never another exception. Hypothesis feeds the readers arbitrary bytes."""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seq2seqkit.cli import main
from seq2seqkit.config import CorpusConfig, DataConfig, TokenizersConfig
from seq2seqkit.data.corpus import count_and_stats
from seq2seqkit.data.dataset import corpus_texts, encode_corpus
from seq2seqkit.data.tokenizers import train_tokenizers
from seq2seqkit.errors import DataError

CHAR = {"kind": "char"}


def check_data(corpus: CorpusConfig) -> DataError | None:
    """What `s2s check-data` says about the corpus: None (accepted) or its DataError."""
    try:
        count_and_stats(*corpus.files(), fmt=corpus.format)
    except DataError as e:
        return e
    return None


def training(corpus: CorpusConfig) -> DataError | None:
    """What training's data path says (tokenizers trained on it, then the split encoded), with
    limits that do not bind, so only the data itself can be refused."""
    try:
        src_tok, tgt_tok = train_tokenizers(TokenizersConfig(src=CHAR, tgt=CHAR),
                                            corpus_texts(corpus, "src"), corpus_texts(corpus, "tgt"))
        encode_corpus(corpus, DataConfig(max_src_len=10**6, max_tgt_len=10**6), src_tok, tgt_tok, "train")
    except DataError as e:
        return e
    return None


def lines(path: Path) -> int:
    """Line ends in a file, read as the readers read it (gunzipped where it is gzip)."""
    data = path.read_bytes()
    try:
        data = gzip.decompress(data)
    except (OSError, EOFError, ValueError):
        pass
    return data.count(b"\n")


def assert_same_gate(corpus: CorpusConfig, files: list[Path]) -> None:
    checked, trained = check_data(corpus), training(corpus)
    assert (checked is None) == (trained is None), (checked, trained)
    if checked is None or trained is None:
        return
    for e in (checked, trained):
        assert e.path in [str(f) for f in files]
        where = f"{e.path}:{e.line}: " if e.line is not None else f"{e.path}: "
        assert str(e).startswith(where) and "\n" not in str(e)
        if e.line is not None:
            assert 1 <= e.line <= max(lines(f) for f in files) + 1
    assert (checked.path, checked.line) == (trained.path, trained.line)
    assert checked.problem == trained.problem.replace(" in the train data", "")


# Pieces that make the interesting cases likely: separators, line ends, bad UTF-8, a BOM, NUL and
# other control characters, JSON syntax and escapes (a NUL or a lone surrogate spelled in JSON).
PIECES = [b"a", b"b c", b" ", b"\t", b"\n", b"\r\n", b"\r", b"\x00", b"\x1b", b"\xff", b"\xe9", b"\xc3\xa9",
          b"\xef\xbb\xbf", b'{"src": "a", "tgt": "b"}', b'{"src": ', b'"', b"{", b"}", b"[", b"1", b'\\u0000',
          b'\\ud800', b'"tgt": "x"}', b"\x1f\x8b"]
content = st.one_of(st.binary(max_size=120), st.lists(st.sampled_from(PIECES), max_size=30).map(b"".join))
maybe_gzipped = st.tuples(content, st.booleans()).map(lambda cg: gzip.compress(cg[0], mtime=0) if cg[1] else cg[0])
SETTINGS = settings(max_examples=40, derandomize=True, deadline=None, database=None)


@SETTINGS
@given(data=maybe_gzipped, fmt=st.sampled_from(["tsv", "jsonl"]))
def test_one_file_formats_same_gate_any_bytes(data: bytes, fmt: str):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"corpus.{fmt}"
        path.write_bytes(data)
        assert_same_gate(CorpusConfig(path=str(path)), [path])


@SETTINGS
@given(src=maybe_gzipped, tgt=content)
def test_two_files_same_gate_any_bytes(src: bytes, tgt: bytes):
    with tempfile.TemporaryDirectory() as d:
        a, b = Path(d) / "train.src", Path(d) / "train.tgt"
        a.write_bytes(src)
        b.write_bytes(tgt)
        assert_same_gate(CorpusConfig(src=str(a), tgt=str(b)), [a, b])


# --- the cases the issue names, each refused by both with FILE:LINE ---------------------

def pair(tmp_path: Path, src: bytes, tgt: bytes) -> tuple[CorpusConfig, Path, Path]:
    a, b = tmp_path / "s.txt", tmp_path / "t.txt"
    a.write_bytes(src)
    b.write_bytes(tgt)
    return CorpusConfig(src=str(a), tgt=str(b)), a, b


@pytest.mark.parametrize("src, tgt, where, problem", [
    (b"a\nb\x00c\n", b"x\ny\n", "s.txt:2", "control character U+0000 (NUL), where text is expected (the source text, character 2)"),
    (b"a\nb\n", b"x\n\x1b[31my\n", "t.txt:2", "control character U+001B (escape), where text is expected (the target text, character 1)"),
    (b"\n \n\t\n", b"x\n\ny\n", "s.txt", "no usable pairs: all 3 pairs have an empty side"),
    (b"", b"", "s.txt", "no usable pairs: it holds no pairs"),
])
def test_named_cases_refused_by_both(tmp_path: Path, src, tgt, where, problem):
    corpus, a, b = pair(tmp_path, src, tgt)
    checked, trained = check_data(corpus), training(corpus)
    assert str(checked) == f"{tmp_path}/{where}: {problem}" + ("; is it a binary file?" if "control" in problem else "")
    assert (trained.path, trained.line) == (checked.path, checked.line)


def test_jsonl_text_that_cannot_be_encoded_or_parsed(tmp_path: Path):
    rows = {
        "surrogate": ('{"src": "a\\ud800", "tgt": "b"}', 'lone surrogate U+D800, which cannot be encoded as UTF-8 '
                                                         '(the source text, character 2)'),
        "nul": ('{"src": "a", "tgt": "\\u0000"}', "control character U+0000 (NUL)"),
        "deep": ("[" * 100_000, "invalid JSON: nested too deeply"),
        "huge": ("1" * 5000, "invalid JSON: Exceeds the limit"),
    }
    for name, (line, problem) in rows.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text('{"src": "ok", "tgt": "ok"}\n' + line + "\n", encoding="utf-8")
        corpus = CorpusConfig(path=str(path))
        checked, trained = check_data(corpus), training(corpus)
        assert str(checked).startswith(f"{path}:2: {problem}"), checked
        assert str(trained) == str(checked)


def test_whitespace_controls_stay_text(tmp_path: Path):
    """Tab, carriage return, form feed are whitespace to every tokenizer: kept, not refused."""
    corpus, _, _ = pair(tmp_path, b"a\tb\r\nc\x0cd\n", b"x\ny\r")
    assert check_data(corpus) is None and training(corpus) is None


def test_check_data_cli_refuses_nul_with_one_line(tmp_path: Path, capsys):
    path = tmp_path / "bin.tsv"
    path.write_bytes(b"a\tb\nc\x00\td\n")
    assert main(["check-data", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"s2s: error: {path}:2: control character U+0000 (NUL), where text is expected "
                   f"(the source text, character 2); is it a binary file?\n")
    path.write_text(json.dumps({"src": "a", "tgt": "b"}) + "\n", encoding="utf-8")
    assert main(["check-data", "--format", "jsonl", str(path)]) == 0
