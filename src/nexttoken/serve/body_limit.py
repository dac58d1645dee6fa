"""Refusing a request body too large to read, before reading it."""

from starlette.datastructures import Headers

from nexttoken.serve.errors import BodyTooLarge, error_response

MAX_BODY_BYTES = 8 * 2**20  # far above any prompt that fits a context window


class BodyLimit:
    """Answers 413 to a body whose declared length is too large. Plain ASGI, not Starlette's
    BaseHTTPMiddleware, which hides a client's disconnect from the endpoints."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            declared = Headers(scope=scope).get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                response = error_response(BodyTooLarge(f"request body of {declared} bytes exceeds {MAX_BODY_BYTES}"))
                return await response(scope, receive, send)
        await self.app(scope, receive, send)
