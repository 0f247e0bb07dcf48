"""Every Prometheus series of the service (§9.2), defined here and nowhere else.

The domain counts events through the small `count_*` functions; the web app and the
Celery worker expose them. Labels carry only bounded, non-identifying values (states,
causes, outcomes, table and queue names, URL rules): never a customer, user, key, job id
or sample hash. The series are made on first use, so a process can switch to
multiprocess mode (`enable_multiprocess`, the Celery worker at start) before any exists;
under gunicorn PROMETHEUS_MULTIPROC_DIR is set before the process starts.

Counters of a database change are counted only when its transaction commits
(`session.info` holds them until then), so a rolled-back or retried transaction never
counts twice.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy.orm as so

from app.jobs.states import JOB_TRANSITIONS
from app.unit_of_work import after_commit

if TYPE_CHECKING:  # imported where the series are made, on first use
    from prometheus_client import Counter, Histogram

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A multiprocess file starts with 4 bytes of "bytes used" and 4 of padding (prometheus_client.mmap_dict).
MMAP_HEADER_BYTES = 8
SUBMISSION_OUTCOMES = ("created", "existing", "duplicate", "invalid", "dead")
PURGED_TABLES = ("outbox", "jobs", "job_tasks", "job_history")
# A request that matched no URL rule (404, 405) is counted under this route, never under its raw path.
UNMATCHED_ROUTE = "unmatched"
_CONVERTER = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class _Series:
    http_requests: Counter
    http_request_duration: Histogram
    submissions: Counter
    job_transitions: Counter
    outbox_sent: Counter
    outbox_send_failures: Counter
    purged_rows: Counter


_series: _Series | None = None
_series_lock = threading.Lock()


def series() -> _Series:
    """The process's counters and histograms, made on first use."""
    global _series
    with _series_lock:
        if _series is None:
            from prometheus_client import Counter, Histogram

            _series = _Series(
                http_requests=Counter(
                    "sampledb_http_requests_total", "HTTP requests by URL rule", ["method", "route", "status"]
                ),
                http_request_duration=Histogram(
                    "sampledb_http_request_duration_seconds",
                    "Time per HTTP request",
                    ["method", "route"],
                    buckets=REQUEST_BUCKETS,
                ),
                submissions=Counter("sampledb_submissions_total", "Submissions ingested, by outcome", ["outcome"]),
                job_transitions=Counter(
                    "sampledb_job_transitions_total", "Job state changes", ["from_state", "to_state", "cause"]
                ),
                outbox_sent=Counter("sampledb_outbox_sent_total", "Outbox rows Kafka acknowledged"),
                outbox_send_failures=Counter(
                    "sampledb_outbox_send_failures_total", "Outbox rows whose send failed (retried later)"
                ),
                purged_rows=Counter("sampledb_purged_rows_total", "Rows deleted by retention", ["table"]),
            )
            # Every outcome, transition and table from zero, so a rate() sees the first event.
            for outcome in SUBMISSION_OUTCOMES:
                _series.submissions.labels(outcome)
            for transition in JOB_TRANSITIONS:
                _series.job_transitions.labels(*transition)
            for table in PURGED_TABLES:
                _series.purged_rows.labels(table)
        return _series


def enable_multiprocess(directory: str) -> None:
    """Make this process (and the processes it forks) write its series to files in `directory`.

    Must run before the first series is made (the Celery worker calls it at start).
    """
    if _series is not None:
        raise RuntimeError("metrics already in use in this process: multiprocess mode must be chosen first")
    os.environ[MULTIPROC_ENV] = directory
    from prometheus_client import values

    values.ValueClass = values.get_value_class()


def mark_process_dead(pid: int) -> None:
    """Drop the live-gauge files of a process that ended (its counters keep counting in the sum)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def process_registry():
    """The registry of this process's series: every process's sum in multiprocess mode."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    series()
    if not os.environ.get(MULTIPROC_ENV):
        return REGISTRY

    class ReadyFilesCollector(MultiProcessCollector):
        """Every process's file that holds its header already. A process that has just created its file has not
        yet written the header (its size is 0): prometheus-client's own collector fails the whole scrape on it
        (struct.error), so one worker starting would answer a scrape with a 500."""

        def collect(self):
            files = glob.glob(os.path.join(self._path, "*.db"))
            return self.merge([f for f in files if _holds_header(f)], accumulate=True)

    registry = CollectorRegistry()
    ReadyFilesCollector(registry)
    return registry


def _holds_header(path: str) -> bool:
    try:
        return os.path.getsize(path) >= MMAP_HEADER_BYTES
    except OSError:  # removed by mark_process_dead meanwhile
        return False


# -- counting ----------------------------------------------------------------------------------


def count_submissions(session: so.Session | None, outcome: str, amount: int = 1) -> None:
    """`amount` submissions with this outcome; counted at commit when a session is given."""
    if amount <= 0:
        return
    counter = series().submissions.labels(outcome)
    if session is None:
        counter.inc(amount)
    else:
        after_commit(session, lambda: counter.inc(amount))


def count_transition(session: so.Session, from_state: str, to_state: str, cause: str) -> None:
    counter = series().job_transitions.labels(from_state, to_state, cause)
    after_commit(session, counter.inc)


def count_relayed(sent: int, failed: int) -> None:
    if sent:
        series().outbox_sent.inc(sent)
    if failed:
        series().outbox_send_failures.inc(failed)


def count_purged(counts: dict[str, int]) -> None:
    for table, amount in counts.items():
        if amount:
            series().purged_rows.labels(table).inc(amount)


def observe_request(method: str, route: str | None, status: int, seconds: float) -> None:
    method = method if method in HTTP_METHODS else "OTHER"  # a client may send any token as a method
    # The rule without its converters: `/job/<uuid:job_id>` is counted as `/job/<job_id>`.
    route = _CONVERTER.sub(r"<\1>", route) if route else UNMATCHED_ROUTE
    series().http_requests.labels(method, route, str(status)).inc()
    series().http_request_duration.labels(method, route).observe(seconds)


# -- service-wide gauges, read on scrape -------------------------------------------------------


class ServiceGauges:
    """A collector of the service-wide gauges, read by `read()` (PostgreSQL, Redis) and kept `cache_seconds`.

    A scrape never waits for the database once a first reading exists: a stale reading is
    answered at once and a fresh one is read in the background (one at a time), so the next
    scrape has it. With `cache_seconds=0` every scrape reads, and waits.
    """

    def __init__(self, read: Callable[[], object], cache_seconds: float):
        self._read, self._cache_seconds = read, cache_seconds
        self._lock = threading.Lock()
        self._vitals, self._read_at = None, 0.0
        self._refreshing = False

    def describe(self) -> Iterable:
        return []  # registering must not query the database

    def collect(self) -> Iterable:
        from prometheus_client.core import GaugeMetricFamily

        vitals = self._current()
        if vitals is None:
            return
        active = GaugeMetricFamily("sampledb_jobs_active", "Jobs now enqueued or executing", labels=["state"])
        for state, count in vitals.jobs_active.items():
            active.add_metric([state], count)
        yield active
        yield GaugeMetricFamily("sampledb_outbox_backlog", "Unsent outbox rows", value=vitals.outbox_backlog)
        yield GaugeMetricFamily(
            "sampledb_outbox_oldest_unsent_age_seconds",
            "Age of the oldest unsent outbox row",
            value=vitals.outbox_oldest_unsent_age_seconds,
        )
        yield GaugeMetricFamily("sampledb_outbox_parked", "Parked outbox rows", value=vitals.outbox_parked)
        yield GaugeMetricFamily("sampledb_dead_submissions", "Stored dead submissions", value=vitals.dead_submissions)
        if vitals.periodic:
            interval = GaugeMetricFamily(
                "sampledb_periodic_task_interval_seconds", "How often beat runs a periodic task", labels=["task"]
            )
            age = GaugeMetricFamily(
                "sampledb_periodic_task_last_run_age_seconds",
                "Seconds since a periodic task last ran (since beat scheduled it, when it never ran)",
                labels=["task"],
            )
            for task, (every, seconds) in vitals.periodic.items():
                interval.add_metric([task], every)
                age.add_metric([task], seconds)
            yield interval
            yield age
        if vitals.queue_lengths is not None:
            queues = GaugeMetricFamily(
                "sampledb_celery_queue_length", "Messages waiting in a Celery queue", labels=["queue"]
            )
            for queue, length in vitals.queue_lengths.items():
                queues.add_metric([queue], length)
            yield queues

    def _current(self):
        with self._lock:
            stale = time.monotonic() - self._read_at >= self._cache_seconds
            if self._vitals is not None and (not stale or self._cache_seconds > 0):
                if stale and not self._refreshing:
                    self._refreshing = True
                    threading.Thread(target=self._refresh, name="service-gauges", daemon=True).start()
                return self._vitals
        return self._refresh()

    def _refresh(self):
        try:
            vitals = self._read()
        except Exception:  # the process series still answer; the gauges keep their last reading (or are missing)
            log.warning("could not read the service gauges", exc_info=True)
            vitals = None
        with self._lock:
            self._refreshing = False
            if vitals is not None:
                self._vitals, self._read_at = vitals, time.monotonic()
            return self._vitals
