"""Errors a user can cause and fix.

The CLI prints these as one line (no traceback unless ``--debug``) and exits non-zero,
so every message must say what is wrong *and where*: the file, the line, the config key.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Something the user gave us is wrong (a file, a config key, an argument)."""


class ConfigError(UserError):
    """A configuration value is missing, unknown or invalid."""


class DataError(UserError):
    """A data file is malformed. Formats as ``FILE:LINE: problem``."""

    def __init__(self, path: str | Path, line: int | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")
