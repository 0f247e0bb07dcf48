"""/sample/{sha256}: submission intake over REST (its sequence is app.intake.upload.submit), and reanalysis."""

from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView
from marshmallow import fields

from app.accounts.keys import UPLOADER, USER
from app.api.auth import current_principal, requires
from app.api.base import BASE_PATH, Blueprint, links
from app.api.envelope import ApiError, envelope
from app.api.schemas import CustomerRef, JobSchema, NoArgsSchema, envelope_schema
from app.extensions import current_settings, db
from app.intake import upload
from app.intake.wire import (
    SHA256_PATTERN,
    ApiSchema,
    ClassificationSchema,
    SampleRefSchema,
    SubmissionSchema,
    Timestamp,
    customer_name_rules,
)
from app.jobs.reanalysis import reanalyse
from app.jobs.serialize import job_to_dict
from app.unit_of_work import unit_of_work

blp = Blueprint("submissions", __name__, url_prefix=f"{BASE_PATH}/sample", description="Submission intake")

# Argus' answer to a submission of a sample the customer sent recently: accepted, not stored, no job.
RECENTLY_SEEN = 220


class UploadSubmissionSchema(SubmissionSchema):
    """A REST upload's submission: the service fills id (unless given), customer (unless given),
    sample, createdByUser and createdTimestamp."""

    id = fields.UUID(
        load_default=None, metadata={"description": "Keep it when retrying: the retry gets the same jobID"}
    )
    customer = fields.String(
        load_default=None,
        validate=customer_name_rules(),
        metadata={"description": "Default: the key's own customer"},
    )
    sample = fields.Nested(SampleRefSchema, load_default=None)
    created_by_user = fields.Dict(allow_none=True, load_default=None, metadata={"description": "Set by the service"})
    created_timestamp = Timestamp(allow_none=True, load_default=None, metadata={"description": "Set by the service"})


# Loads the submission of a body that has none (its defaults); made once: a schema built per request
# costs a tenth of the intake's CPU (marshmallow deep-copies its declared fields).
_UPLOAD_SUBMISSION = UploadSubmissionSchema()


class UploadPayloadSchema(ApiSchema):
    """Body of POST /sample/{sha256}/submission."""

    submission = fields.Nested(UploadSubmissionSchema, load_default=lambda: _UPLOAD_SUBMISSION.load({}))
    classification = fields.Nested(ClassificationSchema, required=True)


class SubmissionAcceptedSchema(ma.Schema):
    submission = fields.Dict(metadata={"description": "The submission as the service completed it"})
    jobID = fields.UUID(metadata={"description": "The job the submission makes (once a worker has made it)"})


class SubmissionRateLimitedSchema(ma.Schema):
    sampleSha256 = fields.String(metadata={"description": "The sample for which the submission was uploaded"})


class ReanalyseArgsSchema(ApiSchema):
    customer = CustomerRef(
        metadata={
            "description": "Customer id or shortName, when the key sees the sample at "
            "several customers (default: the latest submission's)"
        }
    )


@blp.route("/<sha256>/submission")
class SampleSubmission(MethodView):
    @requires(UPLOADER)
    @blp.arguments(UploadPayloadSchema)
    @blp.response(202, envelope_schema(SubmissionAcceptedSchema))
    @blp.doc(
        **links(
            202,
            "job_id",
            "$response.body#/data/jobID",
            {
                "GetJob": ("get", "/job/{job_id}"),
                "GetJobHistory": ("get", "/job/{job_id}/history"),
                "GetJobTasks": ("get", "/job/{job_id}/tasks"),
                "UpdateJob": ("put", "/job/{job_id}"),
                "AbortJob": ("delete", "/job/{job_id}"),
            },
        )
    )
    @blp.alt_response(
        409, response="CONFLICT", description="The submission id belongs to another customer's submission"
    )
    @blp.alt_response(
        RECENTLY_SEEN,
        schema=envelope_schema(SubmissionRateLimitedSchema),
        description="The customer sent this sample within SAMPLEDB_DUPLICATE_WINDOW_SECONDS: "
        "the submission is not stored and makes no job",
    )
    def post(self, body: dict, sha256: str):
        """Submit a sighting of a sample: stored before the 202; the job appears once a worker has made it"""
        principal = current_principal()
        outcome = upload.submit(
            db.session, current_settings(), sha256=sha256, body=body, user=principal.user, scope=principal.scope
        )
        if isinstance(outcome, upload.RecentlySeen):
            return envelope({"sampleSha256": outcome.sha256}, RECENTLY_SEEN)
        return envelope({"submission": outcome.submission, "jobID": str(outcome.job_id)}, 202)


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
        if not SHA256_PATTERN.fullmatch(sha256):
            raise ApiError.field("sha256", "sha256: Not a sha256 hash (64 hexadecimal characters)")
        with unit_of_work(db.session) as session:
            job, _created = reanalyse(
                session,
                current_settings(),
                sha256.lower(),
                customer=query.get("customer"),
                actor=principal.user,
                scope=principal.scope,
            )
        return envelope(job_to_dict(job))
