"""The payment-session API and the agent page, as a Starlette app.

This module owns the HTTP face of `AssistService`: the routes below, the bearer token, the
JSON error shape `{"error", "detail"}` (plus `required` when fields are missing), the
Server-Sent Events stream of a payment, and the static agent page under `/assist/`.

    GET  /v1/calls                           the assisted calls in progress
    POST /v1/calls/{call_id}/payments        {transaction, idempotency_key, callback?} -> 201
    GET  /v1/payments/{payment_id}           the payment's state
    POST /v1/payments/{payment_id}           {capture, prompt?} | {status: complete|cancel}
    GET  /v1/payments/{payment_id}/events    text/event-stream, each `data:` a state object
    GET  /assist/                            the agent page (HTML, JS and CSS; no data in it)

Every /v1 request needs `Authorization: Bearer <assist.api_token>` (compared in constant time),
else 401. The token is never taken from the URL, the events route included: the agent page reads
the stream with `fetch` (which can send the header) rather than `EventSource` (which cannot).
The page itself holds nothing secret and is served without the token; the agent types the
token into it.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from spg_media.assist.service import ApiError, AssistService

log = logging.getLogger("spg.assist")

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = 16 * 1024
NO_STORE = {"cache-control": "no-store"}
# The page loads only its own script and style and talks only to this origin.
PAGE_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}

Endpoint = Callable[[Request], Awaitable[Response]]


def error_response(status: int, error: str, detail: str, **extra: Any) -> JSONResponse:
    headers = dict(NO_STORE)
    if status == 401:
        headers["www-authenticate"] = 'Bearer realm="spg-assist"'
    return JSONResponse({"error": error, "detail": detail, **extra}, status, headers=headers)


def build_app(service: AssistService, api_token: str) -> Starlette:
    """The API and the page; requests with another token than `api_token` get 401."""
    if not api_token:
        raise ValueError("the assist API needs a token")
    expected = api_token.encode("utf-8")

    def guarded(endpoint: Endpoint) -> Endpoint:
        async def checked(request: Request) -> Response:
            header = request.headers.get("authorization", "")
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not given:
                return error_response(401, "unauthorized", "Authorization: Bearer <token> needed")
            if not hmac.compare_digest(given.strip().encode("utf-8"), expected):
                return error_response(401, "unauthorized", "wrong token")
            try:
                return await endpoint(request)
            except ApiError as exc:
                return error_response(exc.status, exc.error, exc.detail, **exc.extra)

        return checked

    async def list_calls(request: Request) -> Response:
        return JSONResponse(service.calls(), headers=NO_STORE)

    async def create_payment(request: Request) -> Response:
        body = await _json_body(request)
        created = await service.create_payment(
            request.path_params["call_id"],
            body.get("transaction"),
            body.get("idempotency_key"),
            body.get("callback"),
        )
        return JSONResponse(created, 201, headers=NO_STORE)

    async def get_payment(request: Request) -> Response:
        return JSONResponse(
            service.payment_state(request.path_params["payment_id"]), headers=NO_STORE
        )

    async def update_payment(request: Request) -> Response:
        body = await _json_body(request)
        state = service.update_payment(request.path_params["payment_id"], body)
        return JSONResponse(state, headers=NO_STORE)

    async def payment_events(request: Request) -> Response:
        stream = service.events(request.path_params["payment_id"])
        first = await anext(stream)  # ApiError (404) here, before the 200 goes out
        assert first is not None  # the state now comes first

        async def frames() -> AsyncIterator[bytes]:
            try:
                yield _frame(first)
                async for state in stream:
                    yield b": keep-alive\n\n" if state is None else _frame(state)
            finally:
                await stream.aclose()  # the reader left: unsubscribe now, not at collection

        return StreamingResponse(
            frames(),
            media_type="text/event-stream",
            headers={**NO_STORE, "x-accel-buffering": "no"},
        )

    async def page_redirect(request: Request) -> Response:
        return RedirectResponse("/assist/", 308)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        words = {404: "not-found", 405: "method-not-allowed"}
        return error_response(
            exc.status_code, words.get(exc.status_code, "bad-request"), str(exc.detail)
        )

    routes = [
        Route("/v1/calls", guarded(list_calls), methods=["GET"]),
        Route("/v1/calls/{call_id}/payments", guarded(create_payment), methods=["POST"]),
        Route("/v1/payments/{payment_id}", guarded(get_payment), methods=["GET"]),
        Route("/v1/payments/{payment_id}", guarded(update_payment), methods=["POST"]),
        Route("/v1/payments/{payment_id}/events", guarded(payment_events), methods=["GET"]),
        Route("/assist", page_redirect, methods=["GET"]),
        Mount("/assist", app=_PageFiles(directory=STATIC_DIR, html=True), name="assist"),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


class _PageFiles(StaticFiles):
    """The page's files, with headers that keep it to its own origin and out of caches."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(PAGE_HEADERS)
        return response


async def _json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; ApiError 400/413/415 for anything else."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise ApiError(413, "too-large", f"at most {MAX_BODY_BYTES} bytes")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise ApiError(415, "bad-request", "Content-Type: application/json needed")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, "too-large", f"at most {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "bad-request", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad-request", "the body must be a JSON object")
    return body


def _frame(state: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(state, separators=(",", ":")).encode() + b"\n\n"
