"""The one way a change is committed: by views, Celery tasks and the outbox relay alike."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy.orm as so


@contextmanager
def unit_of_work(session: so.Session) -> Iterator[so.Session]:
    """One transaction: committed when the block ends, rolled back on any error (also an interrupt)."""
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
