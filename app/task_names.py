"""The names the API, the Celery workers and beat share: task names and queue names.

Apart from celeryconfig, which reads the environment when imported: the web app sends
tasks by these names without loading the Celery settings of its own process.
"""

from __future__ import annotations


class QueueNames:
    INGEST = "ingest"  # submissions from the sample service and the REST intake
    OUTBOX = "outbox"  # relaying outbox rows to Kafka: after each commit, and beat's safety net
    PERIODIC = "periodic"  # beat: the timeout sweeps

    @classmethod
    def all(cls) -> list[str]:
        return [cls.INGEST, cls.OUTBOX, cls.PERIODIC]


class TaskNames:
    """Stable names: the sample service sends `sampledb.ingest_submission` by name."""

    INGEST_SUBMISSION = "sampledb.ingest_submission"
    INGEST_SUBMISSIONS = "sampledb.ingest_submissions"
    RELAY_OUTBOX = "sampledb.relay_outbox"
    SWEEP_EXECUTION_TIMEOUTS = "sampledb.sweep_execution_timeouts"
    SWEEP_ENQUEUED_TIMEOUTS = "sampledb.sweep_enqueued_timeouts"
    SWEEP_UNCONFIRMED_ABORTS = "sampledb.sweep_unconfirmed_aborts"
