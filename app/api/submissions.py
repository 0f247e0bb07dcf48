"""/sample/{sha256}: submission intake over REST (a worker makes the job) and reanalysis."""

from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView
from marshmallow import fields

from app import submissions
from app.api.base import BASE_PATH, Blueprint, settings, unit_of_work
from app.api.schemas import ApiSchema, CustomerRef, JobSchema, NoArgsSchema, envelope_schema
from app.auth import UPLOADER, USER, current_principal, requires
from app.errors import ApiError, envelope
from app.extensions import db
from app.jobs.reanalysis import reanalyse
from app.jobs.serialize import job_to_dict

blp = Blueprint("submissions", __name__, url_prefix=f"{BASE_PATH}/sample", description="Submission intake")

# Argus' answer to a submission of a sample the customer sent recently: accepted, not stored, no job.
RECENTLY_SEEN = 220


class SubmissionAcceptedSchema(ma.Schema):
    submission = fields.Dict(metadata={"description": "The submission as the service completed it"})
    jobID = fields.UUID(metadata={"description": "The job the submission makes (once a worker has made it)"})


class SubmissionRateLimitedSchema(ma.Schema):
    sampleSha256 = fields.String(metadata={"description": "The sample for which the submission was uploaded"})


class ReanalyseArgsSchema(ApiSchema):
    customer = CustomerRef(metadata={"description": "Customer id or shortName, when the key sees the sample at "
                                                    "several customers (default: the latest submission's)"})


def _checked_sha256(sha256: str) -> str:
    if not submissions.SHA256_PATTERN.fullmatch(sha256):
        raise ApiError.field("sha256", "sha256: Not a sha256 hash (64 hexadecimal characters)")
    return sha256.lower()


@blp.route("/<sha256>/submission")
class SampleSubmission(MethodView):
    @requires(UPLOADER)
    @blp.arguments(submissions.UploadPayloadSchema)
    @blp.response(202, envelope_schema(SubmissionAcceptedSchema))
    @blp.alt_response(RECENTLY_SEEN, schema=envelope_schema(SubmissionRateLimitedSchema),
                      description="The customer sent this sample within SAMPLEDB_DUPLICATE_WINDOW_SECONDS: "
                                  "the submission is not stored and makes no job")
    def post(self, body: dict, sha256: str):
        """Submit a sighting of a sample; the job appears once a worker has made it"""
        from workers.dispatch import BrokerUnavailable, send_ingest

        principal = current_principal()
        try:
            payload = submissions.prepare_upload(db.session, sha256=sha256, body=body, user=principal.user,
                                                 scope=principal.scope)
        except submissions.SubmissionRejected as err:
            raise ApiError.field(err.field, f"{err.field}: {err}") from None
        except submissions.InvalidSubmission as err:  # a filled-in field broke a bound (e.g. a long user name)
            raise ApiError.action(412, f"Submission cannot be completed: {err}") from None
        if submissions.recently_seen(db.session, settings(), payload):
            return envelope({"sampleSha256": payload["submission"]["sample"]["id"]}, RECENTLY_SEEN)
        try:
            send_ingest(settings().redis_url, payload)
        except BrokerUnavailable as err:
            raise ApiError.action(503, f"Submission not accepted, retry later: {err}") from None
        submission = payload["submission"]
        return envelope({"submission": submission, "jobID": str(submissions.job_id_for(submission["id"]))}, 202)


@blp.route("/<sha256>/reanalyse")
class SampleReanalysis(MethodView):
    @requires(USER)
    @blp.arguments(ReanalyseArgsSchema, location="query")
    @blp.arguments(NoArgsSchema)
    @blp.response(200, envelope_schema(JobSchema))
    @blp.alt_response(404, response="NOT_FOUND")
    def put(self, query: dict, _body: dict, sha256: str):
        """Analyse a sample again from its latest submission, under the analysis policy as it is now.

        Answers the sample's active job of that customer instead, if it has one."""
        principal = current_principal()
        sha256 = _checked_sha256(sha256)
        with unit_of_work() as session:
            job, _created = reanalyse(session, settings(), sha256, customer=query.get("customer"),
                                      actor=principal.user, scope=principal.scope)
        return envelope(job_to_dict(job))
