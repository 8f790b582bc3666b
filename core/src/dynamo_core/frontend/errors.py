"""Typed errors of the serving path, and the one place they become OpenAI-shaped responses."""

from __future__ import annotations

import logging
import re

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from dynamo_core.protocols.openai import ErrorBody, ErrorResponse

log = logging.getLogger(__name__)


class OpenAIError(Exception):
    """An error the client should see, with its HTTP status and OpenAI error fields."""

    status_code = 400
    error_type = "invalid_request_error"
    headers: dict[str, str] | None = None  # e.g. Retry-After of a 429

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code

    def body(self) -> ErrorResponse:
        return ErrorResponse(ErrorBody(self.message, self.error_type, self.param, self.code))


class BadRequestError(OpenAIError):
    pass


class ModelNotFoundError(OpenAIError):
    status_code = 404

    def __init__(self, model: str):
        super().__init__(f"The model '{model}' does not exist.", param="model", code="model_not_found")


class ServiceUnavailableError(OpenAIError):
    status_code = 503
    error_type = "service_unavailable"


class EngineError(OpenAIError):
    """The worker failed the request after it was accepted."""

    status_code = 500
    error_type = "internal_error"


_PATH = re.compile(r"at `\$\.([A-Za-z_][\w.\[\]]*)`")


def from_validation_error(exc: msgspec.ValidationError | msgspec.DecodeError) -> BadRequestError:
    """msgspec says e.g. "Expected `int`, got `str` - at `$.max_tokens`": name the param."""
    text = str(exc)
    match = _PATH.search(text)
    param = match.group(1) if match else None
    if isinstance(exc, msgspec.ValidationError):
        message = text
    else:
        message = f"Invalid JSON body: {text}"
    if "Object missing required field" in text:
        field = re.search(r"field `(\w+)`", text)
        if field:
            param = f"{param}.{field.group(1)}" if param else field.group(1)
    return BadRequestError(message, param=param)


def error_response(error: OpenAIError) -> Response:
    return Response(
        content=msgspec.json.encode(error.body()),
        status_code=error.status_code,
        media_type="application/json",
        headers=error.headers,
    )


def openai_error_handler(_request: Request, exc: Exception) -> Response:
    if isinstance(exc, OpenAIError):
        return error_response(exc)
    if isinstance(exc, HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        error = OpenAIError(str(exc.detail))
        error.status_code, error.error_type = exc.status_code, kind
        return error_response(error)
    log.exception("unhandled error in the frontend")
    error = EngineError(f"internal error: {type(exc).__name__}")
    return error_response(error)
