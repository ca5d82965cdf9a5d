"""The model worker: ONE thread runs all model work (the torch model is not safe for concurrent forwards),
interleaving the active requests token by token (round-robin), so every streaming client progresses.

    worker = Worker(lm, pool, parallel=4, queue=16)     # started by the app
    job = worker.submit(Job(ids, max_tokens, sampler, stops, bonds=False), loop)   # raises QueueFull
    async for ev in job.events(): ...                   # ("token", Piece) ... ("done", Finish) / ("error", ..)
    job.cancel()                                        # client gone: the worker drops it before its next step

A job's token loop is written here (not stream_generate) because the bonds view needs each decode step's
attention weights (Session.step(token, attn_out=list)) and its plan row (Session.last_row). It draws the
same tokens as asa_runtime.generate.stream_generate for the same prompt and sampler (the load test checks).
Counters (tokens generated, cancelled jobs) are read by /health and by the tests.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from asa_runtime.errors import USER_ERRORS, one_line
from asa_runtime.scoring import score
from asa_runtime.streaming import StopMatcher, StreamingDetokenizer


class QueueFull(Exception):
    """More requests are waiting for the model than the queue holds (HTTP 429)."""


@dataclass
class Job:
    ids: list[int]
    max_tokens: int
    sampler: object
    stops: list[str]
    bonds: bool = False
    logprobs: int | None = None         # None: off; else each sampled token's logprob and this many alternatives
    prompt_logprobs: int | None = None  # None: off; else the prompt's tokens get theirs too (echo, scoring)
    # filled by the worker
    loop: asyncio.AbstractEventLoop | None = None
    queue: asyncio.Queue | None = None
    cancelled: bool = False
    steps: int = 0                      # decode steps this job made (tests: cancellation stops them)
    t_submit: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        self.cancelled = True

    def _emit(self, kind: str, payload) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, payload))

    async def events(self):
        while True:
            kind, payload = await self.queue.get()
            yield kind, payload
            if kind in ("done", "error"):
                return


class Worker:
    def __init__(self, lm, pool, parallel: int = 4, queue: int = 16, step_delay: float = 0.0):
        self.lm, self.pool = lm, pool
        self.parallel, self.queue_max = max(1, parallel), max(0, queue)
        self.step_delay = step_delay              # tests only: slows each decode step so a stop can land
        self.waiting: deque[Job] = deque()
        self.active: list[tuple[Job, object]] = []
        self.cv = threading.Condition()
        self.stopping = False
        self.tokens_generated = 0
        self.prompt_tokens = 0                    # every prompt token of every request
        self.prompt_tokens_computed = 0           # those not served from a kept session's cache
        self.cancelled_jobs = 0
        self.completed_jobs = 0
        self.thread = threading.Thread(target=self._run, name="asa-model-worker", daemon=True)

    # ---- called from the event loop ------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.cv:
            self.stopping = True
            self.cv.notify()
        self.thread.join(timeout=10)

    def submit(self, job: Job, loop) -> Job:
        job.loop, job.queue = loop, asyncio.Queue()
        with self.cv:
            if len(self.waiting) + len(self.active) >= self.parallel + self.queue_max:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting for the model "
                                f"(queue size {self.queue_max}); retry later")
            self.waiting.append(job)
            self.cv.notify()
        return job

    def stats(self) -> dict:
        with self.cv:
            return {"active": len(self.active), "waiting": len(self.waiting), "parallel": self.parallel,
                    "queue": self.queue_max, "tokens_generated": self.tokens_generated,
                    "prompt_tokens": self.prompt_tokens, "prompt_tokens_computed": self.prompt_tokens_computed,
                    "cancelled": self.cancelled_jobs, "completed": self.completed_jobs,
                    "sessions_created": self.pool.created}

    # ---- the worker thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self.cv:
                    while not self.stopping and not self.waiting and not self.active:
                        self.cv.wait()
                    if self.stopping:
                        break
                    while self.waiting and len(self.active) < self.parallel:
                        job = self.waiting.popleft()
                        self.active.append((job, self._generate(job)))
                    batch = list(self.active)
                for job, gen in batch:                 # one unit of work (prefill or one token) each
                    done = False
                    if job.cancelled:
                        gen.close()                    # its finally returns the session to the pool
                        done = True
                        with self.cv:
                            self.cancelled_jobs += 1
                    else:
                        try:
                            next(gen)
                        except StopIteration:
                            done = True
                        except BaseException as e:   # noqa: BLE001 -- reported to the client, worker lives on
                            job._emit("error", (400 if isinstance(e, USER_ERRORS) else 500, one_line(e)))
                            done = True
                    if done:
                        with self.cv:
                            self.active = [a for a in self.active if a[0] is not job]
                    if self.step_delay:
                        time.sleep(self.step_delay)
        for job, gen in self.active:
            gen.close()

    def _generate(self, job: Job):
        """One job as a generator: each next() does one unit of model work and emits its events."""
        lm = self.lm
        session = self.pool.acquire(job.ids)
        clean = False
        try:
            t0 = time.perf_counter()
            scored = None
            if job.prompt_logprobs is None:
                logits, computed = session.prepare(job.ids)
            else:                           # every position's logits: the whole prompt, no cached prefix
                session.reset()
                nll, top_lp, top_id = score(session, job.ids, top=job.prompt_logprobs)
                logits = session.feed(job.ids[-1:])        # the last prompt token, only a target there
                session.mark()
                computed = len(job.ids)
                scored = [{"id": int(job.ids[0]), "logprob": None, "top": None}] + [
                    {"id": int(t), "logprob": -float(x), "top": list(zip(i.tolist(), v.tolist()))}
                    for t, x, v, i in zip(job.ids[1:], nll.tolist(), top_lp, top_id)]
            cached = len(job.ids) - computed
            with self.cv:
                self.prompt_tokens += len(job.ids)
                self.prompt_tokens_computed += computed
            job._emit("prompt", {"prompt_tokens": len(job.ids), "cached_tokens": cached,
                                 "prompt_seconds": time.perf_counter() - t0,
                                 "context": _context(session, job.bonds), "logprobs": scored})
            yield
            detok, stops = StreamingDetokenizer(lm.tokenizer), StopMatcher(job.stops)
            eos, history = lm.tokenizer.eos_id, list(session.tokens)
            n_gen, t_first, finish = 0, 0.0, None if job.max_tokens > 0 else "length"   # 0: scoring only
            pieces = lm.tokenizer.pieces
            while finish is None:
                token = job.sampler(logits[: session.n_vocab], history)
                lp = _logprob(logits[: session.n_vocab], token, job.logprobs) if job.logprobs is not None else None
                history.append(token)
                n_gen += 1
                if n_gen == 1:
                    t_first = time.perf_counter()
                with self.cv:
                    self.tokens_generated += 1
                if token == eos:
                    text, stopped = stops.push(detok.flush())
                    job._emit("token", {"text": text if stopped else text + stops.flush(), "bond": None})
                    finish = "stop"
                    break
                last = n_gen >= job.max_tokens or session.room < 1
                bond = None
                if (job.bonds or not last) and session.room >= 1:
                    attn = [] if job.bonds else None
                    logits = session.step(token, attn)       # this token's own plan row and attention
                    job.steps += 1
                    if job.bonds:
                        bond = _bond(session, token, attn, pieces)
                elif job.bonds:
                    bond = {"pos": session.n_past, "token": int(token), "text": pieces[token], "keys": None,
                            "weights": None}
                text, stopped = stops.push(detok.add(token))
                if stopped:
                    finish = "stop"
                elif last:
                    rest, stopped = stops.push(detok.flush())
                    text += rest if stopped else rest + stops.flush()
                    finish = "stop" if stopped else "length"
                job._emit("token", {"text": text, "bond": bond, "logprob": lp})
                if finish is None:
                    yield
            now = time.perf_counter()
            if n_gen == 0:                  # scoring only: the first "token" is the end of the prompt
                t_first = now
            tps = (n_gen - 1) / (now - t_first) if n_gen > 1 and now > t_first else 0.0
            job._emit("done", {"finish_reason": finish, "prompt_tokens": len(job.ids), "completion_tokens": n_gen,
                               "cached_tokens": cached, "tokens_per_second": tps,
                               "context_used": session.n_past, "ctx_size": session.ctx_size,
                               "ttft": t_first - job.t_submit})
            clean = True
            with self.cv:
                self.completed_jobs += 1
        finally:
            self.pool.release(session, keep=clean or job.cancelled)


def _logprob(logits, token: int, top: int) -> dict:
    """The sampled token's log-probability under the model's own distribution (log-softmax of the logits, before
    temperature, top-k/p and penalties, as vLLM reports by default) and the `top` most likely ids with theirs."""
    import torch

    lp = torch.log_softmax(torch.as_tensor(logits).float(), -1)
    out = {"id": int(token), "logprob": float(lp[token]), "top": []}
    if top:
        v, i = lp.topk(min(top, lp.numel()))
        out["top"] = [(int(a), float(b)) for a, b in zip(i.tolist(), v.tolist())]
    return out


def _context(session, bonds: bool):
    """The prompt as the model saw it, token by token (only when the bonds view asked for it)."""
    if not bonds:
        return None
    pieces = session.pieces
    return [pieces[t] for t in session.tokens]


def _bond(session, token: int, attn: list, pieces) -> dict:
    """A generated token's plan row (earlier positions it may attend to) and, per layer, the head-averaged
    attention weights over them. Dense models have no row: every earlier position."""
    pos = session.n_past - 1
    if session.last_row is None or session.dense:
        keys = np.arange(pos + 1)
    else:
        row = session.last_row
        keys = row[row >= 0]
    # None when the backend does not report attention (only the row is known then)
    weights = [[round(float(x), 5) for x in w.tolist()] for w in attn] if attn else None
    toks = session.tokens
    return {"pos": pos, "token": int(token), "text": pieces[token], "keys": [int(k) for k in keys],
            "key_text": [pieces[toks[int(k)]] for k in keys], "weights": weights}
