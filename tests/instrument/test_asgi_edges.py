"""Edges of the ASGI contract that uvicorn 0.5x does not produce on its own: a mounted app under a
``root_path``, an ASGI 2.4 server whose ``send`` raises ``OSError`` once the client is gone, a task
cancelled by its server, an app that returns without answering; and the HTTP status table."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import httpx
import pytest

from qwen_fluent.instrument import RequestLogMiddleware, status_of
from tests.instrument.openai_app import Served, make_app

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()


def test_a_server_root_path_is_removed_before_matching(log):
    app = RequestLogMiddleware(make_app(), output=str(log.path), gpu_memory="off", environ={})
    with Served(app, root_path="/llm") as served:
        # uvicorn puts root_path in front of the path (ASGI); the route matched is the app's own
        response = httpx.post(served.url + "/v1/chat/completions", json={"model": "m", "messages": []})
        assert response.status_code == 200
    assert log.one()["path"] == "/v1/chat/completions"


async def _call(app: Any, send_fails_after: int | None = None, cancel_after: int | None = None) -> list[dict]:
    """Drive an ASGI app directly, as a server whose client vanishes would."""
    sent: list[dict] = []
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": "POST", "path": "/v1/chat/completions", "root_path": "", "headers": [], "query_string": b""}

    async def receive() -> dict:
        if not sent:
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.sleep(3600)  # no disconnect message: the ASGI 2.4 way is send() raising
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if send_fails_after is not None and len(sent) >= send_fails_after:
            raise OSError("client went away")
        sent.append(message)

    task = asyncio.ensure_future(app(scope, receive, send))
    if cancel_after is not None:
        while len(sent) < cancel_after:
            await asyncio.sleep(0.001)
        task.cancel()
    try:
        await task
    except (OSError, asyncio.CancelledError):
        pass
    return sent


async def _streaming_app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for i in range(50):
        chunk = {"id": "x", "model": "m", "choices": [{"index": 0, "delta": {"content": f"t{i}"}}]}
        await send({"type": "http.response.body", "body": b"data: " + json.dumps(chunk).encode() + b"\n\n",
                    "more_body": True})
        await asyncio.sleep(0.001)
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


def _middleware(app: Any) -> tuple[RequestLogMiddleware, io.StringIO]:
    out = io.StringIO()
    return RequestLogMiddleware(app, output=out, gpu_memory="off", environ={}), out


def test_send_raising_oserror_is_cancelled():
    mw, out = _middleware(_streaming_app)
    sent = asyncio.run(_call(mw, send_fails_after=6))
    line = json.loads(out.getvalue())
    assert len(sent) == 6  # the start and five chunks reached the client
    assert (line["status"], line["http_status"], line["output_tokens"], line["tokens_estimated"]) == (
        "cancelled", 200, 5, True)
    assert "error_type" not in line


def test_a_cancelled_task_is_cancelled():
    mw, out = _middleware(_streaming_app)
    asyncio.run(_call(mw, cancel_after=4))
    line = json.loads(out.getvalue())
    assert (line["status"], line["http_status"]) == ("cancelled", 200)
    assert 3 <= line["output_tokens"] <= 4


def test_an_app_that_returns_without_answering_is_a_500():
    async def silent(scope: Any, receive: Any, send: Any) -> None:
        await receive()

    mw, out = _middleware(silent)
    assert asyncio.run(_call(mw)) == []
    line = json.loads(out.getvalue())
    assert (line["status"], line["http_status"], line["error_type"]) == ("error", 500, "no_response")


def test_lifespan_and_websocket_scopes_pass_through_untouched():
    seen = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["type"], receive, send))

    mw, out = _middleware(app)

    async def receive() -> dict:
        return {}

    async def send(message: dict) -> None:
        return None

    for kind in ("lifespan", "websocket"):
        asyncio.run(mw({"type": kind, "path": "/v1/chat/completions"}, receive, send))
    assert seen == [("lifespan", receive, send), ("websocket", receive, send)]  # the server's own callables
    assert out.getvalue() == ""


@pytest.mark.parametrize(("code", "status"), [
    (200, "success"), (201, "success"), (299, "success"), (400, "client_error"), (404, "client_error"),
    (408, "timeout"), (429, "client_error"), (499, "cancelled"), (500, "error"), (503, "error"), (504, "timeout"),
    (101, "unknown"), (302, "unknown")])
def test_http_status_table_matches_the_receivers(code, status):
    from qwen_fluent.records.status import fold_status

    assert status_of(code) == status
    assert fold_status(status, code, False)[0] == fold_status(None, code, False)[0] == status
