"""/worker: the registry of analysis workers."""

from __future__ import annotations

import json

from flask import Response
from flask.views import MethodView

from app.accounts.keys import ANALYZER, VIEWER
from app.api.auth import current_principal, requires
from app.api.base import BASE_PATH, Blueprint, links
from app.api.envelope import ApiError, envelope
from app.api.schemas import (
    NoArgsSchema,
    WorkerCreateSchema,
    WorkerListArgsSchema,
    WorkerSchema,
    WorkerUpdateSchema,
    envelope_schema,
)
from app.extensions import db
from app.policy import analysis_workers as registry
from app.unit_of_work import unit_of_work

blp = Blueprint("workers", __name__, url_prefix=f"{BASE_PATH}/worker", description="Analysis workers")

WorkerEnvelope = envelope_schema(WorkerSchema)


@blp.route("")
class WorkerCollection(MethodView):
    @requires(VIEWER)
    @blp.arguments(WorkerListArgsSchema, location="query")
    @blp.response(200, envelope_schema(WorkerSchema, many=True))
    def get(self, args: dict):
        """Registered analysis workers"""
        workers, count = registry.list_workers(db.session, **args)
        return envelope(
            [registry.worker_to_dict(w) for w in workers], count=count, limit=args["limit"], offset=args["offset"]
        )

    @requires(ANALYZER)
    @blp.arguments(WorkerCreateSchema)
    @blp.response(201, WorkerEnvelope)
    @blp.doc(
        **links(
            201,
            "id_or_short_name",
            "$response.body#/data/id",
            {
                "GetWorker": ("get", "/worker/{id_or_short_name}"),
                "GetWorkerSchema": ("get", "/worker/{id_or_short_name}/schema"),
                "UpdateWorker": ("put", "/worker/{id_or_short_name}"),
                "DeleteWorker": ("delete", "/worker/{id_or_short_name}"),
            },
        )
    )
    @blp.alt_response(409, response="CONFLICT")
    def post(self, data: dict):
        """Register an analysis worker"""
        with unit_of_work(db.session) as session:
            worker = registry.register_worker(session, data, current_principal().user)
        return envelope(registry.worker_to_dict(worker), 201)


@blp.route("/<string:id_or_short_name>")
class WorkerItem(MethodView):
    @requires(VIEWER)
    @blp.arguments(NoArgsSchema, location="query")
    @blp.response(200, WorkerEnvelope)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, _args, id_or_short_name: str):
        """One analysis worker, by id or shortName"""
        return envelope(registry.worker_to_dict(registry.get_worker(db.session, id_or_short_name)))

    @requires(ANALYZER)
    @blp.arguments(WorkerUpdateSchema)
    @blp.response(200, WorkerEnvelope)
    @blp.alt_response(404, response="NOT_FOUND")
    def put(self, data: dict, id_or_short_name: str):
        """Change a worker's names, descriptions, classification filter or result schema"""
        with unit_of_work(db.session) as session:
            worker = registry.update_worker(session, id_or_short_name, data, current_principal().user)
        return envelope(registry.worker_to_dict(worker))

    @requires(ANALYZER)
    @blp.arguments(NoArgsSchema, location="query")
    @blp.response(200, WorkerEnvelope)
    @blp.alt_response(404, response="NOT_FOUND")
    def delete(self, _args, id_or_short_name: str):
        """Mark a worker deleted: new jobs get no task for it"""
        with unit_of_work(db.session) as session:
            worker = registry.delete_worker(session, id_or_short_name, current_principal().user)
        return envelope(registry.worker_to_dict(worker))


@blp.route("/<string:id_or_short_name>/schema")
class WorkerResultSchema(MethodView):
    @requires(VIEWER)
    @blp.arguments(NoArgsSchema, location="query")
    @blp.response(200, description="The worker's result schema as raw JSON schema (not enveloped)")
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, _args, id_or_short_name: str):
        """The JSON schema of the worker's results"""
        worker = registry.get_worker(db.session, id_or_short_name)
        if worker.result_schema is None:
            raise ApiError.action(404, f"Analysis worker {worker.short_name} has no result schema")
        return Response(json.dumps(worker.result_schema), mimetype="application/schema+json")
