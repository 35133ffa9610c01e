"""Tests for seq2seqkit.data.corpus: formats, gzip, encodings and error locations."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from seq2seqkit.data.corpus import (
    CorpusStats,
    Example,
    LengthStats,
    count_and_stats,
    detect_format,
    iter_examples,
    open_binary,
)
from seq2seqkit.errors import DataError, UserError


def write(path: Path, data: str | bytes, gz: bool = False) -> Path:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def error_of(*args, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        list(iter_examples(*args, **kwargs))
    return info.value


# --- detect_format / open_binary -------------------------------------------------------

@pytest.mark.parametrize("name, fmt", [
    ("a.tsv", "tsv"), ("a.tsv.gz", "tsv"), ("A.TSV", "tsv"),
    ("a.jsonl", "jsonl"), ("a.json", "jsonl"), ("a.jsonl.gz", "jsonl"),
    ("train.en", "text"), ("train.en.gz", "text"), ("a.txt", "text"), ("tsv", "text"),
])
def test_detect_format(name, fmt):
    assert detect_format(name) == fmt


def test_open_binary_detects_gzip_by_content_not_name(tmp_path):
    p = write(tmp_path / "plain_name.txt", "hello\n", gz=True)
    with open_binary(p) as f:
        assert f.read() == b"hello\n"
    q = write(tmp_path / "fake.gz", "not gzip\n")
    with open_binary(q) as f:
        assert f.read() == b"not gzip\n"


def test_open_binary_missing_file(tmp_path):
    p = tmp_path / "nope.txt"
    with pytest.raises(DataError) as info:
        open_binary(p)
    assert str(info.value) == f"{p}: no such file"
    assert info.value.line is None


def test_missing_file_in_iter_examples(tmp_path):
    src = write(tmp_path / "a.en", "x\n")
    err = error_of(src, tmp_path / "missing.de")
    assert str(err) == f"{tmp_path / 'missing.de'}: no such file"


# --- plain text pairs -------------------------------------------------------------------

def test_text_pair_basic_keeps_whitespace_and_empty_lines(tmp_path):
    src = write(tmp_path / "a.en", " hello  world \n\nthird\n")
    tgt = write(tmp_path / "a.de", "hallo welt\nleer\n\t\n")
    assert list(iter_examples(src, tgt)) == [
        Example(1, " hello  world ", "hallo welt"),
        Example(2, "", "leer"),
        Example(3, "third", "\t"),
    ]


def test_text_pair_no_trailing_newline_and_crlf(tmp_path):
    src = write(tmp_path / "a.en", "a\r\nb\r\nc")
    tgt = write(tmp_path / "a.de", "x\ny\r\nz\r")
    assert list(iter_examples(src, tgt, fmt="text")) == [
        Example(1, "a", "x"), Example(2, "b", "y"), Example(3, "c", "z\r")]


@pytest.mark.parametrize("n_src, n_tgt", [(120, 119), (120, 100), (7, 0)])
def test_text_pair_src_longer(tmp_path, n_src, n_tgt):
    src = write(tmp_path / "train.en", "".join(f"s{i}\n" for i in range(n_src)))
    tgt = write(tmp_path / "train.de", "".join(f"t{i}\n" for i in range(n_tgt)))
    err = error_of(src, tgt)
    assert err.line is None
    assert str(err) == (f"{src}: has {n_src} lines but {tgt} has {n_tgt} lines: "
                        "the files must be line-aligned")


def test_text_pair_tgt_longer(tmp_path):
    src = write(tmp_path / "train.en", "a\n")
    tgt = write(tmp_path / "train.de", "x\ny\nz\n")
    err = error_of(src, tgt)
    assert str(err) == (f"{src}: has 1 line but {tgt} has 3 lines: "
                        "the files must be line-aligned")


def test_text_pair_mismatch_yields_aligned_prefix_first(tmp_path):
    src = write(tmp_path / "a.en", "1\n2\n3\n")
    tgt = write(tmp_path / "a.de", "1\n2\n")
    it = iter_examples(src, tgt)
    assert [next(it).line, next(it).line] == [1, 2]
    with pytest.raises(DataError, match="has 3 lines but .*a.de has 2 lines"):
        next(it)


def test_text_pair_gzip(tmp_path):
    src = write(tmp_path / "a.en.gz", "hello\nworld\n", gz=True)
    tgt = write(tmp_path / "a.de", "hallo\nwelt\n")
    assert list(iter_examples(src, tgt)) == [Example(1, "hello", "hallo"), Example(2, "world", "welt")]


def test_text_pair_rejects_other_formats(tmp_path):
    src = write(tmp_path / "a.en", "x\n")
    tgt = write(tmp_path / "a.de", "y\n")
    with pytest.raises(DataError) as info:
        iter_examples(src, tgt, fmt="tsv")
    assert str(info.value).startswith(f"{src}: format 'tsv'")


def test_single_text_file_is_an_error(tmp_path):
    src = write(tmp_path / "a.en", "x\n")
    with pytest.raises(DataError) as info:
        iter_examples(src)
    assert str(info.value).startswith(f"{src}: a plain text file holds only one side")
    assert ".tsv or .jsonl" in str(info.value)


def test_unknown_format_is_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown data format 'csv'"):
        iter_examples(tmp_path / "a.csv", fmt="csv")  # type: ignore[arg-type]


# --- encoding ---------------------------------------------------------------------------

def test_bom_stripped_on_first_line_only(tmp_path):
    src = write(tmp_path / "a.en", b"\xef\xbb\xbfhello\n\xef\xbb\xbfagain\n")
    tgt = write(tmp_path / "a.de", b"\xef\xbb\xbfhallo\nnochmal\n")
    assert list(iter_examples(src, tgt)) == [
        Example(1, "hello", "hallo"), Example(2, "\ufeffagain", "nochmal")]


def test_bom_stripped_tsv_and_jsonl(tmp_path):
    tsv = write(tmp_path / "a.tsv", b"\xef\xbb\xbfa\tb\n")
    assert list(iter_examples(tsv)) == [Example(1, "a", "b")]
    jl = write(tmp_path / "a.jsonl", b'\xef\xbb\xbf{"src": "a", "tgt": "b"}\n')
    assert list(iter_examples(jl)) == [Example(1, "a", "b")]


def test_invalid_utf8_names_file_line_and_byte(tmp_path):
    src = write(tmp_path / "a.en", "ok\nok\n".encode() + b"caf\xe9 au lait\n")
    tgt = write(tmp_path / "a.de", "x\ny\nz\n")
    err = error_of(src, tgt)
    assert err.line == 3
    assert str(err).startswith(f"{src}:3: invalid UTF-8 at byte 3: ")
    assert "0xe9" in str(err)


def test_invalid_utf8_in_target_file(tmp_path):
    src = write(tmp_path / "a.en", "x\ny\n")
    tgt = write(tmp_path / "a.de", b"ok\n\xff\n")
    assert str(error_of(src, tgt)).startswith(f"{tgt}:2: invalid UTF-8 at byte 0: ")


def test_invalid_utf8_offset_counts_bom(tmp_path):
    tsv = write(tmp_path / "a.tsv", b"\xef\xbb\xbfab\xc3\tb\n")
    assert str(error_of(tsv)) == (f"{tsv}:1: invalid UTF-8 at byte 5: invalid continuation "
                                  "byte (0xc3); is the file in another encoding?")


def test_corrupt_gzip_is_data_error(tmp_path):
    good = gzip.compress(b"a\tb\n" * 1000)
    tsv = write(tmp_path / "a.tsv.gz", good[: len(good) // 2])
    err = error_of(tsv)
    assert str(err).startswith(f"{tsv}:")
    assert "cannot read file" in str(err)


# --- TSV --------------------------------------------------------------------------------

def test_tsv_basic_crlf_and_trailing_newline(tmp_path):
    tsv = write(tmp_path / "a.tsv", "a b\tx y\r\n\tempty src\r\nlast\t\n")
    assert list(iter_examples(tsv)) == [
        Example(1, "a b", "x y"), Example(2, "", "empty src"), Example(3, "last", "")]


def test_tsv_trailing_empty_lines_ignored(tmp_path):
    tsv = write(tmp_path / "a.tsv", "a\tb\n\n\n")
    assert list(iter_examples(tsv)) == [Example(1, "a", "b")]


def test_tsv_empty_line_in_middle(tmp_path):
    tsv = write(tmp_path / "a.tsv", "a\tb\n\n\nc\td\n")
    assert str(error_of(tsv)) == (f"{tsv}:2: expected 2 tab-separated fields "
                                  "(source, target), found 1")


@pytest.mark.parametrize("line, found", [("just one", 1), ("a\tb\tc", 3), ("\t\t\t", 4)])
def test_tsv_wrong_field_count(tmp_path, line, found):
    tsv = write(tmp_path / "a.tsv", f"a\tb\nc\td\n{line}\ne\tf\n")
    assert str(error_of(tsv)) == (f"{tsv}:3: expected 2 tab-separated fields "
                                  f"(source, target), found {found}")


def test_tsv_gzip(tmp_path):
    tsv = write(tmp_path / "a.tsv.gz", "a\tb\nc\td\n", gz=True)
    assert list(iter_examples(tsv)) == [Example(1, "a", "b"), Example(2, "c", "d")]


def test_explicit_fmt_overrides_suffix(tmp_path):
    p = write(tmp_path / "data.txt", "a\tb\n")
    assert list(iter_examples(p, fmt="tsv")) == [Example(1, "a", "b")]


# --- JSONL ------------------------------------------------------------------------------

def test_jsonl_basic_blank_lines_and_extra_keys(tmp_path):
    jl = write(tmp_path / "a.jsonl",
               '{"src": "a\\tb", "tgt": " x ", "id": 7}\n\n   \r\n{"tgt": "", "src": "c"}\r\n')
    assert list(iter_examples(jl)) == [Example(1, "a\tb", " x "), Example(4, "c", "")]


def test_jsonl_gzip(tmp_path):
    jl = write(tmp_path / "a.jsonl.gz", '{"src": "a", "tgt": "b"}\n', gz=True)
    assert list(iter_examples(jl)) == [Example(1, "a", "b")]


@pytest.mark.parametrize("bad, problem", [
    ('{"src": "a", "tgt": }', "invalid JSON: Expecting value (column 21)"),
    ('["a", "b"]', 'expected a JSON object with "src" and "tgt", found array'),
    ('"a"', 'expected a JSON object with "src" and "tgt", found string'),
    ("null", 'expected a JSON object with "src" and "tgt", found null'),
    ('{"tgt": "b"}', 'missing key "src"'),
    ('{"src": "a", "target": "b"}', 'missing key "tgt"'),
    ('{"src": 1, "tgt": "b"}', '"src" must be a string, found number'),
    ('{"src": "a", "tgt": null}', '"tgt" must be a string, found null'),
    ('{"src": "a", "tgt": ["b"]}', '"tgt" must be a string, found array'),
    ('{"src": true, "tgt": "b"}', '"src" must be a string, found boolean'),
])
def test_jsonl_errors(tmp_path, bad, problem):
    jl = write(tmp_path / "a.jsonl", '{"src": "a", "tgt": "b"}\n\n' + bad + "\n")
    assert str(error_of(jl)) == f"{jl}:3: {problem}"


# --- streaming --------------------------------------------------------------------------

def test_large_files_stream_in_order(tmp_path):
    n = 20_000
    src = write(tmp_path / "big.en.gz", "".join(f"src {i}\n" for i in range(n)), gz=True)
    tgt = write(tmp_path / "big.de", "".join(f"tgt {i}\r\n" for i in range(n)))
    count = 0
    for i, ex in enumerate(iter_examples(src, tgt)):
        assert ex == Example(i + 1, f"src {i}", f"tgt {i}")
        count += 1
    assert count == n
    tsv = write(tmp_path / "big.tsv", "".join(f"s{i}\tt{i}\n" for i in range(n)))
    exs = list(iter_examples(tsv))
    assert len(exs) == n and exs[-1] == Example(n, f"s{n - 1}", f"t{n - 1}")


def test_partial_consumption_stops_early(tmp_path):
    # A broken line far down the file must not matter if the reader stops before it.
    tsv = write(tmp_path / "a.tsv", "a\tb\n" * 5 + "broken\n")
    it = iter_examples(tsv)
    assert [next(it) for _ in range(5)][-1] == Example(5, "a", "b")
    it.close()


# --- stats ------------------------------------------------------------------------------

def test_length_stats_of():
    assert LengthStats.of([]) == LengthStats(0, 0, 0.0, 0, 0)
    assert LengthStats.of([5]) == LengthStats(5, 5, 5.0, 5, 5)
    assert LengthStats.of([4, 1, 3, 2]) == LengthStats(1, 4, 2.5, 2, 4)
    assert LengthStats.of(range(1, 101)) == LengthStats(1, 100, 50.5, 50, 95)


def test_count_and_stats_known_corpus(tmp_path):
    tsv = write(tmp_path / "c.tsv",
                "a b c\tx\n"        # 3 tok / 5 ch ; 1 tok / 1 ch
                "\tx y\n"           # 0 / 0        ; 2 / 3
                "hello\t  \n"       # 1 / 5        ; 0 / 2
                "a  b\tx y z w\n")  # 2 / 4        ; 4 / 7
    stats = count_and_stats(tsv)
    assert stats == CorpusStats(
        examples=4, empty_src=1, empty_tgt=1,
        src_tokens=LengthStats(0, 3, 1.5, 1, 3),
        tgt_tokens=LengthStats(0, 4, 1.75, 1, 4),
        src_chars=LengthStats(0, 5, 3.5, 4, 5),
        tgt_chars=LengthStats(1, 7, 3.25, 2, 7),
    )


def test_count_and_stats_text_pair_and_empty_corpus(tmp_path):
    src = write(tmp_path / "a.en", "één twee\nx\n")
    tgt = write(tmp_path / "a.de", "\ny\n")
    stats = count_and_stats(src, tgt)
    assert (stats.examples, stats.empty_src, stats.empty_tgt) == (2, 0, 1)
    assert stats.src_chars == LengthStats(1, 8, 4.5, 1, 8)  # characters, not bytes
    # what training refuses, check-data refuses: no pairs, or none with text on both sides
    empty = write(tmp_path / "e.jsonl", "")
    with pytest.raises(DataError, match=r"e\.jsonl: no usable pairs: it holds no pairs"):
        count_and_stats(empty)
    with pytest.raises(DataError, match=r"a\.de: no usable pairs: all 1 pairs have an empty side"):
        count_and_stats(write(tmp_path / "a.de", "\n"), write(tmp_path / "a.de", "\n"))


def test_count_and_stats_propagates_data_errors(tmp_path):
    tsv = write(tmp_path / "c.tsv", "a\tb\nbad\n")
    with pytest.raises(DataError, match=r"c\.tsv:2: expected 2"):
        count_and_stats(tsv)


def test_format_report(tmp_path):
    tsv = write(tmp_path / "c.tsv", "a b c\tx\n\tx y\nhello\t  \na  b\tx y z w\n")
    report = count_and_stats(tsv).format_report("c.tsv")
    assert report.splitlines() == [
        "c.tsv: 4 examples",
        "  empty source: 1  empty target: 1",
        "  length           min     p50     p95     max      mean",
        "  src tokens         0       1       3       3       1.5",
        "  tgt tokens         0       1       4       4       1.8",
        "  src chars          0       4       5       5       3.5",
        "  tgt chars          1       2       7       7       3.2",
    ]
