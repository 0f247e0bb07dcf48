"""What every blueprint shares: the flask-smorest Api, the strict argument parser, the base path."""

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
