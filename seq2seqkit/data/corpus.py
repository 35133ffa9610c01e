"""Reading parallel corpora: line-aligned text pairs, TSV and JSONL, plain or gzipped.

Everything streams line by line so corpora larger than memory work, and every data
problem is a :class:`~seq2seqkit.errors.DataError` naming the file and the line, so a
user can open the file at the right place and fix it.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import stat
import zlib
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, get_args

from seq2seqkit.errors import DataError, UserError

Format = Literal["auto", "text", "tsv", "jsonl"]

_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
MAX_LINE_BYTES = 16 << 20  # longer is not a line of text (a document per line is far below it)
# Where text is expected: control characters that are not whitespace to the tokenizers (NUL,
# escape, DEL, ...: usually a binary file or a broken conversion) and lone surrogates (JSON
# "\ud800" escapes, which no tokenizer can encode as UTF-8) are refused. Tab, line feed,
# carriage return and the other characters str.isspace() accepts are whitespace and stay.
_NOT_TEXT = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\ud800-\udfff]")
_CONTROL_NAMES = {0x00: "NUL", 0x1B: "escape", 0x7F: "DEL"}
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number",
               float: "number", bool: "boolean", type(None): "null"}


@dataclass(frozen=True)
class Example:
    """One source/target pair, with the line it came from so later errors can point at it."""

    line: int  # 1-based physical line number in the source file(s)
    src: str   # only the trailing "\n" / "\r\n" is removed; other whitespace is kept
    tgt: str


def not_text(text: str) -> tuple[str, int] | None:
    """What the first character of ``text`` that is not text is (see ``_NOT_TEXT``), and its
    1-based position; None when all of it is text."""
    bad = _NOT_TEXT.search(text)
    if bad is None:
        return None
    code = ord(bad.group())
    if 0xD800 <= code <= 0xDFFF:
        return f"lone surrogate U+{code:04X}, which cannot be encoded as UTF-8", bad.start() + 1
    name = _CONTROL_NAMES.get(code)
    return f"control character U+{code:04X}" + (f" ({name})" if name else "") + ", where text is expected", bad.start() + 1


def check_text(text: str, path: str | Path, lineno: int, side: str) -> str:
    """``text`` if it is text; a DataError at ``path:lineno`` naming the first character that is not."""
    bad = not_text(text)
    if bad is None:
        return text
    what, at = bad
    raise DataError(path, lineno, f"{what} (the {side} text, character {at}); is it a binary file?")


def _example(lineno: int, src: str, tgt: str, src_path: str | Path, tgt_path: str | Path | None = None) -> Example:
    """An Example whose sides are checked to be text (see ``_NOT_TEXT``)."""
    return Example(lineno, check_text(src, src_path, lineno, "source"), check_text(tgt, tgt_path or src_path, lineno, "target"))


def has_text(ex: Example) -> bool:
    """Whether a pair can be trained on: both sides hold a non-whitespace character. Training skips
    the others (or stops on them with data.on_invalid=error); ``s2s check-data`` counts them."""
    return bool(ex.src.strip() and ex.tgt.strip())


def require_usable(path: str | Path, name: str | None, usable: int, total: int, too_long: int = 0) -> None:
    """The gate that training and ``s2s check-data`` share: a corpus without one usable pair is refused."""
    if usable:
        return
    if total == 0:
        why = "it holds no pairs"
    elif too_long:
        why = f"all {total} pairs have an empty side or are too long"
    else:
        why = f"all {total} pairs have an empty side"
    raise DataError(path, None, f"no usable pairs{f' in the {name} data' if name else ''}: {why}")


def detect_format(path: str | Path) -> Format:
    """Guess the format from the suffix (a trailing ``.gz`` is ignored), defaulting to text."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".tsv"):
        return "tsv"
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    return "text"


class _GzipOwningFile(gzip.GzipFile):
    """A ``GzipFile`` over a file object that it closes with itself."""

    def close(self) -> None:
        raw = self.fileobj
        try:
            super().close()
        finally:
            if raw is not None:
                raw.close()


def open_binary(path: str | Path) -> BinaryIO:
    """Open ``path`` for reading bytes, gunzipping if it starts with the gzip magic bytes.

    The content decides, not the name, so a misnamed ``.gz`` (or an unnamed one) still works.
    The file is opened once and its first bytes peeked, so a pipe (``-i <(zcat ...)``, a FIFO)
    is read like a file instead of losing its first bytes to the check.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(path, None, "no such file") from None
    except IsADirectoryError:
        raise DataError(path, None, "is a directory, not a file") from None
    except PermissionError:
        raise DataError(path, None, "permission denied") from None
    try:
        gzipped = f.peek(2)[:2] == _GZIP_MAGIC
    except OSError as e:
        f.close()
        raise DataError(path, None, f"cannot read file: {e.strerror or e}") from None
    return _GzipOwningFile(fileobj=f, mode="rb") if gzipped else f  # type: ignore[return-value]


def require_rereadable(path: str | Path, what: str) -> None:
    """Training reads its files more than once (tokenizers, then encoding; every epoch's dev
    pass): a pipe or a device would give its data once and then block or run dry, so it is
    refused up front with one line."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing or unreadable: the reader says so, naming the file
    if stat.S_ISDIR(mode):
        raise DataError(path, None, "is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise DataError(path, None, f"is not a regular file (a pipe or a device); {what} reads it more "
                                    "than once: write it to a file first")


def _raw_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, bytes)`` with the line ending removed; read errors become DataErrors.
    A line over ``MAX_LINE_BYTES`` is refused as it is read, so a file with no line breaks
    (``/dev/zero``, a binary file given by mistake) cannot fill memory."""
    with open_binary(path) as f:
        lineno = 0
        try:
            while raw := f.readline(MAX_LINE_BYTES + 1):
                lineno += 1
                if raw.endswith(b"\n"):
                    raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
                elif len(raw) > MAX_LINE_BYTES:
                    raise DataError(path, lineno, f"a line of over {MAX_LINE_BYTES:,} bytes without a line break; "
                                                  "is this a text file?")
                yield lineno, raw
        except (OSError, EOFError, zlib.error) as e:  # corrupt or truncated gzip
            raise DataError(path, lineno + 1, f"cannot read file: {e}") from None


def decode_line(raw: bytes, path: str | Path, lineno: int) -> str:
    """Strict UTF-8 so a wrongly encoded corpus fails loudly instead of training on mojibake."""
    skip = len(_BOM) if lineno == 1 and raw.startswith(_BOM) else 0
    try:
        return raw[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw[skip + e.start: skip + e.end].hex(" ")
        raise DataError(path, lineno, f"invalid UTF-8 at byte {skip + e.start}: {e.reason} "
                                      f"(0x{bad}); is the file in another encoding?") from None


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` of a UTF-8 text file (``.gz`` read transparently)."""
    for lineno, raw in _raw_lines(path):
        yield lineno, decode_line(raw, path, lineno)


def _plural(n: int) -> str:
    return f"{n} line" if n == 1 else f"{n} lines"


def _iter_pair(src: str | Path, tgt: str | Path) -> Iterator[Example]:
    """Two line-aligned files in lockstep; a length mismatch reports both line counts."""
    a, b = _raw_lines(src), _raw_lines(tgt)
    try:
        n = 0
        while True:
            x, y = next(a, None), next(b, None)
            if x is None or y is None:
                if x is y:
                    return
                n_src = n + (x is not None) + sum(1 for _ in a)
                n_tgt = n + (y is not None) + sum(1 for _ in b)
                raise DataError(src, None, f"has {_plural(n_src)} but {tgt} has "
                                           f"{_plural(n_tgt)}: the files must be line-aligned")
            n = x[0]
            yield _example(n, decode_line(x[1], src, n), decode_line(y[1], tgt, n), src, tgt)
    finally:
        a.close()
        b.close()


def _iter_tsv(path: str | Path) -> Iterator[Example]:
    def bad(lineno: int, found: int) -> DataError:
        return DataError(path, lineno, "expected 2 tab-separated fields (source, target), "
                                       f"found {found}")

    first_empty: int | None = None  # empty lines are only tolerated at the end of the file
    for lineno, line in read_lines(path):
        if line == "":
            first_empty = lineno if first_empty is None else first_empty
            continue
        if first_empty is not None:
            raise bad(first_empty, 1)
        fields = line.split("\t")
        if len(fields) != 2:
            raise bad(lineno, len(fields))
        yield _example(lineno, fields[0], fields[1], path)


def json_fields(line: str, path: str | Path, lineno: int, keys: tuple[str, ...] = ("src", "tgt")) -> list[str]:
    """The string values of ``keys`` in one JSONL line (other keys are ignored); anything
    else is a DataError at ``path:lineno``."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(path, lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # e.g. a 5,000-digit number, or [[[[... nested too deep
        raise DataError(path, lineno, f"invalid JSON: {'nested too deeply' if isinstance(e, RecursionError) else e}") from None
    if not isinstance(obj, dict):
        raise DataError(path, lineno, f"expected a JSON object with {' and '.join(map(json.dumps, keys))}, "
                                      f"found {_JSON_TYPES.get(type(obj), 'value')}")
    for key in keys:
        if key not in obj:
            raise DataError(path, lineno, f'missing key "{key}"')
        if not isinstance(obj[key], str):
            kind = _JSON_TYPES.get(type(obj[key]), "value")
            raise DataError(path, lineno, f'"{key}" must be a string, found {kind}')
    return [obj[key] for key in keys]


def jsonl_labels(path: str | Path, key: str) -> list[tuple[int, str]]:
    """``(line number, value of key)`` (a string or a number, as text) of each row of a JSONL file, the rows
    being the lines :func:`iter_examples` reads (blank lines skipped): what ``s2s evaluate
    --by-field`` groups the rows by (the task of a bAbI question)."""
    labels = []
    for lineno, line in read_lines(path):
        if not line.strip():
            continue
        json_fields(line, path, lineno, ())  # a JSON object, or a DataError
        obj = json.loads(line)
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            found = "no such key" if key not in obj else f"found {_JSON_TYPES.get(type(value), 'value')}"
            raise DataError(path, lineno, f'"{key}": expected a string or a number to group by ({found})')
        labels.append((lineno, str(value)))
    return labels


def _iter_jsonl(path: str | Path) -> Iterator[Example]:
    for lineno, line in read_lines(path):
        if line.strip():
            yield _example(lineno, *json_fields(line, path, lineno), path)  # type: ignore[misc]


def iter_examples(src: str | Path, tgt: str | Path | None = None,
                  fmt: Format = "auto") -> Iterator[Example]:
    """Stream examples from a text pair (``src`` + ``tgt``) or a single TSV/JSONL file.

    Arguments are checked now; files are opened and read lazily as the iterator is consumed.
    """
    if fmt not in get_args(Format):
        raise UserError(f"unknown data format {fmt!r}; expected one of "
                        f"{', '.join(get_args(Format))}")
    if tgt is not None:
        if fmt not in ("auto", "text"):
            raise DataError(src, None, f"format {fmt!r} holds both sides in one file, "
                                       "so no separate target file may be given")
        return _iter_pair(src, tgt)
    kind = detect_format(src) if fmt == "auto" else fmt
    if kind == "tsv":
        return _iter_tsv(src)
    if kind == "jsonl":
        return _iter_jsonl(src)
    raise DataError(src, None, "a plain text file holds only one side: give a target file "
                               "too, or use a .tsv or .jsonl file with both sides")


@dataclass(frozen=True)
class LengthStats:
    """Summary of a length distribution; p50/p95 are nearest-rank percentiles."""

    min: int
    max: int
    mean: float
    p50: int
    p95: int

    @classmethod
    def of(cls, lengths: Iterable[int]) -> LengthStats:
        """Summarise lengths; an empty input gives all zeros so reports never crash."""
        xs = sorted(lengths)
        if not xs:
            return cls(0, 0, 0.0, 0, 0)

        def rank(pct: int) -> int:  # integer arithmetic: no float rounding at exact ranks
            return xs[max(-(-pct * len(xs) // 100) - 1, 0)]

        return cls(xs[0], xs[-1], sum(xs) / len(xs), rank(50), rank(95))


@dataclass(frozen=True)
class CorpusStats:
    """What ``s2s check-data`` shows: size, empty sides and length distributions."""

    examples: int
    empty_src: int  # sides with no non-whitespace character
    empty_tgt: int
    src_tokens: LengthStats  # whitespace-separated tokens
    tgt_tokens: LengthStats
    src_chars: LengthStats  # Unicode code points
    tgt_chars: LengthStats

    def format_report(self, name: str) -> str:
        """Render a small table for the terminal."""
        rows = [f"{name}: {self.examples:,} examples",
                f"  empty source: {self.empty_src:,}  empty target: {self.empty_tgt:,}",
                f"  {'length':<12}{'min':>8}{'p50':>8}{'p95':>8}{'max':>8}{'mean':>10}"]
        for label, s in (("src tokens", self.src_tokens), ("tgt tokens", self.tgt_tokens),
                         ("src chars", self.src_chars), ("tgt chars", self.tgt_chars)):
            rows.append(f"  {label:<12}{s.min:>8,}{s.p50:>8,}{s.p95:>8,}{s.max:>8,}{s.mean:>10,.1f}")
        return "\n".join(rows)


def count_and_stats(src: str | Path, tgt: str | Path | None = None,
                    fmt: Format = "auto") -> CorpusStats:
    """Read the whole corpus once, validating it as training does (the same readers, and
    :func:`require_usable`), and keep only the lengths (not the text)."""
    lens = {k: array("q") for k in ("st", "tt", "sc", "tc")}
    empty_src = empty_tgt = usable = 0
    for ex in iter_examples(src, tgt, fmt):
        usable += has_text(ex)
        s_tok, t_tok = len(ex.src.split()), len(ex.tgt.split())
        lens["st"].append(s_tok)
        lens["tt"].append(t_tok)
        lens["sc"].append(len(ex.src))
        lens["tc"].append(len(ex.tgt))
        empty_src += s_tok == 0
        empty_tgt += t_tok == 0
    require_usable(src, None, usable, len(lens["st"]))
    return CorpusStats(len(lens["st"]), empty_src, empty_tgt,
                       LengthStats.of(lens["st"]), LengthStats.of(lens["tt"]),
                       LengthStats.of(lens["sc"]), LengthStats.of(lens["tc"]))
