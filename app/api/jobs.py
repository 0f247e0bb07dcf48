"""/job: list, search, fetch, update, abort, history and tasks of analysis jobs."""

from __future__ import annotations

import uuid

from flask.views import MethodView

from app.accounts.keys import ANALYZER, USER, VIEWER
from app.api.auth import current_principal, requires
from app.api.base import BASE_PATH, Blueprint
from app.api.envelope import envelope, envelope_around
from app.api.schemas import (
    AbortSchema,
    HistorySchema,
    JobSchema,
    JobUpdateSchema,
    NoArgsSchema,
    SearchCriteriaSchema,
    TaskListArgsSchema,
    TaskSchema,
    TaskUpdateSchema,
    envelope_schema,
)
from app.extensions import current_settings, db
from app.jobs import read, service
from app.jobs.search import Criteria, search_jobs
from app.jobs.serialize import history_to_dict, job_to_dict, task_to_dict
from app.unit_of_work import unit_of_work

blp = Blueprint("jobs", __name__, url_prefix=f"{BASE_PATH}/job", description="Analysis jobs")

JobEnvelope = envelope_schema(JobSchema)
JobListEnvelope = envelope_schema(JobSchema, many=True)


def _job_list(criteria: Criteria):
    page = search_jobs(db.reader(), criteria, current_principal().scope)
    return envelope_around(page.data, count=page.matches, limit=criteria.limit, offset=criteria.offset, size=page.size)


def _update_job(update: dict, job_id: uuid.UUID):
    principal = current_principal()
    with unit_of_work(db.session) as session:
        job = service.update_job(
            session,
            current_settings(),
            job_id,
            state=update["state"],
            message=update.get("message"),
            actor=principal.user,
            scope=principal.scope,
        )
    return envelope(job_to_dict(job))


@blp.route("")
class JobCollection(MethodView):
    @requires(VIEWER)
    @blp.arguments(SearchCriteriaSchema, location="query")
    @blp.response(200, JobListEnvelope)
    def get(self, criteria: Criteria):
        """List jobs; by default only active ones (enqueued, executing)"""
        return _job_list(criteria)


@blp.route("/search")
class JobSearch(MethodView):
    @requires(VIEWER)
    @blp.arguments(SearchCriteriaSchema)
    @blp.response(200, JobListEnvelope)
    def post(self, criteria: Criteria):
        """Search jobs with a JSON criteria body"""
        return _job_list(criteria)


@blp.route("/<uuid:job_id>")
class JobItem(MethodView):
    @requires(VIEWER)
    @blp.arguments(NoArgsSchema, location="query")
    @blp.response(200, JobEnvelope)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, _args, job_id: uuid.UUID):
        """Fetch one job with its tasks"""
        return envelope_around(read.read_job(db.reader(), job_id, current_principal().scope))

    @requires(ANALYZER)
    @blp.arguments(JobUpdateSchema)
    @blp.response(200, JobEnvelope)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, response="CONFLICT")
    def put(self, update: dict, job_id: uuid.UUID):
        """Update the state of a job (analyzer)"""
        return _update_job(update, job_id)

    @requires(ANALYZER)
    @blp.arguments(JobUpdateSchema)
    @blp.response(200, JobEnvelope)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, response="CONFLICT")
    def post(self, update: dict, job_id: uuid.UUID):
        """Update the state of a job (the same as PUT, as in the Argus documentation's example)"""
        return _update_job(update, job_id)

    @requires(USER)
    @blp.arguments(AbortSchema, location="query")
    @blp.arguments(AbortSchema)
    @blp.response(200, JobEnvelope)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, response="CONFLICT")
    def delete(self, query: dict, body: dict, job_id: uuid.UUID):
        """Request that a job be aborted; optional `reason` in the body or the query"""
        principal = current_principal()
        reason = body.get("reason") if body.get("reason") is not None else query.get("reason")
        with unit_of_work(db.session) as session:
            job = service.request_abort(
                session, current_settings(), job_id, reason=reason, actor=principal.user, scope=principal.scope
            )
        return envelope(job_to_dict(job))


@blp.route("/<uuid:job_id>/history")
class JobHistoryView(MethodView):
    @requires(VIEWER)
    @blp.arguments(NoArgsSchema, location="query")
    @blp.response(200, envelope_schema(HistorySchema, many=True))
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, _args, job_id: uuid.UUID):
        """The job's recorded changes, oldest first"""
        job = service.get_job(db.session, job_id, current_principal().scope)
        entries = [history_to_dict(e) for e in service.job_history(db.session, job)]
        return envelope(entries, count=len(entries))


TASK_SORT_KEYS = {
    "worker": lambda t: (t.worker,),
    "state": lambda t: (t.state,),
    "enqueuedTimestamp": lambda t: (t.enqueued_timestamp,),
    # Tasks not yet started or ended sort last, whichever the direction.
    "startTimestamp": lambda t: (t.start_timestamp is None, t.start_timestamp or 0),
    "endTimestamp": lambda t: (t.end_timestamp is None, t.end_timestamp or 0),
}


@blp.route("/<uuid:job_id>/tasks")
class JobTasks(MethodView):
    @requires(VIEWER)
    @blp.arguments(TaskListArgsSchema, location="query")
    @blp.response(200, envelope_schema(TaskSchema, many=True))
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, args: dict, job_id: uuid.UUID):
        """The job's tasks"""
        job = service.get_job(db.session, job_id, current_principal().scope)
        tasks = sorted(job.tasks, key=lambda t: str(t.id))
        for name in reversed(args["sort_by"]):  # stable sorts, last key first
            tasks.sort(key=TASK_SORT_KEYS[name.lstrip("-")], reverse=name.startswith("-"))
        limit, offset = args["limit"], args["offset"]
        page = tasks[offset : offset + limit] if limit else tasks[offset:]
        return envelope([task_to_dict(t) for t in page], count=len(tasks), limit=limit, offset=offset)


@blp.route("/<uuid:job_id>/task/<uuid:task_id>")
class JobTaskItem(MethodView):
    @requires(VIEWER)
    @blp.arguments(NoArgsSchema, location="query")
    @blp.response(200, envelope_schema(TaskSchema))
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, _args, job_id: uuid.UUID, task_id: uuid.UUID):
        """One task of a job"""
        job = service.get_job(db.session, job_id, current_principal().scope)
        return envelope(task_to_dict(service.get_task(job, task_id)))

    @requires(ANALYZER)
    @blp.arguments(TaskUpdateSchema)
    @blp.response(200, envelope_schema(TaskSchema))
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, response="CONFLICT")
    def put(self, update: dict, job_id: uuid.UUID, task_id: uuid.UUID):
        """Report a task's progress (analysis worker); it rolls up into the job"""
        principal = current_principal()
        with unit_of_work(db.session) as session:
            task = service.update_task(
                session,
                current_settings(),
                job_id,
                task_id,
                state=update["state"],
                analyses=update.get("analyses"),
                message=update.get("message"),
                actor=principal.user,
                scope=principal.scope,
            )
        return envelope(task_to_dict(task))
