"""Beat's scheduler: Celery's PersistentScheduler that sends only while it holds the scheduler lease.

Every beat process (one per host, or two by mistake) runs this; the one holding the lease
(app.operations.scheduler_lease) schedules, the others ask again every `retry` seconds and take over
once the holder has stopped renewing for SAMPLEDB_SCHEDULER_LEASE_SECONDS. A holder renews every third of
the lease and asks before sending whenever its last renewal is older than that, so a beat that was
stopped or cut off sends nothing until it knows it still holds the lease. When a beat takes over, its
entries that came due while it waited run at once: every periodic task is safe to run twice (SPEC 13.1).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid

from celery.beat import PersistentScheduler

from app.clock import monotonic
from app.extensions import current_settings, db
from app.operations import scheduler_lease
from app.unit_of_work import unit_of_work
from workers.celery_app import flask_app

log = logging.getLogger(__name__)


class LeasedScheduler(PersistentScheduler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._renewed_at: float | None = None  # monotonic time of the last renewal that succeeded; None: not held
        self._unanswered = False  # the database did not answer the last ask (said once, not at every retry)

        with flask_app().app_context():
            self.lease_seconds = float(current_settings().scheduler_lease_seconds)
        self.renew_every = self.lease_seconds / 3
        # How often a beat without the lease asks for it: a fifth of the lease, at least every second.
        self.retry = max(0.2, min(1.0, self.lease_seconds / 5))

    @property
    def holding(self) -> bool:
        return self._renewed_at is not None

    def tick(self, *args, **kwargs) -> float:
        renewed_at = self._hold()
        if renewed_at is None:
            return self.retry
        return min(super().tick(*args, **kwargs), max(0.0, renewed_at + self.renew_every - monotonic()))

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.holding:
                self._release()

    def _hold(self) -> float | None:
        """When the lease was last renewed (monotonic), renewing it first if that is a third of it ago; None
        while another beat holds it or the database does not answer."""
        if self._renewed_at is not None and monotonic() - self._renewed_at < self.renew_every:
            return self._renewed_at
        asked_at = monotonic()
        try:
            with flask_app().app_context(), unit_of_work(db.session):
                held = scheduler_lease.hold(db.session, self.holder, self.lease_seconds)
        except Exception as err:  # the database is away: this beat cannot know it holds the lease, so it waits
            if not self._unanswered:
                log.warning("scheduler lease: could not ask the database (%s); nothing is scheduled until it can", err)
            self._unanswered = True
            held = False
        else:
            self._unanswered = False
        if held != self.holding:
            log.info("scheduler lease %s by %s", "taken: periodic tasks are scheduled" if held else "lost", self.holder)
        self._renewed_at = asked_at if held else None
        return self._renewed_at

    def _release(self) -> None:
        try:
            with flask_app().app_context(), unit_of_work(db.session):
                scheduler_lease.release(db.session, self.holder)
            log.info("scheduler lease released by %s", self.holder)
        except Exception as err:  # it expires on its own
            log.warning("scheduler lease: could not release (%s); it expires in %.0f s", err, self.lease_seconds)
        self._renewed_at = None
