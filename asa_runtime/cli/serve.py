"""`asa-run serve`: the local chat app -- an OpenAI-compatible API (/v1/models, /v1/chat/completions,
/v1/completions, streaming or not, with logprobs), llama-server's /tokenize, /detokenize and /metrics, /health, and
the chat page at / (apps/server, apps/web).
Needs the `serve` extra (pip install -e ".[serve]"). Binds 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import click

from asa_runtime.errors import USER_ERRORS, one_line

from . import main
from .generate import OneLineCommand, load_model, model_options, sampler_kwargs

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@main.command("serve", cls=OneLineCommand)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (anything but loopback exposes the model to your network).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--api-key", default=None, envvar="ASA_API_KEY",
              help="Require 'Authorization: Bearer KEY' on /v1 (env ASA_API_KEY).")
@click.option("--parallel", type=click.IntRange(min=1), default=4, show_default=True,
              help="Requests generating at once (interleaved token by token on one model worker).")
@click.option("--queue", "queue", type=click.IntRange(min=0), default=16, show_default=True,
              help="Requests allowed to wait beyond --parallel; more are answered 429.")
@click.option("--keep-sessions", type=click.IntRange(min=0), default=8, show_default=True,
              help="Idle conversations whose KV cache is kept so their next turn reuses it.")
@click.option("-n", "--max-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Reply length when a request gives no max_tokens.")
@click.option("--model-id", default=None, help="Name clients use in 'model' (default: --model's name).")
@model_options
def serve_cmd(host, port, api_key, parallel, queue, keep_sessions, max_tokens, model_id, **o):
    """Serve a model over an OpenAI-compatible HTTP API with a chat page at /."""
    try:
        import uvicorn

        from apps.server.app import ServerConfig, create_app
    except ImportError as e:
        raise click.ClickException(f"asa-run serve needs the serve extra (pip install -e \".[serve]\"): "
                                   f"{one_line(e)}") from None
    if host not in LOCAL_HOSTS and not api_key:
        click.echo(f"warning: binding {host} without --api-key: anyone who can reach this address can use "
                   f"the model", err=True)
    try:
        lm = load_model(o)
        ctx = o["ctx_size"] or lm.config.max_seq_len
        if o["max_kv_size"] and lm.dense and o["max_kv_size"] < ctx:
            raise click.ClickException("--max-kv-size needs a sparse ASA plan: this model is dense")
        name = model_id or (o["model"].rstrip("/").split("/")[-1])
        cfg = ServerConfig(model_id=name, api_key=api_key, ctx_size=ctx, max_kv_size=o["max_kv_size"] or None,
                           prefill_chunk=o["prefill_chunk"] or None, parallel=parallel, queue=queue,
                           keep_sessions=keep_sessions, default_max_tokens=min(max_tokens, ctx),
                           sampling=sampler_kwargs(o))
        app = create_app(lm, cfg)
    except click.ClickException:
        raise
    except USER_ERRORS as e:
        raise click.ClickException(one_line(e)) from None
    click.echo(f"asa-run serve: {name} on http://{host}:{port}/ (API at /v1, parallel {parallel}, "
               f"queue {queue}, context {ctx})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info" if o["verbose"] else "warning")
