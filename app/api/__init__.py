"""The HTTP API: blueprints, OpenAPI, offline Swagger UI and the envelope on every response."""

from __future__ import annotations

from apispec import BasePlugin
from flask import Flask, g, request, send_from_directory
from swagger_ui_bundle import swagger_ui_path
from webargs.core import parse_json
from werkzeug.exceptions import HTTPException

from app.api import analysis_workers, health, jobs, policy, submissions
from app.api.base import BASE_PATH, api
from app.api.envelope import (
    ARGUMENT_ERROR,
    DATABASE_ERRORS,
    ApiError,
    handle_api_error,
    handle_database_error,
    handle_http_exception,
    handle_unexpected,
)
from app.api.metrics import register_metrics
from app.api.schemas import envelope_schema
from app.errors.domain import ArgumentConflict, Conflict, DomainError, InvalidArgument, InvalidRequest, NotFound

MAX_BODY_BYTES = 1024 * 1024
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
MAX_BODY_DEPTH = 64


def _check_body():
    """415 for a body that is not application/json, 400 for one that is not JSON (before any parsing)."""
    if request.method not in BODY_METHODS or not request.path.startswith(BASE_PATH):
        return
    if request.routing_exception is not None:
        return  # an unknown path or method is answered 404/405 whatever the body
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError.action(413, "Request body is larger than 1 MiB")
    body = request.get_data(cache=True)
    if not body:
        return
    if request.mimetype != "application/json":
        raise ApiError.action(415, f"Request body must be application/json, not {request.mimetype or 'untyped'}")
    try:
        # The parser webargs uses: `null` or `[]` is JSON (a 412 from the schema), `{` is not (400).
        document = parse_json(body)
    except (ValueError, RecursionError):
        raise ApiError.action(400, "Request body is not valid JSON") from None
    if _depth(document) > MAX_BODY_DEPTH:
        # Deeper documents would exhaust the parsers' and PostgreSQL's stacks further on.
        raise ApiError.action(412, f"Request body is nested deeper than {MAX_BODY_DEPTH} levels")
    g.json_body = document  # the argument parser reads it from here instead of parsing it again


def _depth(document) -> int:
    """How deeply arrays and objects nest in a parsed JSON document (iteratively: no recursion limit)."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            deepest = max(deepest, level)
            stack.extend((item, level + 1) for item in value)
    return deepest


# The one translation of the domain's refusals into HTTP answers.
DOMAIN_ERROR_STATUS = ((NotFound, 404), (Conflict, 409), (InvalidRequest, ARGUMENT_ERROR))


def as_api_error(error: DomainError) -> ApiError:
    if isinstance(error, (InvalidArgument, ArgumentConflict)):
        status = 409 if isinstance(error, Conflict) else ARGUMENT_ERROR
        return ApiError.field(error.field, f"{error.field}: {error}", status)
    status = next((status for kind, status in DOMAIN_ERROR_STATUS if isinstance(error, kind)), ARGUMENT_ERROR)
    return ApiError.action(status, str(error))


class CommonResponses(BasePlugin):
    """Documents the answers any operation may give besides its own: 503 when the database is away or
    too slow (every operation but liveness reads it), and 400/413/415 for a body that is not JSON, too
    large or of another type (checked before any view, app.api._check_body)."""

    def operation_helper(self, path=None, operations=None, **kwargs) -> None:
        for method, operation in (operations or {}).items():
            responses = operation.setdefault("responses", {})
            common = [] if path.endswith("/healthz") else [(503, "SERVICE_UNAVAILABLE")]
            if method.upper() in BODY_METHODS:
                common += [(400, "BAD_REQUEST"), (413, "REQUEST_ENTITY_TOO_LARGE"), (415, "UNSUPPORTED_MEDIA_TYPE")]
            for status, response in common:
                if status not in responses and str(status) not in responses:
                    responses[status] = response


def register_api(app: Flask) -> None:
    # "/job//x" is an unknown path (404 in the envelope), not an HTML redirect to "/job/x".
    app.url_map.merge_slashes = False
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        API_TITLE="SampleDB Jobs",
        API_VERSION="2",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX=BASE_PATH,
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        # Served from the swagger-ui-bundle package: the docs work offline, no CDN.
        OPENAPI_SWAGGER_UI_URL=f"{BASE_PATH}/docs/static/",
        API_SPEC_OPTIONS={
            "components": {
                "securitySchemes": {"ArgusApiKey": {"type": "apiKey", "in": "header", "name": "Argus-API-Key"}}
            },
            "security": [{"ArgusApiKey": []}],
        },
    )
    # Errors are documented as what they are: the envelope with data null and the messages.
    api.ERROR_SCHEMA = envelope_schema(None)
    api.init_app(app, spec_kwargs={"extra_plugins": [CommonResponses()]})
    register_metrics(app)  # its timer starts before the body checks, so their answers are timed too
    for blueprint in (jobs.blp, analysis_workers.blp, submissions.blp, policy.blp, health.blp):
        api.register_blueprint(blueprint)

    @app.get(f"{BASE_PATH}/docs/static/<path:filename>")
    def swagger_ui_static(filename: str):
        return send_from_directory(swagger_ui_path, filename)

    app.before_request(_check_body)
    # The envelope on every error: ours, Flask's and flask-smorest's (registered after api.init_app to win).
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(DomainError, lambda error: handle_api_error(as_api_error(error)))
    for database_error in DATABASE_ERRORS:
        app.register_error_handler(database_error, handle_database_error)
    app.register_error_handler(Exception, handle_unexpected)
