"""The web page of ``s2s serve``: ``index.html`` at ``/``, its script and style sheet under
``/static``. Plain HTML, CSS and JavaScript shipped inside the package (no build step, nothing
fetched from elsewhere), talking to the same server's ``/v1`` API."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")


def mount_page(app: FastAPI) -> None:
    """Serve the page at ``/`` (kept out of the OpenAPI schema: it is no API)."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")
