"""Every error the server answers and how: typed exceptions, one table from each type to its HTTP
status and OpenAI's `type` and `code`, and the handlers that write {"error": {"message", "type",
"param", "code"}} from that table."""

from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nexttoken.errors import ContextWindowExceeded, NextTokenError
from nexttoken.serve.engine import EngineFull


class APIError(Exception):
    """A request the server refuses itself; `param` names the request field at fault, where one is."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class InvalidRequest(APIError):
    """A body that parses but asks for something that cannot be done."""


class PromptTooLong(APIError):
    """The prompt, or the prompt and the tokens asked for, do not fit the context window."""


class WrongAPIKey(APIError):
    """No API key, or not the server's."""


class ModelNotFound(APIError):
    """A model this server does not serve."""


class BodyTooLarge(APIError):
    """A body longer than the server reads."""


class ClientClosed(APIError):
    """The client left before its answer (not streamed) was ready."""


@dataclass(frozen=True)
class Reply:
    status: int
    type: str = "invalid_request_error"
    code: str | None = None
    wording: str = "{}"  # the message the client reads, around the exception's own


REPLIES: dict[type[Exception], Reply] = {
    InvalidRequest: Reply(400),
    NextTokenError: Reply(400),  # the library refused the request's settings
    PromptTooLong: Reply(400, code="context_length_exceeded"),
    ContextWindowExceeded: Reply(400, code="context_length_exceeded"),
    WrongAPIKey: Reply(401, "invalid_api_key", "invalid_api_key"),
    ModelNotFound: Reply(404, code="model_not_found"),
    BodyTooLarge: Reply(413),
    EngineFull: Reply(429, "rate_limit_error", "rate_limit_exceeded", "the server is busy: {}; try again shortly"),
    ClientClosed: Reply(499),  # nginx's "client closed request": nobody is left to read it but the log
}


def reply_for(error: Exception) -> Reply:
    """The row of the error's class, or else of its nearest ancestor in the table."""
    return next(REPLIES[kind] for kind in type(error).__mro__ if kind in REPLIES)


def body(message: str, reply: Reply, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": reply.type, "param": param, "code": reply.code}}


def error_body(error: Exception) -> dict:
    """The error as OpenAI's clients read it; the library's errors name no request field."""
    reply = reply_for(error)
    return body(reply.wording.format(error), reply, getattr(error, "param", None))


def error_response(error: Exception) -> JSONResponse:
    return JSONResponse(error_body(error), status_code=reply_for(error).status)


def answer(request: Request, error: Exception) -> JSONResponse:
    return error_response(error)


def invalid_field(request: Request, error: RequestValidationError) -> JSONResponse:
    """Pydantic's first complaint, naming the top-level field (deeper parts name union members)."""
    first = error.errors()[0]
    location = [str(p) for p in first["loc"] if p != "body"]
    param = location[0] if location else None
    return error_response(InvalidRequest(f"{param or 'body'}: {first['msg']}", param))


def routing_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    """Routing and parsing failures (unknown path, wrong method, unparsable body) bring their own status."""
    return JSONResponse(body(str(error.detail), Reply(error.status_code)), status_code=error.status_code)


def add_handlers(app: FastAPI) -> None:
    for kind in REPLIES:
        app.add_exception_handler(kind, answer)
    app.add_exception_handler(RequestValidationError, invalid_field)
    app.add_exception_handler(StarletteHTTPException, routing_error)
