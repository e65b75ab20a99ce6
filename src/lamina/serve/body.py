"""A request body read no further than a limit: an upload over it is refused with 413 as soon as it
crosses the limit (or at once, when its Content-Length says so), before it fills memory or disk."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException


class BodyLimit:
    """ASGI middleware. Past the limit, receiving raises HTTPException(413) inside whatever is reading
    the body (a form parser, request.body()), which the app answers like any other refusal."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send, int(declared))
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, f"the request is over the limit of {self.limit:,} bytes")
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, send, size: int) -> None:
        body = json.dumps({"error": f"the request is {size:,} bytes, over the limit of {self.limit:,}"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]  # fmt: skip
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
