"""The app served over real HTTP (werkzeug's threaded server on a free port), for clients such as
mnemonic's argus-api SDK that need a URL, and a check of answers against Argus' own OpenAPI schema."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from importlib import resources

from werkzeug.serving import make_server


@contextmanager
def serve(app) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 (a port the system picks) until the block ends; yields the base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def sdk_session(url: str, headers: dict):
    """An argus-api session against `url` with the key in `headers` (no retries: a failure shows at once)."""
    from argus_api.session import ArgusAPISession

    return ArgusAPISession(auth=headers["Argus-API-Key"], api_url=url, max_retries=0)


@lru_cache(maxsize=1)
def argus_schemas() -> dict:
    """The component schemas of Argus' SampleDB OpenAPI document, as the argus-api package ships it."""
    text = resources.files("argus_api").joinpath("schema/sampledb/sampledb.json").read_text()
    return json.loads(text)["components"]["schemas"]


def argus_model(name: str) -> dict:
    (schema,) = [
        s for key, s in argus_schemas().items() if key.endswith(f".{name}") and not key.startswith("ResultStash")
    ]
    return schema


def schema_problems(value, schema: dict, path: str = "data", *, exact: bool = True, top: bool = True) -> list[str]:
    """Where `value` differs from an Argus schema: at the top a property it lacks, anywhere (when `exact`) a
    property beyond the schema, or a value of another type. Null stands for an absent value anywhere, and
    nested clauses may leave out what they do not use."""
    if "$ref" in schema:
        schema = argus_schemas()[schema["$ref"].rsplit("/", 1)[1]]
    if value is None:
        return []
    kind = schema.get("type")
    if kind == "object" and "properties" in schema:
        if not isinstance(value, dict):
            return [f"{path}: not an object"]
        problems = [f"{path}.{key}: missing" for key in schema["properties"] if top and key not in value]
        if exact:
            problems += [f"{path}.{key}: not in the schema" for key in value if key not in schema["properties"]]
        for key, sub in schema["properties"].items():
            if key in value:
                problems += schema_problems(value[key], sub, f"{path}.{key}", exact=exact, top=False)
        return problems
    if kind == "array":
        if not isinstance(value, list):
            return [f"{path}: not an array"]
        return [
            p
            for i, item in enumerate(value)
            for p in schema_problems(item, schema["items"], f"{path}[{i}]", exact=exact, top=False)
        ]
    python_types = {"string": str, "integer": int, "boolean": bool, "object": dict}
    if kind in python_types and not isinstance(value, python_types[kind]):
        return [f"{path}: not a {kind}"]
    if "enum" in schema and kind == "string" and value not in schema["enum"]:
        return [f"{path}: {value!r} not one of {schema['enum']}"]
    return []
