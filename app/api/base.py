"""What every blueprint shares: the flask-smorest Api, the strict argument parser, the base path, response links."""

from __future__ import annotations

import flask_smorest
import marshmallow as ma
from flask import g
from webargs.flaskparser import FlaskParser

BASE_PATH = "/sampledb/v2"

api = flask_smorest.Api()


class StrictParser(FlaskParser):
    # webargs ignores unknown query parameters by default; the API refuses them (412) like unknown body fields.
    DEFAULT_UNKNOWN_BY_LOCATION = {
        **FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION,
        "query": ma.RAISE,
        "querystring": ma.RAISE,
    }
    # Argus answers bad arguments with 412 (webargs would say 422); flask-smorest documents this code too.
    DEFAULT_VALIDATION_STATUS = 412

    def _raw_load_json(self, req):
        # The body was parsed once already, when it was checked before the view (app.api._check_body).
        if "json_body" in g:
            return g.json_body
        return super()._raw_load_json(req)


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = StrictParser()

    def arguments(self, schema, *args, **kwargs):
        # One instance per view, made here: given a class, webargs makes a new schema for every request, and
        # a marshmallow schema's construction (a deep copy of its fields) costs more than loading a small
        # request. The schemas keep no state between loads.
        return super().arguments(schema() if isinstance(schema, type) else schema, *args, **kwargs)


def links(status: int, parameter: str, expression: str, targets: dict[str, tuple[str, str]]) -> dict:
    """OpenAPI links of a response (for `Blueprint.doc`): the value at `expression` (a runtime expression such as
    `$response.body#/data/id`) is the path parameter `parameter` of each target, named `{name: (method, path)}`
    with `path` below BASE_PATH. Clients read them; the stateful fuzzing follows them with real ids."""
    return {
        "responses": {
            status: {  # an int, as flask-smorest keys the response it documents: the two merge
                "links": {
                    name: {
                        "operationRef": "#/paths/"
                        + (BASE_PATH + path).replace("~", "~0").replace("/", "~1")
                        + "/"
                        + method,
                        "parameters": {parameter: expression},
                    }
                    for name, (method, path) in targets.items()
                }
            }
        }
    }
