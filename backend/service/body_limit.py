"""Request bodies over MAX_REQUEST_BYTES get 413 before the rest of them is read."""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException


class BodyLimit:
    """ASGI middleware answering 413 to a request body over `max_bytes`, before more of it is read."""

    def __init__(self, app: Any, *, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # chunked bodies declare no length
                raise _TooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"detail": f"request body over MAX_REQUEST_BYTES={self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(HTTPException):
    """Raised while reading a body that outgrew the limit; an HTTPException so FastAPI answers 413 itself."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body over MAX_REQUEST_BYTES={max_bytes} bytes")
