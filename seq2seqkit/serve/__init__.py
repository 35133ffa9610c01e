"""``s2s serve``: trained models over HTTP (FastAPI on uvicorn), with batching across requests.

:func:`create_app` builds the app from loaded :class:`~seq2seqkit.translate.Translator` s;
:func:`load_models` loads them as ``s2s serve`` is told to; :class:`Limits` holds what a request
may ask for and how requests are batched. The FastAPI modules load on first use, so that the
CLI can read the limits' defaults without them.
"""

from __future__ import annotations

from typing import Any

from .limits import Limits

__all__ = ["Limits", "create_app", "load_models"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "load_models":
        from .loading import load_models

        return load_models
    raise AttributeError(name)
