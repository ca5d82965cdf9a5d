"""The chat app served from the ONNX Runtime and MLX backends (`asa-run serve --backend onnx|mlx`): a live
uvicorn server on 127.0.0.1 answers like the torch backend's (same greedy text, streaming and not), and the
bonds view degrades to plan rows without weights where a backend cannot return them (ONNX)."""
from __future__ import annotations

import json

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("sse_starlette")

from apps.server.app import ServerConfig, create_app  # noqa: E402
from apps.server.live import LiveServer  # noqa: E402
from asa_runtime.generate import load  # noqa: E402

BODY = {"model": "tiny", "messages": [{"role": "user", "content": "Where are you going?"}], "temperature": 0,
        "max_tokens": 24}


def _ask(lm, **extra):
    with LiveServer(create_app(lm, ServerConfig(model_id="tiny", parallel=1, queue=2))) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as c:
        plain = c.post("/v1/chat/completions", json={**BODY, **extra})
        assert plain.status_code == 200, plain.text
        chunks = []
        with c.stream("POST", "/v1/chat/completions", json={**BODY, **extra, "stream": True}) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: ") and line[6:] != "[DONE]":
                    chunks.append(json.loads(line[6:]))
    streamed = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks)
    return plain.json(), streamed, chunks


@pytest.fixture(scope="module")
def torch_answer(tiny_checkpoint):
    plain, streamed, _ = _ask(load(tiny_checkpoint))
    assert plain["choices"][0]["message"]["content"] == streamed
    return streamed


@pytest.mark.parametrize("backend", ["onnx", "mlx"])
def test_served_answer_equals_the_torch_backend(backend, tiny_checkpoint, torch_answer):
    pytest.importorskip({"onnx": "onnxruntime", "mlx": "mlx.core"}[backend])
    lm = load(tiny_checkpoint, backend=backend)
    plain, streamed, _ = _ask(lm)
    assert plain["choices"][0]["message"]["content"] == streamed == torch_answer
    assert plain["usage"]["completion_tokens"] > 0


def test_bonds_view_from_onnx_has_rows_but_no_weights(tiny_checkpoint):
    pytest.importorskip("onnxruntime")
    _, _, chunks = _ask(load(tiny_checkpoint, backend="onnx"), asa_bonds=True, max_tokens=6)
    bonds = [b for ch in chunks for b in ch.get("asa_bonds") or []]
    assert bonds, "the bonds view sent nothing"
    with_keys = [b for b in bonds if b.get("keys")]
    assert with_keys and all(b.get("weights") is None for b in with_keys)
