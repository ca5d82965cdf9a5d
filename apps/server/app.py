"""The Starlette app: OpenAI-compatible endpoints over one LoadedModel, llama-server's /tokenize, /detokenize and
/metrics, the static chat page, /health.

    from apps.server.app import ServerConfig, create_app
    app = create_app(lm, ServerConfig(model_id="asa-small"))      # run with uvicorn (asa-run serve does)

Every /v1 request is validated and tokenized on the event loop, then queued for the single model worker
(apps/server/scheduler.py); streamed responses are SSE (sse-starlette) ending with `data: [DONE]`. A client
that disconnects cancels its job before the worker's next step.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from asa_runtime.errors import GenerationError
from asa_runtime.sampling import Sampler, SamplerConfig

from . import openai_api as oa
from .conversations import DEFAULT_TEMPLATE, TEMPLATES, SessionPool
from .scheduler import Job, QueueFull, Worker

WEB = Path(__file__).resolve().parent.parent / "web"


@dataclass
class ServerConfig:
    model_id: str = "asa-small"
    api_key: str | None = None
    ctx_size: int | None = None            # None: the model's max_seq_len
    max_kv_size: int | None = None
    prefill_chunk: int | None = None        # None: the device's default (session.py)
    parallel: int = 4                      # requests generating at once (interleaved token by token)
    queue: int = 16                        # requests waiting beyond those; more get 429
    keep_sessions: int = 8                 # idle conversations whose KV cache is kept for reuse
    default_max_tokens: int = 256
    max_tokens_limit: int | None = None    # None: the context size
    max_prompt_tokens: int | None = None   # None: context size - 1
    sampling: dict = field(default_factory=dict)   # server defaults (SamplerConfig fields)
    chat_template: str = DEFAULT_TEMPLATE  # apps/server/conversations.py TEMPLATES
    max_body_bytes: int = 32 << 20         # larger request bodies get 413 before they are read into memory
    step_delay: float = 0.0                # tests only: seconds slept per worker step


def _err(e: oa.APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def create_app(lm, cfg: ServerConfig) -> Starlette:
    ctx = int(cfg.ctx_size or lm.config.max_seq_len)
    max_prompt = int(cfg.max_prompt_tokens or ctx - 1)
    max_new_limit = int(cfg.max_tokens_limit or ctx)
    pool = SessionPool(lm, ctx, cfg.max_kv_size, cfg.prefill_chunk, keep=cfg.keep_sessions)
    worker = Worker(lm, pool, parallel=cfg.parallel, queue=cfg.queue, step_delay=cfg.step_delay)
    created = int(time.time())
    if cfg.chat_template not in TEMPLATES:
        raise ValueError(f"unknown chat template {cfg.chat_template!r}; known: {', '.join(TEMPLATES)}")
    template = TEMPLATES[cfg.chat_template]

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(worker.stop)

    def check_key(request: Request) -> None:
        if not cfg.api_key:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), cfg.api_key.encode()):
            raise oa.APIError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                              code="invalid_api_key")

    async def body(request: Request):
        limit = cfg.max_body_bytes
        too_big = oa.APIError(413, f"request body over {limit:,} bytes", code="request_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks, size = [], 0
        async for c in request.stream():              # chunked bodies declare no length: count as they come
            size += len(c)
            if size > limit:
                raise too_big
            chunks.append(c)
        raw = b"".join(chunks)
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise oa.APIError(400, f"request body is not valid JSON ({e})", code="invalid_json") from None

    def build_job(req, ids: list[int], stops: list[str]) -> Job:
        if req.model != cfg.model_id:
            raise oa.APIError(404, f"model '{req.model}' does not exist; this server serves '{cfg.model_id}'",
                              param="model", code="model_not_found")
        if not ids:
            raise oa.APIError(400, "empty prompt", param="prompt", code="empty_prompt")
        if len(ids) > max_prompt:
            raise oa.APIError(400, f"the prompt has {len(ids)} tokens; this server takes at most {max_prompt} "
                              f"(context {ctx})", param="messages", code="context_length_exceeded")
        if max(ids) >= len(lm.tokenizer.pieces) or min(ids) < 0:
            raise oa.APIError(400, f"token ids must lie in [0, {len(lm.tokenizer.pieces)})", param="prompt")
        n = req.wanted_tokens(cfg.default_max_tokens)
        if n > max_new_limit:
            raise oa.APIError(400, f"max_tokens is {n}; this server allows at most {max_new_limit}",
                              param="max_tokens", code="invalid_value")
        try:
            sampler = Sampler(SamplerConfig(**req.sampler_kwargs(cfg.sampling)))
        except (ValueError, GenerationError) as e:
            raise oa.APIError(400, str(e), code="invalid_value") from None
        return Job(ids=ids, max_tokens=n, sampler=sampler, stops=stops, bonds=req.asa_bonds,
                   logprobs=req.wanted_logprobs(), prompt_logprobs=req.wanted_prompt_logprobs())

    async def run(request: Request, req, job: Job, chat: bool):
        try:
            worker.submit(job, asyncio.get_running_loop())
        except QueueFull as e:
            raise oa.APIError(429, str(e), type_="rate_limit_error", code="queue_full") from None
        cid = oa.new_id("chatcmpl" if chat else "cmpl")
        echo = "" if chat or not req.echo else (req.prompt if isinstance(req.prompt, str)
                                                else lm.tokenizer.decode(job.ids))   # the prompt, before the text
        if req.stream:
            return EventSourceResponse(_stream(job, cid, chat, req, echo), ping=15,
                                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _collect(request, job, cid, chat, echo)

    async def _stream(job: Job, cid: str, chat: bool, req, echo: str = ""):
        model = cfg.model_id
        include_usage = bool((req.stream_options or {}).get("include_usage"))
        offset = 0                       # characters of the completion so far (legacy logprobs' text_offset)
        try:
            if chat:
                yield json.dumps(oa.chat_chunk(cid, model, {"role": "assistant", "content": ""}))
            async for kind, p in job.events():
                if kind == "prompt" and echo:           # the prompt first, with its tokens' logprobs if asked
                    lp = oa.completion_logprobs(p["logprobs"], lm.tokenizer) if p.get("logprobs") else None
                    offset = sum(len(t) for t in lp["tokens"]) if lp else 0
                    yield json.dumps(oa.completion_chunk(cid, model, echo, logprobs=lp))
                if kind == "prompt":
                    if p["context"] is not None:      # the bonds view needs the prompt's tokens once
                        ext = {"asa_context": p["context"]}
                        yield json.dumps(oa.chat_chunk(cid, model, {}, **ext) if chat
                                         else oa.completion_chunk(cid, model, "", **ext))
                elif kind == "token":
                    lp = p.get("logprob")
                    if not p["text"] and p["bond"] is None and lp is None:
                        continue
                    ext = {"asa_bonds": [p["bond"]]} if p["bond"] is not None else {}
                    if chat:
                        yield json.dumps(oa.chat_chunk(cid, model, {"content": p["text"]}, logprobs=oa.chat_logprobs(
                            [lp], lm.tokenizer) if lp else None, **ext))
                    else:
                        yield json.dumps(oa.completion_chunk(cid, model, p["text"], logprobs=oa.completion_logprobs(
                            [lp], lm.tokenizer, offset) if lp else None, **ext))
                        offset += len(lm.tokenizer.pieces[lp["id"]]) if lp else 0
                elif kind == "done":
                    ext = {"usage": oa.usage(p), "asa_stats": oa.asa_stats(p)}
                    yield json.dumps(oa.chat_chunk(cid, model, {}, p["finish_reason"], **ext) if chat
                                     else oa.completion_chunk(cid, model, "", p["finish_reason"], **ext))
                    if include_usage:
                        last = (oa.chat_chunk if chat else oa.completion_chunk)(cid, model, *(
                            ({},) if chat else ("",)), usage=oa.usage(p))
                        last["choices"] = []
                        yield json.dumps(last)
                elif kind == "error":
                    status, msg = p
                    yield json.dumps(oa.APIError(status, msg, type_="invalid_request_error" if status < 500
                                                 else "server_error").body())
                    break
            yield "[DONE]"
        finally:
            job.cancel()           # no-op when finished; stops the worker's loop when the client left

    async def _collect(request: Request, job: Job, cid: str, chat: bool, echo: str = ""):
        parts, bonds, context, lps = [echo], [], None, []
        checked = time.monotonic()
        try:
            while True:
                if time.monotonic() - checked > 0.25:     # a client that left gets no body: stop its job
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        job.cancel()
                        return JSONResponse({}, status_code=499)
                try:
                    kind, p = await asyncio.wait_for(job.queue.get(), timeout=0.25)
                except asyncio.TimeoutError:
                    continue
                if kind == "prompt":
                    context = p["context"]
                    lps.extend(p.get("logprobs") or [])
                elif kind == "token":
                    parts.append(p["text"])
                    if p["bond"] is not None:
                        bonds.append(p["bond"])
                    if p.get("logprob"):
                        lps.append(p["logprob"])
                elif kind == "error":
                    status, msg = p
                    return _err(oa.APIError(status, msg, type_="invalid_request_error" if status < 500
                                            else "server_error"))
                elif kind == "done":
                    b = bonds if job.bonds else None
                    lp = None if job.logprobs is None else (oa.chat_logprobs if chat else oa.completion_logprobs)(
                        lps, lm.tokenizer)
                    fn = oa.chat_response if chat else oa.completion_response
                    return JSONResponse(fn(cid, cfg.model_id, "".join(parts), p, b, context, lp))
        finally:
            job.cancel()

    async def chat_completions(request: Request):
        try:
            check_key(request)
            req = oa.parse(oa.ChatRequest, await body(request))
            msgs = [m.model_dump() for m in req.messages]
            if not any(m["role"] == "user" for m in msgs):
                raise oa.APIError(400, "messages must contain at least one user message", param="messages")
            ids = template.encode(lm.tokenizer, msgs)
            job = build_job(req, ids, list(template.stops) + req.stop)
            return await run(request, req, job, chat=True)
        except oa.APIError as e:
            return _err(e)

    async def completions(request: Request):
        try:
            check_key(request)
            req = oa.parse(oa.CompletionRequest, await body(request))
            p = req.prompt
            ids = lm.tokenizer.encode(p) if isinstance(p, str) else [int(i) for i in p]
            job = build_job(req, ids, req.stop)
            return await run(request, req, job, chat=False)
        except oa.APIError as e:
            return _err(e)

    async def models(request: Request):
        try:
            check_key(request)
        except oa.APIError as e:
            return _err(e)
        return JSONResponse({"object": "list", "data": [
            {"id": cfg.model_id, "object": "model", "created": created, "owned_by": "asa-runtime",
             "asa": {"ctx_size": ctx, "max_prompt_tokens": max_prompt, "max_tokens_limit": max_new_limit,
                     "plan_mode": lm.config.plan.mode, "dense": lm.dense, "n_layer": lm.config.n_layer,
                     "chat_template": {"name": template.name, "user": template.user_name,
                                       "model": template.model_name}}}]})

    async def tokenize(request: Request):
        """llama-server's /tokenize: the ids the server would feed the model for this text (a completion's
        prompt; chat messages get the template around them), optionally with each id's text on its own (a
        byte of a multi-byte character shows as U+FFFD there; joined, the ids decode to the text)."""
        try:
            check_key(request)
            req = oa.parse(oa.TokenizeRequest, await body(request))
        except oa.APIError as e:
            return _err(e)
        ids = await asyncio.to_thread(lm.tokenizer.encode, req.content)
        if req.with_pieces:                 # as llama-server: the text, or the bytes where it is part of a character
            return JSONResponse({"tokens": [{"id": i, "piece": _piece(i)} for i in ids]})
        return JSONResponse({"tokens": ids})

    def _piece(i: int):
        b = lm.tokenizer.piece_bytes[i]
        try:
            return b.decode()
        except UnicodeDecodeError:
            return list(b)

    async def detokenize(request: Request):
        try:
            check_key(request)
            req = oa.parse(oa.DetokenizeRequest, await body(request))
            n = len(lm.tokenizer.pieces)
            bad = next((i for i in req.tokens if not 0 <= i < n), None)
            if bad is not None:
                raise oa.APIError(400, f"token id {bad} is outside [0, {n})", param="tokens", code="invalid_value")
        except oa.APIError as e:
            return _err(e)
        return JSONResponse({"content": await asyncio.to_thread(lm.tokenizer.decode, req.tokens)})

    async def metrics(request: Request):
        """Prometheus text exposition of the worker's counters (llama-server's --metrics, under asa_ names)."""
        try:
            check_key(request)
        except oa.APIError as e:
            return _err(e)
        st = worker.stats()
        rows = [("asa_prompt_tokens_total", "counter", "prompt tokens of every request", st["prompt_tokens"]),
                ("asa_prompt_tokens_computed_total", "counter", "prompt tokens computed (not served from a kept "
                 "session's cache)", st["prompt_tokens_computed"]),
                ("asa_tokens_predicted_total", "counter", "tokens generated", st["tokens_generated"]),
                ("asa_requests_completed_total", "counter", "requests finished", st["completed"]),
                ("asa_requests_cancelled_total", "counter", "requests whose client left", st["cancelled"]),
                ("asa_sessions_created_total", "counter", "KV sessions created", st["sessions_created"]),
                ("asa_requests_processing", "gauge", "requests generating now", st["active"]),
                ("asa_requests_deferred", "gauge", "requests waiting for a slot", st["waiting"])]
        text = "".join(f"# HELP {n} {h}\n# TYPE {n} {t}\n{n} {v}\n" for n, t, h, v in rows)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": cfg.model_id, **worker.stats()})

    async def index(request: Request):
        return FileResponse(WEB / "index.html")

    async def http_error(request: Request, exc: HTTPException):
        return _err(oa.APIError(exc.status_code, exc.detail or "error", code="not_found"
                                if exc.status_code == 404 else None))

    async def server_error(request: Request, exc: Exception):
        return _err(oa.APIError(500, f"internal error: {type(exc).__name__}", type_="server_error"))

    routes = [
        Route("/", index),
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]),           # llama-server's names and bodies
        Route("/detokenize", detokenize, methods=["POST"]),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=WEB), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.worker, app.state.pool, app.state.config = worker, pool, cfg
    return app
