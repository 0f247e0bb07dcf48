"""/sample/{sha256}/submission: submission intake over REST; a worker makes the job."""

from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView
from marshmallow import fields

from app import dispatch, submissions
from app.api.base import BASE_PATH, Blueprint
from app.api.schemas import envelope_schema
from app.auth import UPLOADER, current_principal, requires
from app.errors import ApiError, envelope
from app.extensions import current_settings, db

blp = Blueprint("submissions", __name__, url_prefix=f"{BASE_PATH}/sample", description="Submission intake")


class SubmissionAcceptedSchema(ma.Schema):
    submission = fields.Dict(metadata={"description": "The submission as the service completed it"})
    jobID = fields.UUID(metadata={"description": "The job the submission makes (once a worker has made it)"})


@blp.route("/<sha256>/submission")
class SampleSubmission(MethodView):
    @requires(UPLOADER)
    @blp.arguments(submissions.UploadPayloadSchema)
    @blp.response(202, envelope_schema(SubmissionAcceptedSchema))
    def post(self, body: dict, sha256: str):
        """Submit a sighting of a sample; the job appears once a worker has made it"""
        principal = current_principal()
        try:
            payload = submissions.prepare_upload(db.session, sha256=sha256, body=body, user=principal.user,
                                                 scope=principal.scope)
        except submissions.SubmissionRejected as err:
            raise ApiError.field(err.field, f"{err.field}: {err}") from None
        except submissions.InvalidSubmission as err:  # a filled-in field broke a bound (e.g. a long user name)
            raise ApiError.action(412, f"Submission cannot be completed: {err}") from None
        try:
            dispatch.send_ingest(current_settings().redis_url, payload)
        except dispatch.BrokerUnavailable as err:
            raise ApiError.action(503, f"Submission not accepted, retry later: {err}") from None
        submission = payload["submission"]
        return envelope({"submission": submission, "jobID": str(submissions.job_id_for(submission["id"]))}, 202)
