"""The Argus envelope check and the Flask test client under the API's base path."""

from __future__ import annotations

BASE = "/sampledb/v2"
ENVELOPE_KEYS = {"responseCode", "limit", "offset", "count", "size", "metaData", "messages", "data"}
MESSAGE_KEYS = {"type", "field", "message", "messageTemplate", "parameter", "timestamp"}


def check_envelope(response, status: int | None = None) -> dict:
    """The body of `response` after checking it is the Argus envelope (§5.2) with responseCode == HTTP status."""
    body = response.get_json(silent=True)
    assert response.mimetype == "application/json", (response.status_code, response.get_data()[:300])
    assert isinstance(body, dict) and set(body) == ENVELOPE_KEYS, body
    assert body["responseCode"] == response.status_code
    if status is not None:
        assert response.status_code == status, body
    assert body["metaData"] == {}
    for item in body["messages"]:
        assert set(item) == MESSAGE_KEYS, item
        assert item["type"] in ("FIELD_ERROR", "ACTION_ERROR", "WARNING", "NOTIFICATION", "INFO")
        assert isinstance(item["message"], str) and isinstance(item["timestamp"], int)
    if response.status_code >= 400:
        assert body["data"] is None and body["messages"], body
    elif isinstance(body["data"], list):
        assert body["size"] == len(body["data"]) and body["count"] >= body["size"]
    else:
        assert (body["count"], body["size"], body["limit"], body["offset"]) == (0, 0, 0, 0)
    return body


class Api:
    """The Flask test client under the base path; every answer is checked to be the envelope."""

    def __init__(self, client):
        self.client = client

    def call(self, method: str, path: str, status: int | None = None, **kwargs) -> dict:
        return check_envelope(self.client.open(BASE + path, method=method, **kwargs), status)

    def get(self, path, status=200, **kwargs):
        return self.call("GET", path, status, **kwargs)

    def post(self, path, status=200, **kwargs):
        return self.call("POST", path, status, **kwargs)

    def put(self, path, status=200, **kwargs):
        return self.call("PUT", path, status, **kwargs)

    def delete(self, path, status=200, **kwargs):
        return self.call("DELETE", path, status, **kwargs)
