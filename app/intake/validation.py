"""Validating a submission payload (SPEC §6.1, §10.2): a tolerant reader of the upstream's
payloads, strict where the database could not store a value."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import marshmallow as ma
from marshmallow import fields

from app.intake.wire import SubmissionPayloadSchema, json_size, unstorable_text

log = logging.getLogger(__name__)


class InvalidSubmission(ValueError):
    """The payload is not a submission; `messages` names every bad field (marshmallow's shape)."""

    def __init__(self, messages):
        super().__init__(json.dumps(messages, default=str)[:2000])
        self.messages = messages


PAYLOAD_SCHEMA = SubmissionPayloadSchema()


def validate_payload(payload) -> dict:
    """The payload as JSON with every optional field present; InvalidSubmission names what is wrong.

    A tolerant reader (SPEC 10.2): fields the schemas do not declare, at any depth of the
    submission and classification objects, are kept as received (an upstream upgrade must
    not lose submissions); they only have to be storable. The REST intake is strict: its
    body schema refuses unknown fields before this runs.
    """
    if not isinstance(payload, Mapping):
        raise InvalidSubmission({"_schema": ["A submission payload is a JSON object"]})
    known, unknown = _split_unknown(PAYLOAD_SCHEMA, payload)
    errors = _unknown_errors(PAYLOAD_SCHEMA, unknown)
    try:
        loaded = PAYLOAD_SCHEMA.load(known)
    except ma.ValidationError as err:
        raise InvalidSubmission(_merge_messages(err.messages_dict, errors)) from None
    if errors:
        raise InvalidSubmission(errors)
    dumped = PAYLOAD_SCHEMA.dump(loaded)
    outside = sorted(key for key in unknown if key not in _declared(PAYLOAD_SCHEMA))
    if outside:  # a job keeps a submission and a classification, nothing beside them
        log.warning("submission %s: ignoring unknown top-level fields %s", submission_id_of(payload), outside)
    _merge_unknown(PAYLOAD_SCHEMA, dumped, {k: v for k, v in unknown.items() if k not in outside})
    return dumped


def _declared(schema: ma.Schema) -> dict[str, fields.Field]:
    return {field.data_key or name: field for name, field in schema.load_fields.items()}


def _split_unknown(schema: ma.Schema, data: Mapping) -> tuple[dict, dict]:
    """(declared fields, the rest): the rest keyed as received, nested under their declared parent object."""
    declared = _declared(schema)
    known, unknown = {}, {}
    for key, value in data.items():
        field = declared.get(key)
        if field is None:
            unknown[key] = value
        elif isinstance(field, fields.Nested) and isinstance(value, Mapping):
            known[key], inner = _split_unknown(field.schema, value)
            if inner:
                unknown[key] = inner
        else:
            known[key] = value
    return known, unknown


def _unknown_errors(schema: ma.Schema, unknown: dict) -> dict:
    """Messages for unknown fields the database could not store (as a 412 names a bad field)."""
    declared = _declared(schema)
    errors: dict = {}
    for key, value in unknown.items():
        if key in declared:
            inner = _unknown_errors(_nested_schema(declared[key]), value)
            if inner:
                errors[key] = inner
            continue
        try:
            json_size(value)
            if unstorable_text(key) or unstorable_text(value):
                raise ma.ValidationError("Text must not contain NUL characters or unpaired surrogates")
        except ma.ValidationError as err:
            errors[str(key)] = err.messages
    return errors


def _merge_unknown(schema: ma.Schema, dumped: dict, unknown: dict) -> None:
    declared = _declared(schema)
    for key, value in unknown.items():
        if key in declared:
            _merge_unknown(_nested_schema(declared[key]), dumped[key], value)
        else:
            dumped[key] = value


def _nested_schema(field: fields.Field) -> ma.Schema:
    """The schema of a declared field that has unknown fields under it: a nested object (see `_split_unknown`)."""
    assert isinstance(field, fields.Nested)
    return field.schema


def _merge_messages(first: dict, second: dict) -> dict:
    merged = dict(first)
    for key, value in second.items():
        if isinstance(merged.get(key), dict) and isinstance(value, dict):
            merged[key] = _merge_messages(merged[key], value)
        else:
            merged.setdefault(key, value)
    return merged


def submission_id_of(payload) -> str | None:
    """The submission id a (possibly invalid) payload claims, for log lines."""
    try:
        value = payload["submission"]["id"]
    except (TypeError, KeyError, IndexError):
        return None
    return str(value)[:64]
