"""The Argus envelope: the one place that shapes every response body, success or error."""

from __future__ import annotations

import json
import logging

import sqlalchemy.exc as sa_exc
from flask import Response
from werkzeug.exceptions import HTTPException

from app.clock import now_ms
from app.errors.database import Outcome, outcome_of, refusal_text
from app.errors.fields import flatten

log = logging.getLogger(__name__)

# Argus answers bad arguments with 412 where flask-smorest/webargs would say 422.
ARGUMENT_ERROR = 412


class ApiError(Exception):
    """An error answered in the envelope: one message per problem."""

    def __init__(self, status: int, messages: list[dict]):
        super().__init__(messages[0]["message"] if messages else str(status))
        self.status = status
        self.messages = messages

    @classmethod
    def action(cls, status: int, text: str) -> ApiError:
        return cls(status, [message("ACTION_ERROR", text)])

    @classmethod
    def field(cls, field_name: str, text: str, status: int = ARGUMENT_ERROR) -> ApiError:
        return cls(status, [message("FIELD_ERROR", text, field=field_name)])


def message(
    kind: str, text: str, *, field: str | None = None, parameter: str | None = None, template: str | None = None
) -> dict:
    return {
        "type": kind,
        "field": field,
        "message": text,
        "messageTemplate": template or text,
        "parameter": parameter,
        "timestamp": now_ms(),
    }


def _head(status: int, count: int, limit: int, offset: int, size: int, messages: list[dict] | None) -> dict:
    """Every field of the envelope but `data`, which comes last."""
    return {
        "responseCode": status,
        "limit": limit,
        "offset": offset,
        "count": count,
        "size": size,
        "metaData": {},
        "messages": messages or [],
    }


def envelope(
    data,
    status: int = 200,
    *,
    count: int = 0,
    limit: int = 0,
    offset: int = 0,
    messages: list[dict] | None = None,
    size: int | None = None,
) -> Response:
    """A response in the Argus envelope; for a list, pass the total `count` and the applied limit/offset."""
    if isinstance(data, list) and size is None:
        size = len(data)
    body = {**_head(status, count, limit, offset, size or 0, messages), "data": data}
    return Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json")


def envelope_around(data_json: str, *, count: int = 0, limit: int = 0, offset: int = 0, size: int = 0) -> Response:
    """A 200 whose `data` is JSON text already written (by PostgreSQL, app.jobs.read), spliced in as it is:
    the same envelope as `envelope`, without decoding and encoding the data again."""
    head = json.dumps(_head(200, count, limit, offset, size, None), separators=(",", ":"))
    return Response(f'{head[:-1]},"data":{data_json}}}', status=200, mimetype="application/json")


def error_response(status: int, messages: list[dict], headers=None) -> Response:
    response = envelope(None, status, messages=messages)
    if headers:
        response.headers.extend(headers)
    return response


def field_messages(errors) -> list[dict]:
    """Flatten marshmallow/webargs errors ({field: [msg] | {nested}}) into one FIELD_ERROR per bad field."""
    return [message("FIELD_ERROR", text, field=name, parameter=name) for name, text in flatten(errors)]


def handle_http_exception(error: HTTPException) -> Response:
    """Every HTTP error, also those raised by Flask, werkzeug and flask-smorest/webargs, in the envelope."""
    status = error.code or 500
    data = getattr(error, "data", None) or {}
    if status == 422 or (status in (400, ARGUMENT_ERROR) and "messages" in data):
        # webargs validation errors: {location: {field: [messages]}}
        errors = data.get("messages") or data.get("errors") or {}
        messages = []
        for location_errors in errors.values() if isinstance(errors, dict) else [errors]:
            messages.extend(field_messages(location_errors))
        return error_response(ARGUMENT_ERROR, messages or [message("FIELD_ERROR", "Invalid argument")])
    text = data.get("message") or _DEFAULT_TEXT.get(status) or error.description or error.name
    headers = data.get("headers") or (
        [("Allow", ", ".join(methods))] if (methods := getattr(error, "valid_methods", None)) else None
    )
    return error_response(status, [message("ACTION_ERROR", text)], headers)


_DEFAULT_TEXT = {
    400: "Request body is not valid JSON",
    401: "Missing or invalid Argus-API-Key",
    403: "Access denied",
    404: "Not found",
    405: "Method not allowed",
    413: "Request body is larger than 1 MiB",
    415: "Request body must be application/json",
}


def handle_api_error(error: ApiError) -> Response:
    return error_response(error.status, error.messages)


# Seconds a client should wait before retrying a request the database could not serve.
RETRY_AFTER_SECONDS = 5
# Every error the database layer raises (the pool's TimeoutError is not a DBAPIError).
DATABASE_ERRORS = (sa_exc.DBAPIError, sa_exc.TimeoutError)


def handle_database_error(error: Exception) -> Response:
    """The one mapping of database errors to answers (app.errors.database decides by SQLSTATE):
    503 with Retry-After when the same request can succeed later (the database is unreachable,
    read-only after a failover, dropped the connection, cancelled a statement at its timeout, or
    the pool had no connection to give); 412 when PostgreSQL refused a value of the request for
    good (retrying cannot help); anything else is ours, a 500."""
    outcome = outcome_of(error)
    cause = getattr(error, "orig", None) or error
    first_line = next(iter(str(cause).strip().splitlines()), "")
    if outcome is Outcome.RETRY:
        log.warning("database unavailable: %s: %s", type(cause).__name__, first_line)
        return error_response(
            503,
            [message("ACTION_ERROR", "The database is unavailable or too slow right now; retry later")],
            [("Retry-After", str(RETRY_AFTER_SECONDS))],
        )
    if outcome is Outcome.REFUSED:
        log.warning("database refused a request's value: %s", refusal_text(error)[:500])
        return error_response(
            ARGUMENT_ERROR,
            [message("ACTION_ERROR", f"The request holds a value the database cannot store: {first_line[:200]}")],
        )
    return handle_unexpected(error)


def handle_unexpected(error: Exception) -> Response:
    """Last resort: log the stack trace, answer 500 in the envelope without it."""
    if isinstance(error, HTTPException):
        return handle_http_exception(error)
    log.exception("unhandled error")
    return error_response(500, [message("ACTION_ERROR", "Internal error")])
