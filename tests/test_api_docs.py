"""OpenAPI 3 document, offline Swagger UI, /healthz and /readyz."""

from __future__ import annotations

import re
import time

from tests.support.api import BASE, check_envelope

# Every path of §5.3 with its methods (OpenAPI path templates; parameter names are free).
SPEC_OPERATIONS = {
    "/job": {"get"},
    "/job/search": {"post"},
    "/job/{}": {"get", "put", "post", "delete"},
    "/job/{}/history": {"get"},
    "/job/{}/tasks": {"get"},
    "/job/{}/task/{}": {"get", "put"},
    "/worker": {"get", "post"},
    "/worker/{}": {"get", "put", "delete"},
    "/worker/{}/schema": {"get"},
    "/sample/{}/submission": {"post"},
}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _resolve(document: dict, ref: str):
    assert ref.startswith("#/"), ref
    node = document
    for part in ref[2:].split("/"):
        assert part in node, f"unresolvable $ref {ref}"
        node = node[part]
    return node


def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_openapi_document_is_valid_openapi_3_with_every_path(client):
    response = client.get(f"{BASE}/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    document = response.get_json()
    assert re.fullmatch(r"3\.\d+\.\d+", document["openapi"])
    assert document["info"]["title"] and document["info"]["version"]
    assert document["components"]["securitySchemes"]["ArgusApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "Argus-API-Key",
    }
    # Paths, normalised to templates, with their methods.
    found = {}
    for path, item in document["paths"].items():
        assert path.startswith(f"{BASE}/"), path
        template = re.sub(r"\{[^}]+\}", "{}", path[len(BASE) :])
        found[template] = {m for m in item if m in HTTP_METHODS}
    for path, methods in SPEC_OPERATIONS.items():
        assert path in found, f"{path} missing from the OpenAPI document"
        assert methods <= found[path], (path, found[path])
    # Structure: every operation has responses, its path parameters are declared, every $ref resolves.
    operation_ids = []
    for path, item in document["paths"].items():
        names = set(re.findall(r"\{([^}]+)\}", path))
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            assert operation["responses"], (path, method)
            for code in operation["responses"]:
                assert code == "default" or re.fullmatch(r"[1-5]\d\d", code), code
            declared = {
                p["name"] for p in item.get("parameters", []) + operation.get("parameters", []) if p["in"] == "path"
            }
            assert names == declared, (path, method, declared)
            operation_ids.append(operation.get("operationId", f"{method} {path}"))
    assert len(operation_ids) == len(set(operation_ids))
    for ref in _refs(document):
        _resolve(document, ref)
    # Bad arguments are documented as the API answers them: 412, not webargs' 422.
    search = document["paths"][f"{BASE}/job/search"]["post"]
    assert "412" in search["responses"] and "422" not in search["responses"]
    assert {"401", "403"} <= set(search["responses"])
    assert "requestBody" in search
    update = document["paths"][f"{BASE}/job/{{job_id}}"]["put"]
    assert {"200", "404", "409", "412"} <= set(update["responses"])


def _unescape(pointer_part: str) -> str:
    return pointer_part.replace("~1", "/").replace("~0", "~")


def test_openapi_links_name_real_operations_and_fields_the_answers_carry(client):
    """A client (and the stateful fuzzing) follows a response's links: each names an operation of the document,
    one of its path parameters, and a field of the response's own schema."""
    document = client.get(f"{BASE}/openapi.json").get_json()
    links = {
        (path, method, status, name): link
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
        for status, response in operation["responses"].items()
        for name, link in response.get("links", {}).items()
    }
    sources = {(path, method, status) for path, method, status, _ in links}
    assert {
        (f"{BASE}/sample/{{sha256}}/submission", "post", "202"),
        (f"{BASE}/worker", "post", "201"),
        (f"{BASE}/policy/default/rule", "post", "201"),
    } == sources
    for (path, method, status, name), link in links.items():
        target_path, target_method = link["operationRef"].removeprefix("#/paths/").rsplit("/", 1)
        target = document["paths"][_unescape(target_path)][target_method]
        (parameter, expression), *rest = link["parameters"].items()
        assert not rest and parameter in set(re.findall(r"\{([^}]+)\}", _unescape(target_path))), name
        assert target["responses"], name
        # "$response.body#/data/jobID": the answer's envelope schema has data.jobID.
        field = expression.removeprefix("$response.body#/data/")
        answer = document["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
        data = _resolve(document, answer["$ref"])["properties"]["data"]
        (data_schema,) = [_resolve(document, one["$ref"]) for one in data.get("anyOf", [data]) if "$ref" in one]
        assert field in data_schema["properties"], (name, field)


def test_openapi_documents_the_search_criteria_and_the_envelope(client):
    document = client.get(f"{BASE}/openapi.json").get_json()
    parameters = {p["name"] for p in document["paths"][f"{BASE}/job"]["get"]["parameters"] if p["in"] == "query"}
    assert parameters == {
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
    }
    schemas = document["components"]["schemas"]
    envelope = schemas["JobListEnvelope"]["properties"]
    assert set(envelope) == {"responseCode", "limit", "offset", "count", "size", "metaData", "messages", "data"}
    job = _resolve(document, envelope["data"]["items"]["$ref"])
    assert {"id", "state", "flags", "tasks", "enqueuedTimestamp", "lastUpdatedTimestamp"} <= set(job["properties"])
    assert job["properties"]["enqueuedTimestamp"]["type"] == "integer"


def test_docs_use_only_local_assets_and_they_are_served(client):
    response = client.get(f"{BASE}/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    # No CDN: no absolute http(s) or protocol-relative URL in any src or href.
    assert not re.search(r"""(?:src|href)\s*=\s*["']\s*(?:https?:)?//""", html, re.IGNORECASE), html
    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets), assets
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.get_data()) > 1000, asset
    assert f"{BASE}/openapi.json" in html


def test_docs_static_asset_that_does_not_exist_is_404(client):
    check_envelope(client.get(f"{BASE}/docs/static/nope.js"), 404)
    check_envelope(client.get(f"{BASE}/docs/static/../../../etc/passwd"), 404)


def test_healthz(client):
    body = check_envelope(client.get(f"{BASE}/healthz"), 200)
    assert body["data"] == {"status": "ok"}


def test_readyz_stays_ready_without_redis_and_kafka_and_names_them_quickly(client):
    """Fault: Redis and Kafka unreachable (the test settings point them at 127.0.0.1:1, where nothing listens).
    The API still serves (the outbox rides the outage), so a load balancer must keep it in service."""
    started = time.monotonic()
    response = client.get(f"{BASE}/readyz")
    elapsed = time.monotonic() - started
    body = check_envelope(response, 200)
    assert elapsed < 10, elapsed
    assert body["data"] == {
        "postgresql": "ok",
        "redis": "unavailable",
        "celeryBroker": "unavailable",
        "kafka": "unavailable",
    }
    assert sorted(m["message"].split()[0] for m in body["messages"]) == ["kafka", "redis"]
    assert all(m["type"] == "WARNING" for m in body["messages"])


def test_readyz_fails_when_postgresql_does_not_answer(settings):
    import dataclasses

    import sqlalchemy as sa

    from app.factory import create_app

    away = sa.make_url(settings.database_url).set(host="127.0.0.1", port=1).render_as_string(hide_password=False)
    unready = create_app(dataclasses.replace(settings, database_url=away))
    body = check_envelope(unready.test_client().get(f"{BASE}/readyz"), 503)
    assert body["data"] is None
    assert {m["message"].split()[0] for m in body["messages"]} == {"postgresql", "redis", "kafka"}


def test_readyz_is_200_when_every_part_is_reachable(settings, redis_url, kafka_bootstrap):
    import dataclasses

    from app.factory import create_app

    ready = create_app(dataclasses.replace(settings, redis_url=redis_url, kafka_bootstrap_servers=kafka_bootstrap))
    body = check_envelope(ready.test_client().get(f"{BASE}/readyz"), 200)
    assert body["data"] == {"postgresql": "ok", "redis": "ok", "celeryBroker": "ok", "kafka": "ok"}


def test_readyz_reports_a_rabbitmq_broker_of_its_own_and_stays_ready_without_it(settings, redis_url, kafka_bootstrap):
    """Fault: Celery's broker is a RabbitMQ (SAMPLEDB_CELERY_BROKER_URL) that does not answer; Redis does."""
    import dataclasses

    from app.factory import create_app

    away = "amqp://guest:guest@127.0.0.1:1//"
    app = create_app(
        dataclasses.replace(
            settings, redis_url=redis_url, kafka_bootstrap_servers=kafka_bootstrap, celery_broker_url=away
        )
    )
    body = check_envelope(app.test_client().get(f"{BASE}/readyz"), 200)
    assert body["data"] == {"postgresql": "ok", "redis": "ok", "celeryBroker": "unavailable", "kafka": "ok"}
    assert [m["message"].split()[0] for m in body["messages"]] == ["celeryBroker"]
