"""/policy/default: the default analysis policy and its rules (paths, bodies and answers as in Argus)."""

from __future__ import annotations

import uuid

import marshmallow as ma
from flask.views import MethodView
from marshmallow import fields, validate

from app.accounts.keys import ANALYZER, VIEWER
from app.api.auth import current_principal, requires
from app.api.base import BASE_PATH, Blueprint, links
from app.api.envelope import envelope
from app.api.schemas import (
    MESSAGE_MAX,
    OFFSET_MAX,
    AuditedSchema,
    CustomerInfoSchema,
    NoArgsSchema,
    OptionSchema,
    UserInfoSchema,
    WholeNumber,
    envelope_schema,
)
from app.config import WORKER_SHORT_NAME_PATTERN
from app.extensions import db
from app.intake.wire import NAME_MAX, ApiSchema
from app.jobs.search import MAX_RESULTS
from app.policy import store
from app.unit_of_work import unit_of_work

blp = Blueprint(
    "policy",
    __name__,
    url_prefix=f"{BASE_PATH}/policy/default",
    description="The default analysis policy and its rules: which workers a new job gets, with which options",
)

LIST_MAX = 1000


def _list(item: fields.Field, *, min_items: int = 0, **kwargs) -> fields.List:
    return fields.List(item, validate=validate.Length(min_items, LIST_MAX), **kwargs)


def _worker_refs(**kwargs) -> fields.List:
    ref = fields.String(
        validate=[validate.Length(1, 255), validate.Regexp(WORKER_SHORT_NAME_PATTERN)],
        metadata={"description": "A worker's id or shortName"},
    )
    return _list(ref, **kwargs)


def _texts(**kwargs) -> fields.List:
    return _list(fields.String(validate=validate.Length(max=NAME_MAX)), **kwargs)


# -- requests ---------------------------------------------------------------------------------


class OptionRequestSchema(ApiSchema):
    key = fields.String(
        required=True,
        validate=validate.Length(1, NAME_MAX),
        metadata={"description": "e.g. meta.sampledb.allowInternetAccess"},
    )
    value = fields.String(required=True, validate=validate.Length(max=MESSAGE_MAX))


class PolicyUpdateSchema(ApiSchema):
    workers = _worker_refs(
        metadata={"description": "Every worker (at least one), by id or shortName: replaces the list"}
    )
    options = _list(fields.Nested(OptionRequestSchema), metadata={"description": "Every option: replaces the list"})


class CustomerMatchSchema(ApiSchema):
    customer_or_group = _list(
        fields.String(validate=validate.Length(1, NAME_MAX)),
        required=True,
        min_items=1,
        metadata={"description": "Customers by id or shortName"},
    )


class ClassificationMatchSchema(ApiSchema):
    type = _texts(metadata={"description": "Matches a sample whose classification type is one of these"})
    super_type = _texts(metadata={"description": "... or whose superType is one of these"})


class SubmissionMatchSchema(ApiSchema):
    meta_data_key = _texts(
        required=True,
        min_items=1,
        metadata={"description": "Matches a submission whose metaData has one of these keys"},
    )
    meta_data_value = _texts(
        allow_none=True, min_items=1, metadata={"description": "... with one of these values (any value when absent)"}
    )


class MatchRequestSchema(ApiSchema):
    """Exactly one clause."""

    customer = fields.Nested(CustomerMatchSchema)
    classification = fields.Nested(ClassificationMatchSchema)
    submission = fields.Nested(SubmissionMatchSchema)


class WorkersActionRequestSchema(ApiSchema):
    set = _worker_refs(metadata={"description": "Replace the workers"})
    add = _worker_refs()
    remove = _worker_refs()


class OptionsActionRequestSchema(ApiSchema):
    set = _list(fields.Nested(OptionRequestSchema), metadata={"description": "Replace the options"})
    add = _list(fields.Nested(OptionRequestSchema), metadata={"description": "Add or replace options by key"})
    remove = _texts(metadata={"description": "Option keys to remove"})


class ActionRequestSchema(ApiSchema):
    workers = fields.Nested(WorkersActionRequestSchema)
    options = fields.Nested(OptionsActionRequestSchema)


class RuleAddSchema(ApiSchema):
    name = fields.String(required=True, validate=validate.Length(1, NAME_MAX))
    description = fields.String(required=True, validate=validate.Length(max=MESSAGE_MAX))
    match = fields.Nested(MatchRequestSchema, required=True)
    action = fields.Nested(ActionRequestSchema, required=True)


class RuleUpdateSchema(ApiSchema):
    name = fields.String(validate=validate.Length(1, NAME_MAX))
    description = fields.String(validate=validate.Length(max=MESSAGE_MAX))
    match = fields.Nested(MatchRequestSchema, metadata={"description": "Replaces the match clause"})
    action = fields.Nested(ActionRequestSchema, metadata={"description": "Replaces the action clause"})


class RuleListArgsSchema(ApiSchema):
    limit = WholeNumber(load_default=25, validate=validate.Range(0, MAX_RESULTS))
    offset = WholeNumber(load_default=0, validate=validate.Range(0, OFFSET_MAX))
    include_deleted = fields.Boolean(load_default=False)


# -- responses (documentation) ----------------------------------------------------------------


class WorkerInfoSchema(ma.Schema):
    id = fields.UUID()
    shortName = fields.String()
    localizedName = fields.String()


class PolicySchema(ma.Schema):
    workers = fields.List(fields.Nested(WorkerInfoSchema))
    options = fields.List(fields.Nested(OptionSchema))
    lastUpdatedTimestamp = fields.Integer()
    lastUpdatedByUser = fields.Nested(UserInfoSchema, allow_none=True)


class CustomerMatchResponseSchema(ma.Schema):
    customer = fields.List(fields.Nested(CustomerInfoSchema))


class MatchResponseSchema(ma.Schema):
    customer = fields.Nested(CustomerMatchResponseSchema)
    classification = fields.Dict(metadata={"description": '{"type": [...], "superType": [...]}'})
    submission = fields.Dict(metadata={"description": '{"metaDataKey": [...], "metaDataValue": [...]}'})


class WorkersActionResponseSchema(ma.Schema):
    set = fields.List(fields.Nested(WorkerInfoSchema))
    add = fields.List(fields.Nested(WorkerInfoSchema))
    remove = fields.List(fields.Nested(WorkerInfoSchema))


class OptionsActionResponseSchema(ma.Schema):
    set = fields.List(fields.Nested(OptionSchema))
    add = fields.List(fields.Nested(OptionSchema))
    remove = fields.List(fields.String())


class ActionResponseSchema(ma.Schema):
    workers = fields.Nested(WorkersActionResponseSchema)
    options = fields.Nested(OptionsActionResponseSchema)


class RuleSchema(AuditedSchema):
    id = fields.UUID()
    name = fields.String()
    description = fields.String()
    match = fields.Nested(MatchResponseSchema)
    action = fields.Nested(ActionResponseSchema)
    flags = fields.List(fields.String(validate=validate.OneOf(["deleted"])))


PolicyEnvelope = envelope_schema(PolicySchema)
RuleEnvelope = envelope_schema(RuleSchema)


def _policy_answer(policy):
    return envelope(store.policy_to_dict(policy, store.References.of(db.session, policies=[policy])))


def _rule_answer(rule, status: int = 200):
    return envelope(store.rule_to_dict(rule, store.References.of(db.session, rules=[rule])), status)


# -- views ------------------------------------------------------------------------------------


@blp.route("")
class DefaultPolicy(MethodView):
    @requires(VIEWER)
    @blp.arguments(NoArgsSchema, location="query")
    @blp.response(200, PolicyEnvelope)
    def get(self, _args):
        """Fetch the default analysis policy"""
        return _policy_answer(store.get_policy(db.session))

    @requires(ANALYZER)
    @blp.arguments(PolicyUpdateSchema)
    @blp.response(200, PolicyEnvelope)
    def put(self, data: dict):
        """Update the default analysis policy: each list given replaces the stored one"""
        with unit_of_work(db.session) as session:
            policy = store.update_policy(session, data, current_principal().user)
        return _policy_answer(policy)


@blp.route("/rule")
class RuleCollection(MethodView):
    @requires(VIEWER)
    @blp.arguments(RuleListArgsSchema, location="query")
    @blp.response(200, envelope_schema(RuleSchema, many=True))
    def get(self, args: dict):
        """List the rules of the default policy, oldest (first applied) first"""
        rules, count = store.list_rules(db.session, **args)
        refs = store.References.of(db.session, rules=rules)
        return envelope(
            [store.rule_to_dict(r, refs) for r in rules], count=count, limit=args["limit"], offset=args["offset"]
        )

    @requires(ANALYZER)
    @blp.arguments(RuleAddSchema)
    @blp.response(201, RuleEnvelope)
    @blp.doc(
        **links(
            201,
            "rule_id",
            "$response.body#/data/id",
            {
                "GetRule": ("get", "/policy/default/rule/{rule_id}"),
                "UpdateRule": ("put", "/policy/default/rule/{rule_id}"),
                "DeleteRule": ("delete", "/policy/default/rule/{rule_id}"),
            },
        )
    )
    def post(self, data: dict):
        """Add a rule: when its match clause fits a submission, its action changes the job's workers and options"""
        with unit_of_work(db.session) as session:
            rule = store.add_rule(session, data, current_principal().user)
        return _rule_answer(rule, 201)


@blp.route("/rule/<uuid:rule_id>")
class RuleItem(MethodView):
    @requires(VIEWER)
    @blp.arguments(NoArgsSchema, location="query")
    @blp.response(200, RuleEnvelope)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, _args, rule_id: uuid.UUID):
        """Fetch one rule (also a deleted one)"""
        return _rule_answer(store.get_rule(db.session, rule_id))

    @requires(ANALYZER)
    @blp.arguments(RuleUpdateSchema)
    @blp.response(200, RuleEnvelope)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, response="CONFLICT")
    def put(self, data: dict, rule_id: uuid.UUID):
        """Change a rule: each clause given replaces the stored one"""
        with unit_of_work(db.session) as session:
            rule = store.update_rule(session, rule_id, data, current_principal().user)
        return _rule_answer(rule)

    @requires(ANALYZER)
    @blp.arguments(NoArgsSchema, location="query")
    @blp.response(200, RuleEnvelope)
    @blp.alt_response(404, response="NOT_FOUND")
    def delete(self, _args, rule_id: uuid.UUID):
        """Delete a rule: new jobs no longer follow it; it stays listed with includeDeleted"""
        with unit_of_work(db.session) as session:
            rule = store.delete_rule(session, rule_id, current_principal().user)
        return _rule_answer(rule)
