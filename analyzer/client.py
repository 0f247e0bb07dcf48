"""The few SampleDB v2 calls an analyzer makes, over plain HTTP, with retries and back-off."""

from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

log = logging.getLogger(__name__)

BASE_PATH = "/sampledb/v2"
# Back-off between attempts: doubles from the first to the cap, with jitter so that many
# analyzers coming back after an outage do not knock on the API in step.
BACKOFF_FIRST_SECONDS = 0.2
BACKOFF_CAP_SECONDS = 10.0
# A Retry-After longer than this is not waited for in one go (the overall deadline still holds).
RETRY_AFTER_CAP_SECONDS = 60.0
REQUEST_TIMEOUT_SECONDS = 30.0
# The API bounds `message` (SPEC §5.2); a longer one would be refused with 412.
MESSAGE_LIMIT = 4096


class ApiError(Exception):
    """The API answered with an error that retrying cannot fix (4xx)."""

    def __init__(self, status: int, method: str, path: str, messages: list):
        self.status = status
        self.messages = messages
        text = "; ".join(str(m.get("message")) for m in messages if isinstance(m, dict)) or "no message"
        super().__init__(f"{method} {path}: {status} {text}")


class ApiUnavailable(Exception):
    """The API stayed unreachable (or answered 5xx) until the retry deadline."""


class NotAllowed(ApiError):
    """401 or 403: the key is wrong or too weak; every later call would fail the same way."""


def clip(message: str | None) -> str | None:
    """A message the API accepts: at most MESSAGE_LIMIT characters, the end kept (it says the most)."""
    if message is None or len(message) <= MESSAGE_LIMIT:
        return message
    return "…" + message[-(MESSAGE_LIMIT - 1) :]


def _retry_after(header: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not header:
        return None
    header = header.strip()
    if header.isdigit():
        return float(header)
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Client:
    """SampleDB v2 over HTTP for one key. Thread-safe: every call opens its own connection.

    Connection errors, timeouts and 5xx answers are retried with exponential back-off (or the
    answer's Retry-After) until `retry_seconds` have passed; then ApiUnavailable. A 4xx is final
    and raised at once as ApiError (NotAllowed for 401/403).
    """

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        retry_seconds: float = 300.0,
        user_agent: str = "sampledb-jobs-analyzer",
        stopping: threading.Event | None = None,
    ):
        self.api_url = api_url.rstrip("/")
        self.api_key = api_key
        self.retry_seconds = retry_seconds
        self.user_agent = user_agent
        # Once set, a failing call is not retried beyond its current attempt plus one (a stopping runner).
        self.stopping = stopping or threading.Event()

    # -- the calls --------------------------------------------------------------------------

    def get_job(self, job_id: str) -> dict:
        return self.request("GET", f"/job/{job_id}")

    def job_history(self, job_id: str) -> list[dict]:
        return self.request("GET", f"/job/{job_id}/history")

    def update_task(
        self,
        job_id: str,
        task_id: str,
        state: str,
        *,
        message: str | None = None,
        analyses: list[str] | None = None,
        retry_seconds: float | None = None,
    ) -> dict:
        body: dict = {"state": state}
        if message is not None:
            body["message"] = clip(message)
        if analyses:
            body["analyses"] = list(analyses)
        return self.request("PUT", f"/job/{job_id}/task/{task_id}", body=body, retry_seconds=retry_seconds)

    def abort_job(self, job_id: str, reason: str | None = None) -> dict:
        return self.request("DELETE", f"/job/{job_id}", body={"reason": reason} if reason else None)

    def workers(self) -> list[dict]:
        return self.request("GET", "/worker", query={"limit": 0})

    def submit(self, sha256: str, payload: dict) -> dict:
        return self.request("POST", f"/sample/{sha256}/submission", body=payload)

    # -- the transport ----------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        body: dict | None = None,
        query: dict | None = None,
        retry_seconds: float | None = None,
    ):
        """The envelope's `data` of a successful answer."""
        url = f"{self.api_url}{BASE_PATH}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Argus-API-Key": self.api_key, "Accept": "application/json", "User-Agent": self.user_agent}
        if data is not None:
            headers["Content-Type"] = "application/json"
        deadline = time.monotonic() + (self.retry_seconds if retry_seconds is None else retry_seconds)
        attempt = 0
        while True:
            attempt += 1
            wait, problem = None, ""
            try:
                request = urllib.request.Request(url, data=data, method=method, headers=headers)
                with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
                    return json.loads(response.read() or b"null")["data"]
            except urllib.error.HTTPError as err:
                status, payload = err.code, err.read()
                if status < 500:
                    messages = _messages(payload)
                    raise (NotAllowed if status in (401, 403) else ApiError)(status, method, path, messages) from None
                wait, problem = _retry_after(err.headers.get("Retry-After")), f"{status}"
            except (urllib.error.URLError, OSError, ValueError) as err:
                # ValueError: a truncated or non-JSON answer (e.g. a proxy's error page) is a transient fault too.
                problem = str(getattr(err, "reason", err))
            delay = min(BACKOFF_CAP_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            if wait is not None:
                delay = min(wait, RETRY_AFTER_CAP_SECONDS)
            left = deadline - time.monotonic()
            if left <= 0 or (self.stopping.is_set() and attempt > 1):
                raise ApiUnavailable(f"{method} {path}: {problem} (gave up after {attempt} attempts)")
            log.warning("%s %s: %s; retrying in %.1f s", method, path, problem, min(delay, left))
            time.sleep(min(delay, left))


def _messages(payload: bytes) -> list:
    try:
        messages = json.loads(payload).get("messages")
    except (ValueError, AttributeError):
        return [{"message": payload[:300].decode("utf-8", "replace")}]
    return messages if isinstance(messages, list) else []
