"""Request and response schemas. Field names are the API's camelCase; unknown fields are refused."""

from __future__ import annotations

import re

import marshmallow as ma
from marshmallow import fields, validate

from app.accounts.customers import CUSTOMER_ID_MAX
from app.clock import now_ms
from app.intake.wire import NAME_MAX, ApiSchema
from app.jobs.search import MAX_RESULTS, SORT_FIELDS, TIME_FIELDS, Criteria
from app.jobs.states import JOB_ACTIVE, JOB_STATES, TASK_STATE_ALIASES, TASK_STATES, TASK_UPDATE_STATES
from app.jobs.timeexpr import TimeExpressionError, parse_time

MESSAGE_MAX = 4096
# Offsets go into SQL as bigint; anything larger is out of range (412), not a database error.
OFFSET_MAX = 2**63 - 1
# Customer ids are PostgreSQL integers.
SHA256 = validate.Regexp(r"^[0-9a-fA-F]{64}\Z", error="Not a sha256 hash (64 hexadecimal characters)")


class OneOrMany(fields.List):
    """A list criterion that also takes a single value ("state": "done" means ["done"]), as Argus does."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, (list, tuple)):
            value = [value]
        return super()._deserialize(value, attr, data, **kwargs)


class WholeNumber(fields.Integer):
    """An integer: a JSON number without a fraction or a string of ASCII digits ("25" in a query string).

    marshmallow alone would truncate 2.5 to 2 and read "1_000" or Arabic-Indic digits as numbers."""

    def _validated(self, value):
        if isinstance(value, float) and not value.is_integer():
            raise self.make_error("invalid")
        if isinstance(value, str) and not re.fullmatch(r"[+-]?[0-9]+", value.strip(), re.ASCII):
            raise self.make_error("invalid")
        return super()._validated(value)


class TimeExpression(fields.Field):
    """Milliseconds, ISO-8601 UTC ending in Z, or a relative expression such as `now - 1 week`.

    Loaded as given; the schema parses both bounds against one instant (see `parse_time_bounds`).
    """

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ma.ValidationError(
                "Not a time expression: give milliseconds, an ISO-8601 UTC time or e.g. 'now - 1 week'"
            )
        if isinstance(value, str) and len(value) > NAME_MAX:
            raise ma.ValidationError(f"A time expression has at most {NAME_MAX} characters")
        return value


class CustomerRef(fields.Field):
    """A customer id (int) or shortName (string)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ma.ValidationError("Not a customer id or shortName")
        if isinstance(value, int) and not (0 <= value <= CUSTOMER_ID_MAX):
            raise ma.ValidationError(f"A customer id lies between 0 and {CUSTOMER_ID_MAX}")
        if isinstance(value, str) and not (0 < len(value) <= NAME_MAX):
            raise ma.ValidationError(f"A customer shortName has 1 to {NAME_MAX} characters")
        return value


def _list_of(field: fields.Field, **kwargs) -> OneOrMany:
    return OneOrMany(field, validate=validate.Length(max=MAX_RESULTS), **kwargs)


SORT_CHOICES = [name for base in SORT_FIELDS for name in (base, f"-{base}")]


class SearchCriteriaSchema(ApiSchema):
    limit = WholeNumber(load_default=25, validate=validate.Range(0, MAX_RESULTS))
    offset = WholeNumber(load_default=0, validate=validate.Range(0, OFFSET_MAX))
    sort_by = _list_of(fields.String(validate=validate.OneOf(SORT_CHOICES)), load_default=lambda: ["enqueuedTimestamp"])
    state = _list_of(
        fields.String(validate=validate.OneOf(JOB_STATES)),
        load_default=lambda: [str(state) for state in JOB_ACTIVE],
        metadata={"description": "Default: the active states; an explicit empty list means every state"},
    )
    sample_sha256 = _list_of(fields.String(validate=SHA256))
    customer = _list_of(CustomerRef(), metadata={"description": "Customer ids or shortNames"})
    start_timestamp = TimeExpression(metadata={"description": "Inclusive lower bound (time expression)"})
    end_timestamp = TimeExpression(metadata={"description": "Inclusive upper bound (time expression)"})
    time_field_strategy = _list_of(
        fields.String(validate=validate.OneOf([*TIME_FIELDS, "all"])), load_default=lambda: ["all"]
    )
    time_match_strategy = fields.String(load_default="any", validate=validate.OneOf(["any", "all"]))

    @ma.post_load
    def to_criteria(self, data, **kwargs) -> Criteria:
        # Both bounds of one search are read against the same instant.
        now, errors = now_ms(), {}
        for name, key in (("start_timestamp", "startTimestamp"), ("end_timestamp", "endTimestamp")):
            if data.get(name) is not None:
                try:
                    data[name] = parse_time(data[name], now_ms=now)
                except TimeExpressionError as err:
                    errors[key] = [str(err)]
        if errors:
            raise ma.ValidationError(errors)
        start, end = data.get("start_timestamp"), data.get("end_timestamp")
        if start is not None and end is not None and start > end:
            raise ma.ValidationError({"startTimestamp": ["startTimestamp is after endTimestamp"]})
        return Criteria(**data)


class JobUpdateSchema(ApiSchema):
    state = fields.String(required=True, validate=validate.OneOf(JOB_STATES))
    message = fields.String(allow_none=True, validate=validate.Length(max=MESSAGE_MAX))


class AbortSchema(ApiSchema):
    reason = fields.String(allow_none=True, validate=validate.Length(max=MESSAGE_MAX))


class TaskUpdateSchema(ApiSchema):
    state = fields.String(required=True, validate=validate.OneOf([*TASK_UPDATE_STATES, *TASK_STATE_ALIASES]))
    analyses = fields.List(fields.UUID(), validate=validate.Length(max=MAX_RESULTS), allow_none=True)
    message = fields.String(allow_none=True, validate=validate.Length(max=MESSAGE_MAX))


TASK_SORT_FIELDS = ["worker", "state", "enqueuedTimestamp", "startTimestamp", "endTimestamp"]


class TaskListArgsSchema(ApiSchema):
    limit = WholeNumber(load_default=25, validate=validate.Range(0, MAX_RESULTS))
    offset = WholeNumber(load_default=0, validate=validate.Range(0, OFFSET_MAX))
    sort_by = _list_of(
        fields.String(validate=validate.OneOf([n for b in TASK_SORT_FIELDS for n in (b, f"-{b}")])),
        load_default=lambda: ["worker"],
    )


class NoArgsSchema(ApiSchema):
    """No query parameters; any given is refused."""


# -- analysis workers --------------------------------------------------------------------------


class LocalizedTextSchema(ApiSchema):
    english = fields.String(required=True, validate=validate.Length(min=1, max=NAME_MAX))
    norwegian = fields.String(allow_none=True, validate=validate.Length(max=NAME_MAX))


class ClassificationFilterSchema(ApiSchema):
    type = fields.List(fields.String(validate=validate.Length(max=NAME_MAX)), validate=validate.Length(max=1000))
    super_type = fields.List(fields.String(validate=validate.Length(max=NAME_MAX)), validate=validate.Length(max=1000))
    arch = fields.List(fields.String(validate=validate.Length(max=NAME_MAX)), validate=validate.Length(max=1000))
    platform = fields.List(fields.String(validate=validate.Length(max=NAME_MAX)), validate=validate.Length(max=1000))


class WorkerCreateSchema(ApiSchema):
    short_name = fields.String(
        required=True, validate=[validate.Length(min=1, max=255), validate.Regexp(r"^[a-zA-Z0-9_:.-]+\Z")]
    )
    localized_names = fields.Nested(LocalizedTextSchema, required=True)
    localized_descriptions = fields.Nested(LocalizedTextSchema, required=True)
    schema = fields.Dict(allow_none=True, metadata={"description": "JSON schema of the worker's results"})
    accepts = fields.Nested(ClassificationFilterSchema, allow_none=True)


class WorkerUpdateSchema(ApiSchema):
    localized_names = fields.Nested(LocalizedTextSchema)
    localized_descriptions = fields.Nested(LocalizedTextSchema)
    schema = fields.Dict(allow_none=True)
    accepts = fields.Nested(ClassificationFilterSchema, allow_none=True)


class WorkerListArgsSchema(ApiSchema):
    limit = WholeNumber(load_default=25, validate=validate.Range(0, MAX_RESULTS))
    offset = WholeNumber(load_default=0, validate=validate.Range(0, OFFSET_MAX))
    sort_by = _list_of(
        fields.String(
            validate=validate.OneOf(
                [n for b in ("shortName", "createdTimestamp", "lastUpdatedTimestamp") for n in (b, f"-{b}")]
            )
        ),
        load_default=lambda: ["shortName"],
    )
    include_deleted = fields.Boolean(load_default=False)


# -- responses (documentation; views return the envelope themselves) --------------------------


class MessageSchema(ma.Schema):
    type = fields.String(validate=validate.OneOf(["FIELD_ERROR", "ACTION_ERROR", "WARNING", "NOTIFICATION", "INFO"]))
    field = fields.String(allow_none=True)
    message = fields.String()
    messageTemplate = fields.String()
    parameter = fields.String(allow_none=True)
    timestamp = fields.Integer()


class CustomerInfoSchema(ma.Schema):
    id = fields.Integer()
    shortName = fields.String()
    name = fields.String()
    domain = fields.Dict(allow_none=True)


class UserInfoSchema(ma.Schema):
    id = fields.Integer()
    shortName = fields.String()
    name = fields.String()
    customer = fields.Nested(CustomerInfoSchema, allow_none=True)


class AnalysisSchema(ma.Schema):
    id = fields.UUID()
    analysisScore = fields.Integer(allow_none=True)
    userAgent = fields.Dict(allow_none=True)


class TaskSchema(ma.Schema):
    id = fields.UUID()
    worker = fields.String()
    state = fields.String(validate=validate.OneOf(TASK_STATES))
    enqueuedTimestamp = fields.Integer()
    startTimestamp = fields.Integer(allow_none=True)
    endTimestamp = fields.Integer(allow_none=True)
    lastUpdatedTimestamp = fields.Integer()
    analyses = fields.List(fields.Nested(AnalysisSchema))
    message = fields.String(allow_none=True)


class OptionSchema(ma.Schema):
    key = fields.String(metadata={"description": "e.g. meta.sampledb.allowInternetAccess"})
    value = fields.String(metadata={"description": "The option's value, as a string"})


class JobSchema(ma.Schema):
    id = fields.UUID()
    state = fields.String(validate=validate.OneOf(JOB_STATES))
    flags = fields.List(fields.String())
    site = fields.String()
    analysedSample = fields.Dict()
    customer = fields.Nested(CustomerInfoSchema)
    submission = fields.Dict()
    classification = fields.Dict()
    tasks = fields.List(fields.Nested(TaskSchema))
    options = fields.List(fields.Nested(OptionSchema), metadata={"description": "Options the workers must respect"})
    enqueuedTimestamp = fields.Integer()
    startTimestamp = fields.Integer(allow_none=True)
    endTimestamp = fields.Integer(allow_none=True)
    lastUpdatedTimestamp = fields.Integer()
    lastUpdatedByUser = fields.Nested(UserInfoSchema, allow_none=True)
    abortRequestedTimestamp = fields.Integer(allow_none=True)
    abortRequestedByUser = fields.Nested(UserInfoSchema, allow_none=True)
    abortReason = fields.String(allow_none=True)
    message = fields.String(allow_none=True)


class HistorySchema(ma.Schema):
    id = fields.Integer()
    jobID = fields.UUID()
    taskID = fields.UUID(allow_none=True)
    timestamp = fields.Integer()
    user = fields.Nested(UserInfoSchema, allow_none=True)
    fromState = fields.String(allow_none=True)
    toState = fields.String()
    message = fields.String(allow_none=True)


class AuditedSchema(ma.Schema):
    """Who made, last changed and deleted a registry entry (an analysis worker, a policy rule), and when."""

    createdTimestamp = fields.Integer()
    createdByUser = fields.Nested(UserInfoSchema, allow_none=True)
    lastUpdatedTimestamp = fields.Integer()
    lastUpdatedByUser = fields.Nested(UserInfoSchema, allow_none=True)
    deletedTimestamp = fields.Integer(allow_none=True)
    deletedByUser = fields.Nested(UserInfoSchema, allow_none=True)


class WorkerSchema(AuditedSchema):
    id = fields.UUID()
    shortName = fields.String()
    localizedName = fields.String()
    localizedDescription = fields.String()
    localizedNames = fields.Dict()
    localizedDescriptions = fields.Dict()
    accepts = fields.Dict()
    schema = fields.Dict(allow_none=True, metadata={"description": "JSON schema of the worker's results"})
    flags = fields.List(fields.String())


_ENVELOPES: dict[tuple, type[ma.Schema]] = {}


def envelope_schema(data_schema: type[ma.Schema] | None, many: bool = False) -> type[ma.Schema]:
    """An OpenAPI description of the Argus envelope around `data_schema` (one class per shape)."""
    if (data_schema, many) not in _ENVELOPES:
        _ENVELOPES[(data_schema, many)] = _make_envelope_schema(data_schema, many)
    return _ENVELOPES[(data_schema, many)]


def _make_envelope_schema(data_schema: type[ma.Schema] | None, many: bool) -> type[ma.Schema]:
    data_field = (
        (fields.List(fields.Nested(data_schema)) if many else fields.Nested(data_schema, allow_none=True))
        if data_schema is not None
        else fields.Raw(allow_none=True)
    )
    name = f"{data_schema.__name__.removesuffix('Schema') if data_schema else 'Empty'}{'List' if many else ''}Envelope"
    return ma.Schema.from_dict(
        {
            "responseCode": fields.Integer(),
            "limit": fields.Integer(),
            "offset": fields.Integer(),
            "count": fields.Integer(),
            "size": fields.Integer(),
            "metaData": fields.Dict(),
            "messages": fields.List(fields.Nested(MessageSchema)),
            "data": data_field,
        },
        name=name,
    )
