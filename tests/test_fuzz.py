"""§5.2 "No input, however malformed, may produce a 500": property-based tests over every endpoint.

Random JSON values (huge numbers, NaN, lone surrogates, NUL, deep nesting), raw bytes, random
content types, random query strings and path segments; every answer must be below 500 and,
except for the documents that are not enveloped, the Argus envelope with responseCode == status.
"""

from __future__ import annotations

import json
import urllib.parse
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.api import BASE, check_envelope

FIELDS = [
    "state",
    "message",
    "reason",
    "limit",
    "offset",
    "sortBy",
    "customer",
    "sampleSha256",
    "startTimestamp",
    "endTimestamp",
    "timeFieldStrategy",
    "timeMatchStrategy",
    "analyses",
    "includeDeleted",
    "shortName",
    "localizedNames",
    "localizedDescriptions",
    "english",
    "norwegian",
    "schema",
    "accepts",
    "type",
    "superType",
    "platform",
    "arch",
    "submission",
    "classification",
    "id",
    "sample",
    "name",
    "tlp",
    "acl",
    "metaData",
    "mimeType",
    "timestamp",
    "createdTimestamp",
    "userAgent",
    "version",
    "meta",
]
WORDS = [
    "enqueued",
    "executing",
    "done",
    "failed",
    "timeout",
    "aborted",
    "success",
    "successful",
    "cancelled",
    "now",
    "now - 1 week",
    "-1month",
    "startOfDay - hour",
    "2026-11-28T10:00:00Z",
    "2026-11-28T10:00:00+01:00",
    "all",
    "any",
    "-enqueuedTimestamp",
    "customer",
    "acme",
    "static-analyzer",
    "8f84837cf04c1694512256ef78fa67c051b92326e31af2598efad37ccd2e01d9",
    "8F84837CF04C1694512256EF78FA67C051B92326E31AF2598EFAD37CCD2E01D9",
    "white",
    "red",
    "win",
    "PE",
    "executable",
    str(uuid.UUID(int=0)),
    "",
    " ",
    "\x00",
    "null",
    "true",
    "1e309",
]

any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=40)  # lone surrogates and NUL too
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, -1, 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 0.5, 2.0]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, any_text, st.sampled_from(WORDS))
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), any_text), children, max_size=5),
    ),
    max_leaves=25,
)
# Objects that look like real requests: known field names with junk (or plausible) values.
objects = st.dictionaries(st.sampled_from(FIELDS), st.one_of(json_values, st.sampled_from(WORDS)), max_size=6)


def _encode(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _nested(depth: int) -> bytes:
    return ("[" * depth + "]" * depth).encode()


bodies = st.one_of(
    st.none(),
    objects.map(_encode),
    json_values.map(_encode),
    st.binary(max_size=200),
    st.sampled_from(
        [
            b"{",
            b"{}",
            b"[]",
            b"null",
            b"NaN",
            b"-Infinity",
            b'{"state": "done"',
            b"\xff\xfe\x00",
            b'{"limit": 1e400}',
            b'{"limit": ' + b"9" * 5000 + b"}",
            b'"\\ud800"',
            b'{"\\u0000": 1}',
        ]
    ),
    st.integers(min_value=60, max_value=3000).map(_nested),
)
content_types = st.one_of(
    st.just("application/json"),
    st.just("application/json; charset=utf-8"),
    st.none(),
    st.sampled_from(
        [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "application/xml",
            "application/json; charset=latin-1",
            "application/vnd.api+json",
            "*/*",
            "json",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
)
query_text = st.text(max_size=30)  # the client sends UTF-8: no lone surrogates here
queries = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(FIELDS), query_text), st.one_of(st.sampled_from(WORDS), query_text, numbers.map(str))
    ),
    max_size=5,
)
segments = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["..", ".", "%00", "a b", "static-analyzer", str(uuid.uuid4()), "0" * 64, "job", "search"]),
)

# Every route of the API under the base path (also the ones added later), with its methods.
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]
NOT_ENVELOPED = {"/openapi.json", "/docs", "/worker/<string:id_or_short_name>/schema"}

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _routes(app) -> list[str]:
    return sorted(
        {
            rule.rule[len(BASE) :]
            for rule in app.url_map.iter_rules()
            if rule.rule.startswith(BASE + "/") and "<path:" not in rule.rule
        }
    )


@pytest.fixture
def targets(api, make_key, make_job):
    headers = make_key("ANALYZER", all_customers=True)
    job_id = make_job()
    task_id = api.get(f"/job/{job_id}", headers=headers)["data"]["tasks"][0]["id"]
    return {"headers": headers, "job_id": job_id, "task_id": task_id}


def _check(response, template: str):
    assert response.status_code < 500, (response.status_code, response.get_data()[:500])
    if template in NOT_ENVELOPED and response.status_code == 200:
        return
    check_envelope(response)


def _real_parameters(targets: dict) -> dict[str, str]:
    """A path parameter's value that names something that exists: the job, its task, a worker, a sample."""
    return {
        "job_id": targets["job_id"],
        "task_id": targets["task_id"],
        "id_or_short_name": "static-analyzer",
        "sha256": "8f84837cf04c1694512256ef78fa67c051b92326e31af2598efad37ccd2e01d9",
    }


def _path(template: str, targets: dict, draw) -> str:
    """Fill the template's parameters: the real job/task/worker, another valid id, or junk."""

    def value(name: str) -> str:
        choice = draw(st.integers(0, 9))
        real = _real_parameters(targets).get(name, "x")
        if choice <= 6:
            return real
        if choice <= 8:
            return str(uuid.uuid4())
        return urllib.parse.quote(draw(segments), safe="") or "x"

    import re

    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: value(m.group(1)), template)


def test_every_route_is_fuzzed(app):
    routes = _routes(app)
    for expected in (
        "/job",
        "/job/search",
        "/job/<uuid:job_id>",
        "/job/<uuid:job_id>/task/<uuid:task_id>",
        "/worker",
        "/worker/<string:id_or_short_name>",
        "/healthz",
    ):
        assert expected in routes


CRITERIA = [
    "limit",
    "offset",
    "sortBy",
    "state",
    "sampleSha256",
    "customer",
    "startTimestamp",
    "endTimestamp",
    "timeFieldStrategy",
    "timeMatchStrategy",
]
# The fields each route reads, so that most examples get past "unknown field" into the real work.
ROUTE_FIELDS = {
    "/job": CRITERIA,
    "/job/search": CRITERIA,
    "/job/<uuid:job_id>": ["state", "message", "reason"],
    "/job/<uuid:job_id>/history": [],
    "/job/<uuid:job_id>/tasks": ["limit", "offset", "sortBy"],
    "/job/<uuid:job_id>/task/<uuid:task_id>": ["state", "analyses", "message"],
    "/worker": [
        "shortName",
        "localizedNames",
        "localizedDescriptions",
        "schema",
        "accepts",
        "limit",
        "offset",
        "sortBy",
        "includeDeleted",
    ],
    "/worker/<string:id_or_short_name>": ["localizedNames", "localizedDescriptions", "schema", "accepts"],
    "/worker/<string:id_or_short_name>/schema": [],
    "/sample/<sha256>/submission": ["submission", "classification"],
}


def _often(draw, likely, otherwise, out_of: int = 10):
    """Usually (out_of - 1 in out_of) the likely strategy, sometimes the other one."""
    return draw(likely) if draw(st.integers(1, out_of)) < out_of else draw(otherwise)


@pytest.mark.parametrize("template", list(ROUTE_FIELDS))
def test_no_malformed_request_yields_a_500(app, client, targets, template):
    rules = [r for r in app.url_map.iter_rules() if r.rule == BASE + template]
    assert rules, f"{template} is not a route any more"
    allowed = sorted(rules[0].methods - {"HEAD", "OPTIONS"})
    names = ROUTE_FIELDS[template] or FIELDS
    route_objects = st.dictionaries(
        st.one_of(st.sampled_from(names), st.sampled_from(names), st.sampled_from(FIELDS)),
        st.one_of(st.sampled_from(WORDS), json_values, st.lists(st.sampled_from(WORDS))),
        max_size=4,
    )
    route_queries = st.lists(
        st.tuples(st.sampled_from(names), st.one_of(st.sampled_from(WORDS), query_text)), max_size=4
    )

    @FUZZ
    @given(data=st.data())
    def fuzz(data):
        draw = data.draw
        method = _often(draw, st.sampled_from(allowed), st.sampled_from(METHODS))
        path = _path(template, targets, draw)
        body = _often(draw, route_objects.map(_encode), bodies, 3) if method != "GET" else draw(st.none() | bodies)
        content_type = _often(draw, st.just("application/json"), content_types, 4)
        query = _often(draw, route_queries, queries, 3) if method == "GET" else draw(st.just([]) | queries)
        headers = _often(draw, st.just(dict(targets["headers"])), st.sampled_from([{}, {"Argus-API-Key": "x"}]))
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = client.open(BASE + path, method=method, query_string=query, data=body, headers=headers)
        _check(response, template)

    fuzz()


@FUZZ
@given(data=st.data())
def test_search_criteria_fuzz(client, targets, data):
    # Search is where most arguments meet SQL: only known criteria, with junk values, in body and query.
    criteria = data.draw(
        st.dictionaries(
            st.sampled_from(CRITERIA),
            st.one_of(json_values, st.sampled_from(WORDS), st.lists(st.sampled_from(WORDS), max_size=3)),
            max_size=6,
        )
    )
    response = client.post(
        f"{BASE}/job/search", headers=targets["headers"], data=_encode(criteria), content_type="application/json"
    )
    _check(response, "/job/search")
    query = [
        (k, v if isinstance(v, str) else json.dumps(v))
        for k, value in criteria.items()
        for v in (value if isinstance(value, list) else [value])
    ]
    query = [(k, v) for k, v in query if not any(0xD800 <= ord(c) <= 0xDFFF for c in v)]
    _check(client.get(f"{BASE}/job", headers=targets["headers"], query_string=query), "/job")


@FUZZ
@given(method=st.sampled_from(METHODS), parts=st.lists(segments, min_size=1, max_size=4), body=bodies)
def test_random_paths_are_404_or_405_in_the_envelope(client, targets, method, parts, body):
    path = "/" + "/".join(urllib.parse.quote(p, safe="") for p in parts)
    response = client.open(
        BASE + path, method=method, data=body, headers=targets["headers"], content_type="application/json"
    )
    _check(response, path)


# Values that broke parsers before (SPEC 14): digits Python's isdigit() takes and int() refuses or reads
# differently, numbers past every column's range, NUL bytes, text longer than any field.
HOSTILE = [
    "²",
    "١٢",
    "𝟙𝟚",
    "٠",
    "0" * 40,
    "9" * 5000,
    str(2**63),
    "-1",
    "1e400",
    "NaN",
    "\x00",
    "a\x00b",
    "x" * 20_000,
    "%",
    " 1",
    "",
]


def test_every_query_and_path_parameter_of_every_operation_takes_hostile_values(client, targets):
    """Each documented parameter of each operation, alone, with each hostile value: 200 or a 4xx, never a 5xx."""
    import re

    document = client.get(f"{BASE}/openapi.json").get_json()
    sent = 0
    for template, operations in document["paths"].items():
        for method, operation in operations.items():
            if method not in ("get", "put", "post", "delete"):
                continue
            parameters = [*operations.get("parameters", []), *operation.get("parameters", [])]
            path_names = [p["name"] for p in parameters if p["in"] == "path"]
            real = _real_parameters(targets)

            def url(hostile_name=None, hostile=None, template=template, path_names=path_names, real=real):
                def fill(match):
                    name = match.group(1)
                    value = hostile if name == hostile_name else real.get(name, "x")
                    return urllib.parse.quote(value, safe="") or "x"

                return re.sub(r"\{(\w+)\}", fill, template)

            for parameter in parameters:
                for hostile in HOSTILE:
                    if parameter["in"] == "query":
                        response = client.open(
                            url(),
                            method=method.upper(),
                            headers=targets["headers"],
                            query_string={parameter["name"]: hostile},
                            json={} if method in ("put", "post") else None,
                        )
                    elif parameter["in"] == "path":
                        response = client.open(
                            url(parameter["name"], hostile),
                            method=method.upper(),
                            headers=targets["headers"],
                            json={} if method in ("put", "post") else None,
                        )
                    else:
                        continue
                    sent += 1
                    assert response.status_code < 500, (
                        method,
                        template,
                        parameter["name"],
                        hostile[:40],
                        response.get_data()[:300],
                    )
    assert sent > 400, sent  # every operation's parameters were reached
