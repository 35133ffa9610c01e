"""Every error the API returns has one JSON shape: ``{"error": {"type", "message"}}``, with a
message that says what was wrong. FastAPI's own errors (validation, unknown path, wrong method,
malformed JSON) are converted to it here; a request body over the size limit is refused before
it is parsed (:class:`BodyLimit`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .schemas import SEARCH_FIELDS

log = logging.getLogger("seq2seqkit.serve")
JSON_NAMES = {v: k for k, v in SEARCH_FIELDS.items()}  # SearchConfig name -> request name
HTTP_TYPES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
              415: "unsupported_media_type", 422: "invalid_request", 429: "queue_full", 503: "not_ready",
              504: "timeout"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers
        self.type = type or HTTP_TYPES.get(status, "error")


def error_response(status: int, type: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": type, "message": message}}, status_code=status, headers=headers)


def field_path(loc: Sequence[Any]) -> str:
    """``("body", "inputs", 0)`` -> ``inputs[0]``; search fields by their request names."""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{JSON_NAMES.get(p, p)}" if out else JSON_NAMES.get(p, p))
    return out


def describe_validation(errors: Sequence[dict[str, Any]]) -> tuple[int, str, str]:
    """(status, type, message) for pydantic's errors about a request body."""
    for err in errors:
        if err["type"] == "json_invalid":
            where = (err.get("ctx") or {}).get("error", "")
            return 400, "invalid_json", f"the request body is not valid JSON ({where})".replace(" ()", "")
    messages = []
    for err in errors:
        path = field_path(err["loc"])
        if err["type"] == "missing" and not path:
            messages.append("the request body is missing: send a JSON object such as {\"inputs\": [\"text\"]}")
        elif err["type"] == "extra_forbidden":
            messages.append(f"{path}: unknown field (see /docs for the fields of this request)")
        elif err["type"] == "model_attributes_type" or (err["type"] == "dict_type" and not path):
            messages.append("the request body must be a JSON object")
        else:
            messages.append(f"{path or 'body'}: {err['msg']}" + (f", got {json.dumps(err['input'])[:80]}"
                                                                   if _showable(err) else ""))
    return 422, "invalid_request", "; ".join(dict.fromkeys(messages))


def _showable(err: dict[str, Any]) -> bool:
    try:
        return err["type"] != "missing" and not isinstance(err.get("input"), (dict, list)) and bool(json.dumps(err["input"]))
    except (TypeError, ValueError):
        return False


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.type, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        media = request.headers.get("content-type", "")
        if await request.body() and "json" not in media.lower():
            return error_response(415, "unsupported_media_type", f"send the body as JSON with the header "
                                  f"Content-Type: application/json (got {media or 'none'!r})")
        status, type, message = describe_validation(exc.errors())
        return error_response(status, type, message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow", "")
            message = f"{request.method} is not allowed on {request.url.path}" + (f" (allowed: {allowed})" if allowed else "")
        elif exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's words for a body its JSON decoding failed on before validation (bytes that
            # are not UTF-8 inside a string, nesting too deep to parse)
            return error_response(400, "invalid_json", "the request body is not valid JSON (not UTF-8 text, "
                                                       "or nested too deep)")
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, HTTP_TYPES.get(exc.status_code, "error"), message, exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"the server failed on this request ({type(exc).__name__}); "
                                                     f"it is logged")


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 before the app reads it
    (declared by Content-Length, or counted as it streams in)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = error_response(413, "body_too_large", f"the request body is over the limit of {self.max_bytes} "
                                                          f"bytes (--max-body-bytes)")
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            if not length.isdigit():
                await error_response(400, "bad_request", "Content-Length is not a number")(scope, receive, send)
            else:
                await too_large(scope, receive, send)
            return
        body, messages = 0, []
        while True:  # read it all first (it is small: at most max_bytes), then hand it on
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += len(message.get("body", b""))
            if body > self.max_bytes:
                await too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)
