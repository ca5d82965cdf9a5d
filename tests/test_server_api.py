"""The chat app's OpenAI-compatible API against a live uvicorn server on 127.0.0.1 (tiny test checkpoints):
streaming and not, the errors, the queue bound, cancellation on disconnect, session reuse across turns,
the asa_bonds extension, and the `openai` Python client."""
from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("sse_starlette")

from apps.server.app import ServerConfig, create_app  # noqa: E402
from apps.server.conversations import TEMPLATES  # noqa: E402
from apps.server.live import LiveServer  # noqa: E402
from asa_runtime.generate import load, stream_generate  # noqa: E402

MODEL = "tiny"
LONG_RUNNER = "The old lighthouse keeper"     # the tiny model's greedy run from here reaches 120 tokens (no EOS)


@pytest.fixture(scope="module")
def lm(tiny_checkpoint):
    return load(tiny_checkpoint)


def serve(lm, **kw):
    return LiveServer(create_app(lm, ServerConfig(model_id=MODEL, **kw)))


@pytest.fixture(scope="module")
def srv(lm):
    with serve(lm, parallel=2, queue=4) as s:
        yield s


@pytest.fixture
def client(srv):
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        yield c


def chat_body(content="Where are you going?", **kw):
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "temperature": 0, **kw}


def sse(resp) -> list:
    """Parsed `data:` payloads of an SSE response, '[DONE]' kept as the string."""
    out = []
    for line in resp.iter_lines():
        if line.startswith("data: "):
            d = line[6:]
            out.append(d if d == "[DONE]" else json.loads(d))
    return out


def solo(lm, prompt, n, stops=()):
    """The library's own greedy run of the same prompt on a fresh session (the reference)."""
    return "".join(r.text for r in stream_generate(lm, prompt, n, temp=0, stop=stops))


def wait_for(pred, timeout=10.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


# ---- happy paths -----------------------------------------------------------------------------------
def test_models_and_health(client):
    m = client.get("/v1/models").json()
    assert m["object"] == "list" and [d["id"] for d in m["data"]] == [MODEL]
    assert m["data"][0]["asa"]["ctx_size"] == 128
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model"] == MODEL


def test_chat_non_streaming_matches_library(client, lm):
    r = client.post("/v1/chat/completions", json=chat_body(max_tokens=12))
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["object"] == "chat.completion" and d["model"] == MODEL
    ch = d["choices"][0]
    assert ch["message"]["role"] == "assistant" and ch["finish_reason"] in ("stop", "length")
    tpl = TEMPLATES[ServerConfig().chat_template]
    prompt = tpl.encode(lm.tokenizer, [{"role": "user", "content": "Where are you going?"}])
    assert ch["message"]["content"] == solo(lm, prompt, 12, tpl.stops)
    u = d["usage"]
    assert u["prompt_tokens"] == len(prompt)
    assert 1 <= u["completion_tokens"] <= 12 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert "asa_bonds" not in ch                           # extension off by default


def test_completion_streaming_equals_non_streaming(client, lm):
    body = {"model": MODEL, "prompt": "The old lighthouse keeper", "max_tokens": 20, "temperature": 0}
    whole = client.post("/v1/completions", json=body).json()
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" for c in chunks)
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == whole["choices"][0]["text"] == solo(lm, "The old lighthouse keeper", 20)
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["usage"]["completion_tokens"] == 20
    assert len([c for c in chunks if c["choices"][0]["text"]]) > 3          # streamed piece by piece
    assert not any("asa_bonds" in c for c in chunks)


def test_chat_streaming_with_usage_chunk_and_stop(client, lm):
    body = chat_body("Maria bought three apples", max_tokens=30, stream=True,
                     stream_options={"include_usage": True})
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        events = sse(r)
    assert events[-1] == "[DONE]"
    first, usage_chunk = events[0], events[-2]
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] >= 1
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in events[:-2])
    # a stop string taken from the reply itself ends the reply just before it
    if len(text) > 6:
        stop = text[3:6]
        d = client.post("/v1/chat/completions", json=chat_body("Maria bought three apples", max_tokens=30,
                                                               stop=[stop])).json()
        assert d["choices"][0]["finish_reason"] == "stop"
        assert d["choices"][0]["message"]["content"] == text[: text.index(stop)]


def test_sampling_fields_and_seed(client):
    body = {"model": MODEL, "prompt": "When the storm came", "max_tokens": 16, "temperature": 1.0,
            "top_p": 0.9, "top_k": 20, "min_p": 0.01, "repeat_penalty": 1.2, "seed": 7}
    a = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    b = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    assert a == b                                                     # same seed, same text
    texts = {client.post("/v1/completions", json={**body, "seed": s}).json()["choices"][0]["text"]
             for s in range(4)}
    assert len(texts) > 1                                             # the seed matters


def test_completion_accepts_token_ids(client, lm):
    ids = lm.tokenizer.encode("Children gathered in the hall")
    a = client.post("/v1/completions", json={"model": MODEL, "prompt": ids, "max_tokens": 8, "temperature": 0})
    b = client.post("/v1/completions", json={"model": MODEL, "prompt": ["Children gathered in the hall"],
                                              "max_tokens": 8, "temperature": 0})
    assert a.status_code == b.status_code == 200
    assert a.json()["choices"][0]["text"] == b.json()["choices"][0]["text"]


# ---- errors ----------------------------------------------------------------------------------------
def _error(r, status, code=None, param=None):
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"} and e["message"]
    if code is not None:
        assert e["code"] == code, e
    if param is not None:
        assert e["param"] == param, e
    return e


@pytest.mark.parametrize("path,body,status,code,param", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, 400, "missing_field", "model"),
    ("/v1/chat/completions", {"model": MODEL}, 400, "missing_field", "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "invalid_value", "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400,
     "invalid_value", None),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "system", "content": "x"}]}, 400, None,
     "messages"),
    ("/v1/completions", {"model": MODEL}, 400, "missing_field", "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": "a", "temperature": 3}, 400, "invalid_value", "temperature"),
    ("/v1/completions", {"model": MODEL, "prompt": "a", "temperature": -1}, 400, "invalid_value", "temperature"),
    ("/v1/completions", {"model": MODEL, "prompt": "a", "top_p": 0}, 400, "invalid_value", "top_p"),
    ("/v1/completions", {"model": MODEL, "prompt": "a", "min_p": 1.5}, 400, "invalid_value", "min_p"),
    ("/v1/completions", {"model": MODEL, "prompt": "a", "top_k": -2}, 400, "invalid_value", "top_k"),
    ("/v1/completions", {"model": MODEL, "prompt": "a", "repeat_penalty": 0}, 400, "invalid_value",
     "repeat_penalty"),
    ("/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": 129}, 400, "invalid_value", "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": "many"}, 400, "invalid_value",
     "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "a", "n": 2}, 400, "invalid_value", "n"),
    ("/v1/completions", {"model": MODEL, "prompt": "a", "stop": ["x"] * 9}, 400, "invalid_value", "stop"),
    ("/v1/completions", {"model": MODEL, "prompt": ""}, 400, "empty_prompt", "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": [1, 99999]}, 400, None, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": ["a", "b"]}, 400, "invalid_value", "prompt"),
    ("/v1/completions", {"model": "gpt-4", "prompt": "a"}, 404, "model_not_found", "model"),
    ("/v1/chat/completions", {"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404,
     "model_not_found", "model"),
])
def test_bad_requests(client, path, body, status, code, param):
    _error(client.post(path, json=body), status, code, param)


def test_bad_json_and_non_object(client):
    _error(client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}),
           400, "invalid_json")
    _error(client.post("/v1/completions", content=b"\xff\xfe", headers={"content-type": "application/json"}),
           400, "invalid_json")
    _error(client.post("/v1/completions", json=[1, 2]), 400)
    _error(client.get("/v1/nothing"), 404)
    assert client.get("/v1/chat/completions").status_code == 405


def test_prompt_too_long(client):
    long = " ".join(["lighthouse keeper"] * 200)
    e = _error(client.post("/v1/completions", json={"model": MODEL, "prompt": long}), 400,
               "context_length_exceeded")
    assert "127" in e["message"]
    _error(client.post("/v1/chat/completions", json=chat_body(long)), 400, "context_length_exceeded")


def test_api_key(lm):
    with serve(lm, api_key="sekrit") as s, httpx.Client(base_url=s.url, timeout=30) as c:
        body = {"model": MODEL, "prompt": "The", "max_tokens": 2}
        _error(c.post("/v1/completions", json=body), 401, "invalid_api_key")
        _error(c.post("/v1/completions", json=body, headers={"Authorization": "Bearer nope"}), 401)
        _error(c.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401)
        ok = c.post("/v1/completions", json=body, headers={"Authorization": "Bearer sekrit"})
        assert ok.status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200


# ---- scheduling: queue bound, cancellation ---------------------------------------------------------
def test_queue_full_gives_429(lm):
    with serve(lm, parallel=1, queue=1, step_delay=0.02) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        body = chat_body(max_tokens=100, stream=True)
        with c.stream("POST", "/v1/chat/completions", json=body) as a:
            lines = a.iter_lines()
            next(lines)                                                   # A is running
            wait_for(lambda: c.get("/health").json()["active"] == 1)
            with c.stream("POST", "/v1/chat/completions", json=body) as b:
                assert b.status_code == 200
                wait_for(lambda: c.get("/health").json()["waiting"] == 1)  # B waits
                e = _error(c.post("/v1/chat/completions", json=chat_body(max_tokens=4)), 429, "queue_full")
                assert e["type"] == "rate_limit_error"
        wait_for(lambda: c.get("/health").json()["active"] == 0)
        h = c.get("/health").json()
        assert h["waiting"] == 0 and h["cancelled"] == 2


def test_disconnect_cancels_streaming_generation(lm):
    assert len(list(stream_generate(lm, LONG_RUNNER, 120, temp=0))) == 120     # it would run to the end
    with serve(lm, parallel=1, queue=2, step_delay=0.02) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        with c.stream("POST", "/v1/completions", json={"model": MODEL, "prompt": LONG_RUNNER, "max_tokens": 120,
                                                       "temperature": 0, "stream": True}) as r:
            got = 0
            for line in r.iter_lines():
                got += line.startswith("data: ")
                if got == 3:
                    break                                                 # leave after three chunks
        h = wait_for(lambda: (lambda h: h if h["active"] == 0 else None)(c.get("/health").json()))
        assert h["cancelled"] == 1 and h["completed"] == 0
        n = h["tokens_generated"]
        assert n < 60                                                     # far from the 120 asked for
        time.sleep(0.3)
        assert c.get("/health").json()["tokens_generated"] == n           # and the worker stopped


def test_disconnect_cancels_non_streaming_generation(lm):
    with serve(lm, parallel=1, queue=2, step_delay=0.02) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        payload = json.dumps({"model": MODEL, "prompt": LONG_RUNNER, "max_tokens": 120, "temperature": 0}).encode()
        sock = socket.create_connection((s.host, s.port))
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
        wait_for(lambda: c.get("/health").json()["tokens_generated"] > 0)
        sock.close()
        h = wait_for(lambda: (lambda h: h if h["active"] == 0 else None)(c.get("/health").json()))
        assert h["cancelled"] == 1 and h["completed"] == 0 and h["tokens_generated"] < 120, h


def test_parallel_requests_do_not_cross(srv, lm):
    import concurrent.futures as cf

    prompts = ["The old lighthouse keeper", "When the storm came in October", "Maria bought three apples",
               "Scientists measured the temperature", "Where are you going?", "The man smiled"]

    def one(p):
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            with c.stream("POST", "/v1/completions", json={"model": MODEL, "prompt": p, "max_tokens": 24,
                                                           "temperature": 0, "stream": True}) as r:
                return "".join(e["choices"][0]["text"] for e in sse(r)[:-1])

    with cf.ThreadPoolExecutor(6) as ex:
        got = list(ex.map(one, prompts))
    assert got == [solo(lm, p, 24) for p in prompts]


# ---- session reuse across turns --------------------------------------------------------------------
def test_second_turn_reuses_the_first_turns_cache(lm):
    with serve(lm, parallel=1, keep_sessions=2) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        sys_msg = {"role": "system", "content": "The lighthouse keeper climbed the stairs."}
        m1 = [sys_msg, {"role": "user", "content": "Where are you going?"}]
        d1 = c.post("/v1/chat/completions", json={"model": MODEL, "messages": m1, "max_tokens": 10,
                                                  "temperature": 0}).json()
        assert d1["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        reply = d1["choices"][0]["message"]["content"]
        m2 = m1 + [{"role": "assistant", "content": reply}, {"role": "user", "content": "Up there?"}]
        d2 = c.post("/v1/chat/completions", json={"model": MODEL, "messages": m2, "max_tokens": 10,
                                                  "temperature": 0}).json()
        cached = d2["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert cached >= d1["usage"]["prompt_tokens"]                   # turn 1's prompt was not prefilled again
        assert cached < d2["usage"]["prompt_tokens"]
        assert d2["asa_stats"]["cached_tokens"] == cached
        tpl = TEMPLATES[ServerConfig().chat_template]
        # and reusing it changes nothing: the same reply as a fresh session computing everything
        assert d2["choices"][0]["message"]["content"] == solo(lm, tpl.encode(lm.tokenizer, m2), 10, tpl.stops)
        assert c.get("/health").json()["sessions_created"] == 1


# ---- the bonds extension ---------------------------------------------------------------------------
def _check_bonds(lm, context, bonds, text_tokens):
    pieces = lm.tokenizer.pieces
    assert context and all(isinstance(p, str) for p in context)
    n_prompt, ids, full = len(context), text_tokens, None
    if lm.planner is not None and not lm.dense:
        full = lm.planner.plan(context + [pieces[t] for t in ids])      # (N, K) positions, -1 padded
    for j, b in enumerate(bonds):
        pos = n_prompt + j
        assert b["pos"] == pos and b["token"] == ids[j] and b["text"] == pieces[ids[j]]
        keys = b["keys"]
        if full is not None:
            row = full[pos]
            assert keys == [int(k) for k in row[row >= 0]]
        else:
            assert keys == list(range(pos + 1))
        assert keys[-1] == pos and keys == sorted(keys)
        assert b["key_text"] == [(context + [pieces[t] for t in ids])[k] for k in keys]
        assert len(b["weights"]) == lm.config.n_layer
        for w in b["weights"]:
            assert len(w) == len(keys) and abs(sum(w) - 1) < 1e-3 and min(w) >= 0


def test_bonds_extension_streaming(client, lm):
    body = {"model": MODEL, "prompt": "The old lighthouse keeper climbed", "max_tokens": 10, "temperature": 0,
            "stream": True, "asa_bonds": True}
    with client.stream("POST", "/v1/completions", json=body) as r:
        events = sse(r)[:-1]
    context = next(e["asa_context"] for e in events if "asa_context" in e)
    assert context == [lm.tokenizer.pieces[t] for t in lm.tokenizer.encode(body["prompt"])]
    bonds = [b for e in events for b in e.get("asa_bonds", [])]
    assert len(bonds) == 10
    _check_bonds(lm, context, bonds, [b["token"] for b in bonds])
    # the tokens are the ones the text was made of
    text = "".join(e["choices"][0]["text"] for e in events)
    assert lm.tokenizer.decode([b["token"] for b in bonds]) == text


def test_bonds_extension_non_streaming_dense(tiny_dense_checkpoint):
    dense = load(tiny_dense_checkpoint)
    with serve(dense) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        d = c.post("/v1/chat/completions", json=chat_body("Up there", max_tokens=6, asa_bonds=True)).json()
        ch = d["choices"][0]
        assert ch["asa_bonds"]
        _check_bonds(dense, ch["asa_context"], ch["asa_bonds"], [b["token"] for b in ch["asa_bonds"]])


# ---- the openai client -----------------------------------------------------------------------------
def test_openai_client(srv, lm):
    openai = pytest.importorskip("openai")
    cl = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", timeout=30, max_retries=0)
    assert [m.id for m in cl.models.list()] == [MODEL]
    r = cl.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Where are you going?"}],
                                   max_tokens=12, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 1
    parts = []
    for chunk in cl.chat.completions.create(model=MODEL, messages=[{"role": "user",
                                                                     "content": "Where are you going?"}],
                                            max_tokens=12, temperature=0, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    assert "".join(parts) == r.choices[0].message.content
    c = cl.completions.create(model=MODEL, prompt="The old man", max_tokens=8, temperature=0, seed=1)
    assert c.choices[0].text == solo(lm, "The old man", 8)
    lp = cl.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Where are you going?"}],
                                    max_tokens=4, temperature=0, logprobs=True, top_logprobs=2).choices[0].logprobs
    assert lp.content and all(len(t.top_logprobs) == 2 and t.logprob <= 0 and t.bytes for t in lp.content)
    assert "".join(t.token for t in lp.content) == r.choices[0].message.content[: len("".join(t.token for t in lp.content))]
    with pytest.raises(openai.NotFoundError):
        cl.completions.create(model="gpt-4", prompt="x")
    with pytest.raises(openai.BadRequestError) as e:
        cl.completions.create(model=MODEL, prompt="x", temperature=5)
    assert "temperature" in str(e.value)


# ---- the CLI ---------------------------------------------------------------------------------------
def test_serve_cli_bad_input_is_one_line():
    from click.testing import CliRunner

    from asa_runtime.cli import main

    r = CliRunner().invoke(main, ["serve", "--model", "/no/such/model"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip().startswith("Error:") and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(main, ["serve", "--model", "/no/such/model", "--host", "0.0.0.0"])
    assert "warning: binding 0.0.0.0 without --api-key" in r.output
    r = CliRunner().invoke(main, ["serve", "--port", "99999"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1


# ---- llama-server's /tokenize and /detokenize --------------------------------------------------------
def test_tokenize_and_detokenize_round_trip(client, lm):
    text = "The lighthouse keeper said: “naïve” — 42 ships."
    r = client.post("/tokenize", json={"content": text})
    assert r.status_code == 200
    ids = r.json()["tokens"]
    assert ids == lm.tokenizer.encode(text) and len(ids) > 5
    assert client.post("/detokenize", json={"tokens": ids}).json() == {"content": text}
    pieces = client.post("/tokenize", json={"content": text, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == ids
    # each piece is its text, or its bytes where it is only part of a character (as llama-server answers)
    joined = b"".join(bytes(p["piece"]) if isinstance(p["piece"], list) else p["piece"].encode() for p in pieces)
    assert joined == text.encode()
    assert any(isinstance(p["piece"], list) for p in pieces)     # the tiny tokenizer splits “, ï, — into bytes
    # the same ids a completion's prompt gets: its usage counts them
    done = client.post("/v1/completions", json={"model": MODEL, "prompt": text, "max_tokens": 1, "temperature": 0})
    assert done.json()["usage"]["prompt_tokens"] == len(ids)
    assert client.post("/tokenize", json={"content": ""}).json() == {"tokens": []}


@pytest.mark.parametrize("path,body,param", [
    ("/tokenize", {}, "content"),
    ("/tokenize", {"content": 5}, "content"),
    ("/tokenize", {"content": "x" * 4_000_001}, "content"),
    ("/detokenize", {"tokens": "abc"}, "tokens"),
    ("/detokenize", {"tokens": [1, 99999]}, "tokens"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
])
def test_tokenize_bad_requests(client, path, body, param):
    _error(client.post(path, json=body), 400, param=param)


def test_tokenize_and_metrics_need_the_api_key(lm):
    with serve(lm, api_key="sekrit") as s, httpx.Client(base_url=s.url, timeout=30) as c:
        _error(c.post("/tokenize", json={"content": "a"}), 401, "invalid_api_key")
        _error(c.post("/detokenize", json={"tokens": [1]}), 401, "invalid_api_key")
        _error(c.get("/metrics"), 401, "invalid_api_key")
        ok = c.post("/tokenize", json={"content": "a"}, headers={"Authorization": "Bearer sekrit"})
        assert ok.status_code == 200 and ok.json()["tokens"]


# ---- logprobs (OpenAI chat and legacy completions) ----------------------------------------------------
def _first_token_logprobs(lm, ids):
    """The library's reference: log-softmax of the model's logits after the prompt."""
    import torch

    from asa_runtime.session import Session

    logits, _ = Session(lm).prepare(ids)
    return torch.log_softmax(torch.as_tensor(logits)[: lm.tokenizer.vocab_size].float(), -1)


def test_chat_logprobs_match_the_model_and_stream_the_same(client, lm):
    body = chat_body(LONG_RUNNER, max_tokens=8, logprobs=True, top_logprobs=3)
    d = client.post("/v1/chat/completions", json=body).json()
    ch = d["choices"][0]
    content = ch["logprobs"]["content"]
    assert len(content) == d["usage"]["completion_tokens"] == 8 and ch["finish_reason"] == "length"
    # the bytes join to the text (the tiny random model emits broken UTF-8: both sides show it as U+FFFD)
    assert bytes(b for e in content for b in e["bytes"]).decode("utf-8", "replace") == ch["message"]["content"]
    for e in content:                                  # greedy: the chosen token is the most likely one
        tops = e["top_logprobs"]
        assert len(tops) == 3 and tops[0]["token"] == e["token"] and tops[0]["logprob"] == pytest.approx(e["logprob"])
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        assert all(t["logprob"] <= 0 for t in tops)
    tpl = TEMPLATES[ServerConfig().chat_template]
    ref = _first_token_logprobs(lm, tpl.encode(lm.tokenizer, [{"role": "user", "content": LONG_RUNNER}]))
    top = ref.topk(3)
    assert [t["logprob"] for t in content[0]["top_logprobs"]] == pytest.approx(top.values.tolist(), abs=1e-4)
    assert [bytes(t["bytes"]) for t in content[0]["top_logprobs"]] == [lm.tokenizer.piece_bytes[i]
                                                                       for i in top.indices.tolist()]
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        chunks = [c for c in sse(r) if c != "[DONE]"]
    streamed = [e for c in chunks if c["choices"] and c["choices"][0]["logprobs"]
                for e in c["choices"][0]["logprobs"]["content"]]
    assert [(e["token"], round(e["logprob"], 4)) for e in streamed] == [(e["token"], round(e["logprob"], 4))
                                                                        for e in content]
    plain = client.post("/v1/chat/completions", json=chat_body(LONG_RUNNER, max_tokens=2)).json()
    assert plain["choices"][0]["logprobs"] is None                        # off unless asked


def test_completion_logprobs_legacy_shape(client, lm):
    body = {"model": MODEL, "prompt": LONG_RUNNER, "max_tokens": 6, "temperature": 0, "logprobs": 2}
    d = client.post("/v1/completions", json=body).json()
    ch = d["choices"][0]
    lp = ch["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 6
    assert "".join(lp["tokens"]) == ch["text"]
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(6)]
    assert all(len(alts) <= 2 and max(alts.values()) == pytest.approx(tl)
               for alts, tl in zip(lp["top_logprobs"], lp["token_logprobs"]))
    ref = _first_token_logprobs(lm, lm.tokenizer.encode(LONG_RUNNER))
    assert lp["token_logprobs"][0] == pytest.approx(float(ref.max()), abs=1e-4)
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        chunks = [c for c in sse(r) if c != "[DONE]" and c["choices"][0]["logprobs"]]
    assert [c["choices"][0]["logprobs"]["text_offset"][0] for c in chunks] == lp["text_offset"]


@pytest.mark.parametrize("path,extra,param", [
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
    ("/v1/completions", {"logprobs": 6}, "logprobs"),
])
def test_logprobs_bad_requests(client, path, extra, param):
    body = chat_body() if "chat" in path else {"model": MODEL, "prompt": "a"}
    _error(client.post(path, json={**body, **extra}), 400, "invalid_value", param)


def test_metrics_count_prompt_and_generated_tokens(lm):
    with serve(lm) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        def scrape():
            r = c.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            vals = {}
            for line in r.text.splitlines():
                if line and not line.startswith("#"):
                    k, v = line.split()
                    vals[k] = float(v)
            return vals
        before = scrape()
        assert before["asa_prompt_tokens_total"] == before["asa_tokens_predicted_total"] == 0
        body = {"model": MODEL, "prompt": LONG_RUNNER, "max_tokens": 5, "temperature": 0}
        d = c.post("/v1/completions", json=body).json()
        after = scrape()
        assert after["asa_prompt_tokens_total"] == d["usage"]["prompt_tokens"]
        assert after["asa_tokens_predicted_total"] == d["usage"]["completion_tokens"] == 5
        assert after["asa_requests_completed_total"] == 1 and after["asa_requests_processing"] == 0
        c.post("/v1/completions", json=body)             # the same prompt again: served from the kept session
        again = scrape()
        assert again["asa_prompt_tokens_total"] == 2 * d["usage"]["prompt_tokens"]
        assert again["asa_prompt_tokens_computed_total"] < again["asa_prompt_tokens_total"]


def test_a_body_over_the_limit_is_refused_before_it_is_read(lm):
    with serve(lm, max_body_bytes=4096) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        big = {"model": MODEL, "prompt": "x" * 5000}
        _error(c.post("/v1/completions", json=big), 413, "request_too_large")
        _error(c.post("/tokenize", json={"content": "y" * 5000}), 413, "request_too_large")

        def chunked():                                  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b" " * 1000
        _error(c.post("/v1/completions", content=chunked(), headers={"content-type": "application/json"}), 413)
        ok = c.post("/v1/completions", json={"model": MODEL, "prompt": "The", "max_tokens": 2})
        assert ok.status_code == 200


def test_completion_echo_prepends_the_prompt(client, lm):
    body = {"model": MODEL, "prompt": LONG_RUNNER, "max_tokens": 5, "temperature": 0}
    plain = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    echoed = client.post("/v1/completions", json={**body, "echo": True}).json()["choices"][0]["text"]
    assert echoed == LONG_RUNNER + plain
    with client.stream("POST", "/v1/completions", json={**body, "echo": True, "stream": True}) as r:
        chunks = [c for c in sse(r) if c != "[DONE]"]
    assert chunks[0]["choices"][0]["text"] == LONG_RUNNER
    assert "".join(c["choices"][0]["text"] for c in chunks) == echoed
    ids = lm.tokenizer.encode(LONG_RUNNER)              # token-id prompts echo their text
    by_ids = client.post("/v1/completions", json={**body, "prompt": ids, "echo": True}).json()["choices"][0]["text"]
    assert by_ids == echoed


def _prompt_logprobs(lm, ids):
    """The library's reference: each prompt token's logprob under the logits of the positions before it."""
    import torch

    from asa_runtime.session import Session

    every = Session(lm).feed(ids, all_logits=True)[:, : lm.tokenizer.vocab_size].float()
    lp = torch.log_softmax(every, -1)
    return [None] + [float(lp[t - 1, ids[t]]) for t in range(1, len(ids))]


def test_echo_with_logprobs_scores_the_prompt(client, lm):
    """How lm-eval-harness scores text through an OpenAI completions API: echo, logprobs, max_tokens 0."""
    text = "The old lighthouse keeper looked at the sea"
    ids = lm.tokenizer.encode(text)
    body = {"model": MODEL, "prompt": text, "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0}
    d = client.post("/v1/completions", json=body).json()
    ch = d["choices"][0]
    lp = ch["logprobs"]
    assert ch["text"] == text and ch["finish_reason"] == "length" and d["usage"]["completion_tokens"] == 0
    assert lp["tokens"] == [lm.tokenizer.pieces[i] for i in ids]
    ref = _prompt_logprobs(lm, ids)
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == pytest.approx(ref[1:], abs=1e-4)
    assert all(len(alts) == 1 and max(alts.values()) >= tl - 1e-6
               for alts, tl in zip(lp["top_logprobs"][1:], lp["token_logprobs"][1:]))
    # scoring twice gives the same numbers (the kept session is not reused half-way)
    again = client.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]["token_logprobs"]
    assert again[1:] == pytest.approx(lp["token_logprobs"][1:], abs=1e-5)
    # with generation after it: the prompt's entries, then the completion's, as without echo
    gen = client.post("/v1/completions", json={**body, "max_tokens": 3}).json()["choices"][0]
    plain = client.post("/v1/completions", json={**body, "max_tokens": 3, "echo": False}).json()["choices"][0]
    assert gen["text"] == text + plain["text"]
    assert gen["logprobs"]["tokens"] == lp["tokens"] + plain["logprobs"]["tokens"]
    assert gen["logprobs"]["token_logprobs"][len(ids):] == pytest.approx(plain["logprobs"]["token_logprobs"], abs=1e-4)
    with client.stream("POST", "/v1/completions", json={**body, "max_tokens": 3, "stream": True}) as r:
        chunks = [c for c in sse(r) if c != "[DONE]"]
    first = chunks[0]["choices"][0]
    assert first["text"] == text and first["logprobs"]["tokens"] == lp["tokens"]
    bare = client.post("/v1/completions", json={**body, "logprobs": 0}).json()["choices"][0]["logprobs"]
    assert bare["token_logprobs"] == lp["token_logprobs"] and bare["top_logprobs"][1:] == [{}] * (len(ids) - 1)
    _error(client.post("/v1/completions", json={**body, "echo": False}), 400, "invalid_value")    # 0 needs echo
