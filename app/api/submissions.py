"""/sample/{sha256}/submission: submission intake over REST; a worker makes the job."""

from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView
from marshmallow import fields, validate

from app import dispatch, submissions
from app.api.base import BASE_PATH, Blueprint
from app.api.schemas import envelope_schema
from app.auth import UPLOADER, current_principal, requires
from app.errors import ApiError, envelope
from app.extensions import current_settings, db
from app.wire import (
    CUSTOMER_NAME_MAX, ApiSchema, ClassificationSchema, SampleRefSchema, SubmissionSchema, Timestamp,
)

blp = Blueprint("submissions", __name__, url_prefix=f"{BASE_PATH}/sample", description="Submission intake")


class UploadSubmissionSchema(SubmissionSchema):
    """A REST upload's submission: the service fills id (unless given), customer (unless given),
    sample, createdByUser and createdTimestamp."""

    id = fields.UUID(load_default=None, metadata={"description": "Keep it when retrying: the retry gets the same jobID"})
    customer = fields.String(load_default=None, validate=validate.Length(1, CUSTOMER_NAME_MAX),
                             metadata={"description": "Default: the key's own customer"})
    sample = fields.Nested(SampleRefSchema, load_default=None)
    created_by_user = fields.Dict(allow_none=True, load_default=None, metadata={"description": "Set by the service"})
    created_timestamp = Timestamp(allow_none=True, load_default=None, metadata={"description": "Set by the service"})


class UploadPayloadSchema(ApiSchema):
    """Body of POST /sample/{sha256}/submission."""

    submission = fields.Nested(UploadSubmissionSchema, load_default=lambda: UploadSubmissionSchema().load({}))
    classification = fields.Nested(ClassificationSchema, required=True)


class SubmissionAcceptedSchema(ma.Schema):
    submission = fields.Dict(metadata={"description": "The submission as the service completed it"})
    jobID = fields.UUID(metadata={"description": "The job the submission makes (once a worker has made it)"})


@blp.route("/<sha256>/submission")
class SampleSubmission(MethodView):
    @requires(UPLOADER)
    @blp.arguments(UploadPayloadSchema)
    @blp.response(202, envelope_schema(SubmissionAcceptedSchema))
    def post(self, body: dict, sha256: str):
        """Submit a sighting of a sample; the job appears once a worker has made it"""
        principal = current_principal()
        payload = submissions.prepare_upload(db.session, sha256=sha256, body=body, user=principal.user,
                                             scope=principal.scope)
        try:
            dispatch.send_ingest(current_settings().redis_url, payload)
        except dispatch.BrokerUnavailable as err:
            raise ApiError.action(503, f"Submission not accepted, retry later: {err}") from None
        submission = payload["submission"]
        return envelope({"submission": submission, "jobID": str(submissions.job_id_for(submission["id"]))}, 202)
