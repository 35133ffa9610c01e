"""The HTTP API of ``s2s serve`` (FastAPI): generation, the served models, health and readiness.

``create_app({name: Translator, ...}, Limits())`` returns the app; ``s2s serve`` runs it on
uvicorn. Routes (JSON; the schema at ``/openapi.json``, browsable at ``/docs``):

* ``POST /v1/generate``: inputs and optional search settings -> outputs, scores, n-best lists
  and, on request, attention weights (:mod:`.generate` does the work, :mod:`.batcher` gathers
  concurrent requests into batches);
* ``GET /v1/models``: what each served model is;
* ``GET /health``: the process answers; ``GET /ready``: 200 once the models are loaded and
  the batch worker runs, 503 before and while shutting down.

Errors have one JSON shape (:mod:`.errors`). One JSON log line per request goes to the
``seq2seqkit.serve`` logger; for generation it says how the request was batched (``batching``:
step, request or off) and the batch it joined: ``batch_requests`` / ``batch_inputs``, the
requests / inputs of its batch (step-level: those decoding in the first step it took part in,
itself included), ``steps`` (step-level: the decoding steps it took part in), ``queue_ms`` (from
arrival to its first step, or its batch's start) and ``decode_ms`` (from then to its answer).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from ..translate import Translator
from .batcher import Batcher, Closed, QueueFull
from .errors import ApiError, BodyLimit, install_error_handlers
from .generate import Generation, decode_batch, model_info, open_stream, prepare, respond
from .limits import Limits
from .page import mount_page
from .schemas import ErrorResponse, GenerateRequest, GenerateResponse, ModelsResponse, Status

log = logging.getLogger("seq2seqkit.serve")
ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 413, 415, 422, 429, 503, 504)}


def create_app(models: Mapping[str, Translator], limits: Limits | None = None) -> FastAPI:
    """The app serving ``models`` (name -> loaded Translator; the first is the default)."""
    if not models:
        raise ValueError("serve at least one model")
    limits = limits or Limits()
    models = dict(models)
    batcher = Batcher(lambda key, sources: decode_batch(models, key, sources), limits.max_wait_ms,
                      limits.max_batch_tokens, limits.max_queue, limits.batching, lambda key: open_stream(models, key),
                      limits.join_fraction, limits.join_wait_steps)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await batcher.close()  # SIGTERM: uvicorn has let in-flight requests finish; drain the queue

    app = FastAPI(title="seq2seq-kit", version="1", lifespan=lifespan,
                  description="Apply trained sequence-to-sequence models over HTTP. Concurrent requests with "
                              "the same search settings are decoded together: greedy and sampled requests join "
                              "the running batch between decoding steps, beam search requests share batches.")
    app.state.models, app.state.limits, app.state.batcher = models, limits, batcher
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    @app.middleware("http")
    async def request_log(request: Request, call_next):  # type: ignore[no-untyped-def]
        request.state.id = uuid.uuid4().hex[:16]
        request.state.log = {}
        start = time.perf_counter()
        response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.id
        log.info(json.dumps({"id": request.state.id, "method": request.method, "path": request.url.path,
                             "status": response.status_code, **request.state.log,
                             "total_ms": round(1000 * (time.perf_counter() - start), 1)}))
        return response

    @app.post("/v1/generate", response_model=GenerateResponse, responses=ERRORS, tags=["generation"])
    async def generate(body: GenerateRequest, request: Request) -> GenerateResponse:
        """Apply a model to each input, with optional search settings (defaults: GET /v1/models)."""
        if not batcher.running:
            raise ApiError(503, "the server is not ready (starting or shutting down)")
        gen: Generation = prepare(models, limits, body)
        request.state.log.update(model=gen.key.model, inputs=len(gen.sources), tokens=sum(len(s) + 1 for s in gen.sources))
        try:
            job = batcher.submit(gen.key, gen.sources)
        except QueueFull:
            raise ApiError(429, f"the queue is full ({limits.max_queue} requests waiting, --max-queue): retry later",
                           headers={"Retry-After": str(batcher.retry_after())}) from None
        except Closed:
            raise ApiError(503, "the server is shutting down") from None
        try:
            results = await asyncio.wait_for(job.future, limits.timeout_s)
        except TimeoutError:
            batcher.withdraw(job)
            raise ApiError(504, f"no result within {limits.timeout_s:g} s (--timeout-s); the server is busy or "
                                f"the request too large") from None
        finally:
            request.state.log.update(batching=job.mode, batch_requests=job.batch_requests,
                                     batch_inputs=job.batch_inputs, steps=job.steps,
                                     queue_ms=round(job.queue_ms, 1), decode_ms=round(job.decode_ms, 1))
        return respond(models[gen.key.model], gen, results)

    @app.get("/v1/models", response_model=ModelsResponse, tags=["models"])
    async def list_models() -> ModelsResponse:
        """The served models (the first is the default of /v1/generate) and their search defaults."""
        return ModelsResponse(models=[model_info(name, tr) for name, tr in models.items()])

    @app.get("/health", response_model=Status, tags=["status"])
    async def health() -> Status:
        """200 while the process lives."""
        return Status(status="ok")

    @app.get("/ready", response_model=Status, responses={503: {"model": ErrorResponse}}, tags=["status"])
    async def ready() -> Response:
        """200 once the models are loaded and requests are taken; 503 before and while shutting down."""
        if batcher.running:
            return JSONResponse({"status": "ready"})
        raise ApiError(503, "not ready: the models are loading or the server is shutting down")

    mount_page(app)  # the web page at / (seq2seqkit/serve/page.py and static/)
    return app


__all__ = ["create_app"]
