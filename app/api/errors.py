"""Errors as the API answers them: ``{"error": "...", "detail"?: ...}`` with the right status.

``ApiError`` is raised by the endpoints; FastAPI's own failures (an invalid request, a route
that does not exist) are put in the same shape, a database that does not answer
(``StoreUnavailable``) is a 503 with Retry-After, and a run or a check refused
(``CheckRefused``) answers the status it names, with Retry-After where trying again later
helps. An invalid request's detail names the fields
and the rule they broke, never the values sent (a password may be among them). An unexpected
failure is a 500 with a generic line; its traceback goes to the server log only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.api.models import ErrorBody
from app.chat.checks import CheckRefused
from app.chat.conversations import StoreUnavailable
from app.chat.replies import RETRY_AFTER_SECONDS

MAX_PROBLEMS_SHOWN = 3


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """An endpoint's ``responses`` for OpenAPI: each of ``statuses`` answers an ``ErrorBody``."""
    return {status: {"model": ErrorBody} for status in statuses}


class ApiError(Exception):
    """An answer other than success; ``message`` is shown to the client as it is."""

    def __init__(
        self, status: int, message: str, detail: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.headers = dict(headers or {})


def error_response(
    status: int, message: str, detail: Any = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(error=message, detail=detail).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def problems(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic's errors without the input sent or the context (which may echo it)."""
    return [
        {"loc": [str(part) for part in error.get("loc", ())], "msg": str(error.get("msg", "")),
         "type": str(error.get("type", ""))}
        for error in errors
    ]


def summary(found: list[dict[str, Any]]) -> str:
    lines = [f"{'.'.join(p['loc']) or 'request'}: {p['msg']}" for p in found[:MAX_PROBLEMS_SHOWN]]
    more = len(found) - MAX_PROBLEMS_SHOWN
    if more > 0:
        lines.append(f"and {more} more")
    return "The request is not valid: " + "; ".join(lines) + "."


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.detail, exc.headers)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    found = problems(exc.errors())
    return error_response(422, summary(found), found)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), headers=exc.headers)


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    retry = str(math.ceil(RETRY_AFTER_SECONDS))
    return error_response(503, str(exc), headers={"Retry-After": retry})


async def _check_refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CheckRefused)
    headers = None if exc.retry_after is None else {
        "Retry-After": str(math.ceil(exc.retry_after))}
    return error_response(exc.status, str(exc), headers=headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette raises the exception again once this answer is sent: the server logs it.
    return error_response(500, "The server failed on this request; the details are in its log.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.add_exception_handler(CheckRefused, _check_refused)
    app.add_exception_handler(Exception, _unexpected)
