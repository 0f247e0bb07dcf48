"""/sample/{sha256}/submission: submission intake over REST.

The submission is committed in PostgreSQL (pending_submissions) before the 202; a worker then
makes the job, from the task sent right after the commit or, if that task is lost with Redis,
from beat's safety net `sampledb.ingest_pending`."""

from __future__ import annotations

import logging

import marshmallow as ma
from flask.views import MethodView
from marshmallow import fields

from app import submissions
from app.api.base import BASE_PATH, Blueprint, settings, unit_of_work
from app.api.schemas import envelope_schema
from app.auth import UPLOADER, current_principal, requires
from app.errors import ApiError, envelope

log = logging.getLogger(__name__)

blp = Blueprint("submissions", __name__, url_prefix=f"{BASE_PATH}/sample", description="Submission intake")


class SubmissionAcceptedSchema(ma.Schema):
    submission = fields.Dict(metadata={"description": "The submission as the service completed it"})
    jobID = fields.UUID(metadata={"description": "The job the submission makes (once a worker has made it)"})


@blp.route("/<sha256>/submission")
class SampleSubmission(MethodView):
    @requires(UPLOADER)
    @blp.arguments(submissions.UploadPayloadSchema)
    @blp.response(202, envelope_schema(SubmissionAcceptedSchema))
    @blp.alt_response(409, response="CONFLICT", description="The submission id belongs to another customer's submission")
    def post(self, body: dict, sha256: str):
        """Submit a sighting of a sample: stored before the 202; the job appears once a worker has made it"""
        from workers.dispatch import BrokerUnavailable, send_ingest

        principal = current_principal()
        try:
            with unit_of_work() as session:
                payload = submissions.prepare_upload(session, sha256=sha256, body=body, user=principal.user,
                                                     scope=principal.scope)
                submissions.accept_upload(session, payload)
        except submissions.SubmissionRejected as err:
            raise ApiError.field(err.field, f"{err.field}: {err}") from None
        except submissions.SubmissionIdTaken as err:
            raise ApiError.field(err.FIELD, f"{err.FIELD}: {err.messages['submission']['id'][0]}", status=409) from None
        except submissions.InvalidSubmission as err:  # a filled-in field broke a bound (e.g. a long user name)
            raise ApiError.action(412, f"Submission cannot be completed: {err}") from None
        try:
            send_ingest(settings().redis_url, payload)
        except BrokerUnavailable:
            # Committed already: beat's safety net (sampledb.ingest_pending) makes the job once Redis is back.
            log.warning("submission %s stored; its ingest task waits for the broker", payload["submission"]["id"])
        submission = payload["submission"]
        return envelope({"submission": submission, "jobID": str(submissions.job_id_for(submission["id"]))}, 202)
