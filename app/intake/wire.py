"""The wire format: the API's JSON conventions and the submission payload (SPEC §6.1).

Shared by the Celery intake and the REST API; marshmallow only, nothing of HTTP. Field
names are camelCase in JSON and unknown fields are refused.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping

import marshmallow as ma
from marshmallow import fields, validate

from app.clock import now_ms

NAME_MAX = 1024
TLP_LEVELS = ("white", "green", "amber", "red")
JSON_MAX_BYTES = 64 * 1024
LIST_MAX = 10_000
CUSTOMER_NAME_MAX = NAME_MAX  # customers.short_name
# A key of a btree index may take about a third of a page (2,704 bytes) once compressed: a shortName of
# 1,024 four-byte characters that do not compress (4 KiB) is refused by PostgreSQL (SQLSTATE 54000). Text
# that is the key of a unique index is held below this many bytes of UTF-8, so it is refused up front,
# naming the field, instead of by the database.
INDEXED_TEXT_MAX_BYTES = 2000
SHA256_PATTERN = re.compile(r"[0-9a-fA-F]{64}")


class Utf8Bytes(validate.Validator):
    """At most `maximum` bytes once encoded as UTF-8."""

    def __init__(self, maximum: int):
        self.maximum = maximum

    def __call__(self, value: str) -> str:
        if len(value.encode("utf-8", "surrogatepass")) > self.maximum:
            raise ma.ValidationError(f"At most {self.maximum} bytes of UTF-8 (an index key)")
        return value


def customer_name_rules() -> list[validate.Validator]:
    """What a customer shortName must be: 1 to CUSTOMER_NAME_MAX characters, short enough for its unique index."""
    return [validate.Length(1, CUSTOMER_NAME_MAX), Utf8Bytes(INDEXED_TEXT_MAX_BYTES)]


def camelcase(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def unstorable_text(value) -> bool:
    """True when some string in `value` (keys included, at any depth) cannot be stored in PostgreSQL:
    a NUL character or a lone UTF-16 surrogate (both are valid JSON escapes).

    Every schema's pre_load runs it over every body, so the plain JSON types are told by their exact
    type first (the ABC checks cost more than the scan), and only a non-ASCII string is encoded."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or (kind is not dict and kind is not list and isinstance(item, str)):
            if "\x00" in item:
                return True
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif kind is dict or isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif kind is list or isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


class ApiSchema(ma.Schema):
    """Base of every schema: camelCase names in JSON, unknown fields refused."""

    class Meta:
        unknown = ma.RAISE

    def on_bind_field(self, field_name, field_obj):
        field_obj.data_key = camelcase(field_obj.data_key or field_name)

    @ma.pre_load
    def refuseunstorable_text(self, data, **kwargs):
        """One FIELD_ERROR per field whose text PostgreSQL cannot hold (instead of a database error)."""
        if isinstance(data, Mapping):
            errors = {
                str(key): ["Text must not contain NUL characters or unpaired surrogates"]
                for key in data
                if unstorable_text(key) or unstorable_text(data[key])
            }
            if errors:
                raise ma.ValidationError(errors)
        return data


def json_size(value) -> bool:
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN and Infinity parse in Python but are not JSON, and PostgreSQL refuses them
        raise ma.ValidationError("NaN and Infinity are not JSON numbers") from None
    except RecursionError:
        raise ma.ValidationError("Nested too deeply") from None
    if len(text.encode("utf-8")) > JSON_MAX_BYTES:
        raise ma.ValidationError(f"At most {JSON_MAX_BYTES // 1024} KiB as JSON")
    return True


def _sha256(value: str) -> bool:
    if not SHA256_PATTERN.fullmatch(value):
        raise ma.ValidationError("Not a sha256 hash (64 hexadecimal characters)")
    return True


class Timestamp(fields.Integer):
    """Milliseconds since the epoch: a JSON integer (no fraction, no string, no boolean), not negative."""

    def __init__(self, **kwargs):
        super().__init__(strict=True, validate=validate.Range(0, 2**63 - 1), **kwargs)


def _text(**kwargs) -> fields.String:
    return fields.String(validate=validate.Length(max=NAME_MAX), **kwargs)


def _optional_text() -> fields.String:
    return _text(allow_none=True, load_default=None)


class SampleRefSchema(ApiSchema):
    id = fields.String(required=True, validate=_sha256)


class UserAgentSchema(ApiSchema):
    name = _optional_text()
    version = _optional_text()


class SubmissionSchema(ApiSchema):
    id = fields.UUID(required=True)
    customer = fields.String(
        required=True,
        validate=customer_name_rules(),
        metadata={"description": "shortName of the customer the sample was seen at"},
    )
    sample = fields.Nested(SampleRefSchema, required=True)
    created_by_user = fields.Dict(allow_none=True, load_default=None, validate=json_size)
    created_timestamp = Timestamp(load_default=now_ms)
    name = _optional_text()
    timestamp = Timestamp(allow_none=True, load_default=None)
    mime_type = _optional_text()
    meta_data = fields.Dict(allow_none=True, load_default=dict, validate=json_size)
    tlp = fields.String(allow_none=True, load_default=None, validate=validate.OneOf(TLP_LEVELS))
    acl = fields.List(
        fields.Raw(), allow_none=True, load_default=list, validate=[validate.Length(max=LIST_MAX), json_size]
    )
    user_agent = fields.Nested(UserAgentSchema, allow_none=True, load_default=None)

    @ma.pre_load
    def lowercase_tlp(self, data, **kwargs):
        if isinstance(data, Mapping) and isinstance(data.get("tlp"), str):
            data = {**data, "tlp": data["tlp"].lower()}
        return data


class ClassificationSchema(ApiSchema):
    sample = fields.String(
        allow_none=True,
        load_default=None,
        validate=_sha256,
        metadata={"description": "The sample's sha256; set to the submission's when absent"},
    )
    classification_id = fields.UUID(data_key="classificationID", load_default=uuid.uuid4)
    created_timestamp = Timestamp(load_default=now_ms)
    version = _optional_text()
    type = _text(required=True, metadata={"description": "File type, e.g. PE"})
    super_type = _text(required=True, metadata={"description": "e.g. executable, document"})
    arch = _optional_text()
    platform = _optional_text()
    meta = fields.Dict(allow_none=True, load_default=dict, validate=json_size)


class SubmissionPayloadSchema(ApiSchema):
    """The payload of `sampledb.ingest_submission`: every submission field the seed shows."""

    submission = fields.Nested(SubmissionSchema, required=True)
    classification = fields.Nested(ClassificationSchema, required=True)

    @ma.validates_schema
    def same_sample(self, data, **kwargs):
        given = data["classification"].get("sample")
        if given is not None and given.lower() != data["submission"]["sample"]["id"].lower():
            raise ma.ValidationError({"classification": {"sample": ["Must equal submission.sample.id"]}})

    @ma.post_load
    def normalise(self, data, **kwargs):
        sha256 = data["submission"]["sample"]["id"].lower()
        data["submission"]["sample"]["id"] = sha256
        data["classification"]["sample"] = sha256
        return data
