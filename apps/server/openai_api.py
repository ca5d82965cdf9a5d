"""OpenAI-shaped requests, responses and errors for /v1/chat/completions and /v1/completions.

Requests are validated with pydantic; the first problem becomes a 400 body
{"error": {"message", "type": "invalid_request_error", "param", "code"}} as OpenAI returns it. Unknown
fields are accepted and ignored (clients send many), except the few whose meaning we cannot honour (n > 1).
Extensions (off by default, so OpenAI clients are unaffected): top_k, min_p, repeat_penalty,
repeat_last_n, and `asa_bonds: true` (each generated token's plan row and attention weights).
logprobs: chat's `logprobs` / `top_logprobs` (<= 20) and the legacy completions' `logprobs` (<= 5) report the
model's own distribution (log-softmax of the logits, before temperature and the other samplers, as vLLM does).
Completions' `echo` puts the prompt before the text; with logprobs its tokens are scored too, and max_tokens 0
(echo only) scores the prompt alone.
llama-server's /tokenize and /detokenize bodies are here too.
"""
from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict]

    @field_validator("content")
    @classmethod
    def _text(cls, v):
        if isinstance(v, list):        # content parts: only text parts carry meaning for a text model
            parts = []
            for p in v:
                if p.get("type") != "text" or not isinstance(p.get("text"), str):
                    raise ValueError("only text content parts are supported")
                parts.append(p["text"])
            return "".join(parts)
        return v


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, lt=1)
    repeat_penalty: float | None = Field(default=None, gt=0)
    repeat_last_n: int | None = Field(default=None, ge=-1)
    seed: int | None = None
    stop: str | list[str] | None = Field(default=None, validate_default=True)
    n: int = Field(default=1, ge=1, le=1)
    stream_options: dict | None = None
    asa_bonds: bool = False

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        if v is None:
            return []
        v = [v] if isinstance(v, str) else v
        if len(v) > 8:
            raise ValueError("at most 8 stop strings")
        return [s for s in v if s]

    def sampler_kwargs(self, defaults: dict) -> dict:
        kw = dict(defaults)
        for ours, theirs in (("temp", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                             ("min_p", "min_p"), ("repeat_penalty", "repeat_penalty"),
                             ("repeat_last_n", "repeat_last_n"), ("seed", "seed")):
            v = getattr(self, theirs)
            if v is not None:
                kw[ours] = v
        return kw

    def wanted_tokens(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default

    def wanted_prompt_logprobs(self) -> int | None:
        return None


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @model_validator(mode="after")
    def _top_needs_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs: needs logprobs: true")
        return self

    def wanted_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)      # the legacy API: alternatives per token
    max_tokens: int | None = Field(default=None, ge=0)         # 0 with echo: score the prompt, generate nothing

    @model_validator(mode="after")
    def _zero_needs_echo(self):
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens: 0 needs echo: true (the prompt scored, nothing generated)")
        return self

    def wanted_tokens(self, default: int) -> int:
        return 0 if self.max_tokens == 0 else super().wanted_tokens(default)

    def wanted_logprobs(self) -> int | None:
        return self.logprobs

    def wanted_prompt_logprobs(self) -> int | None:
        """echo with logprobs: the prompt's tokens get theirs too (how lm-eval-harness scores text)."""
        return self.logprobs if self.echo else None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list) and v and isinstance(v[0], str):
            if len(v) != 1:
                raise ValueError("one prompt per request (a list of several prompts is not supported)")
            return v[0]
        return v


MAX_TOKENIZE_CHARS = 4_000_000          # /tokenize bodies (~1M tokens of prose); more is refused, not queued
MAX_DETOKENIZE_IDS = 1_000_000


class TokenizeRequest(BaseModel):
    """llama-server's POST /tokenize: {"content", "with_pieces"}; add_special is accepted (this tokenizer adds
    no special tokens either way)."""
    model_config = ConfigDict(extra="ignore")
    content: str = Field(max_length=MAX_TOKENIZE_CHARS)
    with_pieces: bool = False
    add_special: bool = False


class DetokenizeRequest(BaseModel):
    """llama-server's POST /detokenize: {"tokens": [ids]}."""
    model_config = ConfigDict(extra="ignore")
    tokens: list[int] = Field(max_length=MAX_DETOKENIZE_IDS)


def parse(model_cls, data) -> BaseModel:
    """Validated request or APIError(400) naming the first bad field."""
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(x) for x in err.get("loc", ())) or None
        kind = err.get("type", "")
        msg = err.get("msg", "invalid value")
        if param is None:       # a check across fields (model_validator) names its field first: "field: why"
            field_, _, why = msg.removeprefix("Value error, ").partition(": ")
            if field_ in model_cls.model_fields and why:
                param, msg = field_, why
        if kind == "missing":
            return _raise(400, f"missing required field '{param}'", param, "missing_field")
        return _raise(400, f"invalid value for '{param}': {msg}", param, "invalid_value")


def _raise(status, message, param=None, code=None):
    raise APIError(status, message, param=param, code=code)


# ---- responses -------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(done: dict) -> dict:
    return {"prompt_tokens": done["prompt_tokens"], "completion_tokens": done["completion_tokens"],
            "total_tokens": done["prompt_tokens"] + done["completion_tokens"],
            "prompt_tokens_details": {"cached_tokens": done["cached_tokens"]}}


def asa_stats(done: dict) -> dict:
    """Extension on the final chunk / response: what the page shows (tokens/s, context used)."""
    return {k: done[k] for k in ("tokens_per_second", "context_used", "ctx_size", "ttft", "cached_tokens")}


def chat_logprobs(entries: list[dict], tok) -> dict:
    """OpenAI chat `logprobs` from the worker's entries ({"id", "logprob", "top": [(id, logprob)]})."""
    def one(i, lp):
        b = tok.piece_bytes[i]
        return {"token": b.decode("utf-8", "replace"), "logprob": lp, "bytes": list(b)}
    return {"content": [{**one(e["id"], e["logprob"]), "top_logprobs": [one(i, lp) for i, lp in e["top"]]}
                        for e in entries], "refusal": None}


def completion_logprobs(entries: list[dict], tok, offset: int = 0) -> dict:
    """The legacy completions `logprobs`: tokens, their logprobs, the alternatives as {token: logprob}, and
    each token's character offset in the text (from `offset`, the characters streamed before). An echoed
    prompt's first token has no logprob (nothing precedes it): null, as OpenAI writes it."""
    tokens = [tok.pieces[e["id"]] for e in entries]
    offsets, at = [], offset
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": tokens, "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [None if e["logprob"] is None else {tok.pieces[i]: lp for i, lp in e["top"]}
                             for e in entries], "text_offset": offsets}


def chat_chunk(cid: str, model: str, delta: dict, finish=None, logprobs=None, **extra) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}], **extra}


def completion_chunk(cid: str, model: str, text: str, finish=None, logprobs=None, **extra) -> dict:
    return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}], **extra}


def chat_response(cid: str, model: str, text: str, done: dict, bonds=None, context=None, logprobs=None) -> dict:
    msg = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": msg, "logprobs": logprobs, "finish_reason": done["finish_reason"]}
    if bonds is not None:
        choice["asa_bonds"] = bonds
        choice["asa_context"] = context
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [choice], "usage": usage(done), "asa_stats": asa_stats(done)}


def completion_response(cid: str, model: str, text: str, done: dict, bonds=None, context=None,
                        logprobs=None) -> dict:
    choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": done["finish_reason"]}
    if bonds is not None:
        choice["asa_bonds"] = bonds
        choice["asa_context"] = context
    return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [choice], "usage": usage(done), "asa_stats": asa_stats(done)}
