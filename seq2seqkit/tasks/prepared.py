"""Directories of prepared data (``s2s prepare``): written atomically, and replaced only if ours.

Beside the split files, ``MANIFEST.json`` records what they were made from (``wanted``: a
package version, an archive's digest, the conversion's rules) and, once every file is
written, the row counts. It is written first without the counts (marking the files as ours,
so that they may be replaced) and completed last, so an interrupted run is redone. Files of
the split names that an earlier ``prepare`` did not write are never replaced.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_text
from ..errors import UserError
from ..rundir import RunLock

MANIFEST = "MANIFEST.json"


def write_splits(paths: dict[str, Path], wanted: dict[str, Any], make_rows: Callable[[], dict[str, list[str]]],
                 overwrite: bool = False) -> dict[str, int] | None:
    """Write ``paths[split]`` from ``make_rows()[split]`` (lines, each ending in a newline) and
    return the row counts; None (nothing written) when the files are complete and the manifest
    records the same ``wanted``. ``make_rows`` runs before anything is written, so input it
    refuses leaves the directory as it was."""
    out = next(iter(paths.values())).parent
    manifest_path = out / MANIFEST
    try:
        recorded = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = None
    ours = isinstance(recorded, dict) and wanted.keys() <= recorded.keys()
    if not overwrite and ours and recorded.get("rows") and all(p.is_file() for p in paths.values()):
        if all(recorded.get(k) == v for k, v in wanted.items()):
            return None
    if not ours:
        existing = [p for p in (*paths.values(), manifest_path) if p.exists() or p.is_symlink()]
        if existing:
            raise UserError(f"{existing[0]}: exists and was not written by 's2s prepare' (no {MANIFEST} of its "
                            f"own beside it); choose another directory")
    rows = make_rows()
    out.mkdir(parents=True, exist_ok=True)
    # Two prepares into one directory write one at a time: the other is refused naming the writer
    # (interleaved, the files of one and the manifest of the other could be left together).
    with RunLock(out):
        atomic_write_text(manifest_path, json.dumps({**wanted, "rows": None}, indent=2) + "\n")
        for split, lines in rows.items():
            atomic_write_text(paths[split], "".join(lines))
        counts = {s: len(lines) for s, lines in rows.items()}
        atomic_write_text(manifest_path, json.dumps({**wanted, "rows": counts}, indent=2) + "\n")
    return counts
