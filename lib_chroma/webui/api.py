"""HTTP API: reject bad ``alwayson_scripts`` arguments before generation starts.

A1111 catches every exception raised by a script hook, so a bad value cannot fail a request from inside
``process()``. This pure-ASGI middleware reads the JSON body of ``POST /sdapi/v1/txt2img`` and ``/img2img``,
validates the extension's ``args`` (positional list, or one dict of named fields) with
:mod:`lib_chroma.settings`, and answers HTTP 422 ``{"error": "ValueError", "detail": "Resolution
Chromatography: <field>: <allowed>"}`` when they are invalid; otherwise it replays the body unchanged.
In-process, invalid settings still only produce an unguided image with ``RC error`` in the infotext.
"""

from __future__ import annotations

import json
from typing import Any

from lib_chroma import settings as S

PATHS = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img")


def validate_body(body: Any) -> str | None:
    """The error message for a request body, or None when the extension's arguments are fine or absent."""
    if not isinstance(body, dict):
        return None
    scripts = body.get("alwayson_scripts")
    if not isinstance(scripts, dict):
        return None
    for name, value in scripts.items():
        if str(name).lower() != S.TITLE.lower():
            continue
        if not isinstance(value, dict) or "args" not in value:
            return None
        args = value["args"]
        if not isinstance(args, list):
            return f"{S.TITLE}: args: must be a list (positional values, or one dict of named fields)"
        try:
            S.from_args(args, strict=True)
        except ValueError as e:
            return f"{S.TITLE}: {e}"
    return None


class ValidateArgsMiddleware:
    """ASGI middleware around the whole app (see module docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") not in PATHS:
            await self.app(scope, receive, send)
            return
        messages, chunks, more = [], [], True
        while more:
            msg = await receive()
            messages.append(msg)
            if msg.get("type") != "http.request":
                break
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        try:
            error = validate_body(json.loads(b"".join(chunks) or b"null"))
        except (ValueError, UnicodeDecodeError):
            error = None  # malformed JSON: the API's own validation answers
        if error is not None:
            payload = json.dumps(
                {"error": "ValueError", "detail": error, "body": "", "errors": error}
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 422,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload})
            return

        async def replay() -> dict:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)


def install(app: Any) -> None:
    """``on_app_started``: add the middleware once per app (A1111 rebuilds the stack the same way)."""
    if app is None or getattr(app, "_rc_validation", False):
        return
    app.middleware_stack = None
    app.add_middleware(ValidateArgsMiddleware)
    app._rc_validation = True
