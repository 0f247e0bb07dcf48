"""The one way a change is committed: by views, Celery tasks and the outbox relay alike.

Work that must follow a commit, and only a commit (the outbox trigger, metric counts, dropping
the cached policy snapshot), is registered with `after_commit` inside the unit of work and run
by it once the transaction committed; a rollback forgets it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager

import sqlalchemy.orm as so

log = logging.getLogger(__name__)

_AFTER_COMMIT = "sampledb.after_commit"


def after_commit(session: so.Session, action: Callable[[], None], *, once: Hashable | None = None) -> None:
    """Run `action` once this session's transaction commits. Actions registered with the same `once`
    key run once per transaction (the first one registered)."""
    actions: dict = session.info.setdefault(_AFTER_COMMIT, {})
    actions.setdefault(object() if once is None else once, action)


@contextmanager
def unit_of_work(session: so.Session) -> Iterator[so.Session]:
    """One transaction: committed when the block ends, rolled back on any error (also an interrupt);
    after a commit, the work registered with `after_commit` runs."""
    try:
        yield session
        session.commit()
    except BaseException:
        session.info.pop(_AFTER_COMMIT, None)
        session.rollback()
        raise
    for action in session.info.pop(_AFTER_COMMIT, {}).values():
        try:
            action()
        except Exception:  # the commit stands; each action says what makes up for its failure
            log.warning("work after a commit failed", exc_info=True)
