"""What a database error means for the work that met it, decided by its SQLSTATE, for every task
and for the API alike: retry later, or the data is refused for good, or neither (a bug of ours).

PEP 249 files several permanent refusals under OperationalError too: psycopg raises
ProgramLimitExceeded (SQLSTATE 54000, e.g. an index row too large) as one. So the
SQLSTATE decides, not the exception class.
"""

from __future__ import annotations

import enum

import sqlalchemy.exc as sa_exc

# 08 connection exception, 25 invalid transaction state (25006: a read-only transaction, the
# server a failover left us on is a standby or a demoted primary), 40 transaction rollback
# (deadlock, serialisation), 53 insufficient resources, 57 operator intervention (shutdown, query
# cancelled at its timeout), 55P03 lock not available.
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "25", "40", "53", "57"})
TRANSIENT_SQLSTATES = frozenset({"55P03"})
# 22 data exception, 23 integrity constraint violation, 54 program limit exceeded: this data, as
# it is, will never be stored.
REFUSAL_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})
# The exception classes a transient error arrives as (what Celery's autoretry_for catches).
TRANSIENT_ERROR_CLASSES = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, sa_exc.InternalError)


class Outcome(enum.Enum):
    RETRY = "retry"  # the database is away, busy or cannot write now: the same work can succeed later
    REFUSED = "refused"  # PostgreSQL refused the data for good: a submission becomes a dead submission


def outcome_of(error: BaseException) -> Outcome | None:
    """RETRY or REFUSED; None for an error that is not the database's verdict on the data (a statement
    of ours it cannot run, a bug in our code): it must propagate, not bury the work as dead."""
    if is_transient(error):
        return Outcome.RETRY
    sqlstate = sqlstate_of(error)
    if sqlstate is not None and sqlstate[:2] in REFUSAL_SQLSTATE_CLASSES:
        return Outcome.REFUSED
    return None


def sqlstate_of(error: BaseException) -> str | None:
    return getattr(getattr(error, "orig", None), "sqlstate", None) if isinstance(error, sa_exc.DBAPIError) else None


def is_transient(error: BaseException) -> bool:
    """True when retrying later can succeed: the database went away, was busy or cannot write now."""
    if isinstance(error, (sa_exc.TimeoutError, sa_exc.InterfaceError)):
        return True  # no connection from the pool in time; a connection broke under the driver
    if not isinstance(error, sa_exc.DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    sqlstate = sqlstate_of(error)
    if sqlstate is None:  # no answer from the server at all: it is away
        return isinstance(error, sa_exc.OperationalError)
    return sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES or sqlstate in TRANSIENT_SQLSTATES


def refusal_text(error: BaseException) -> str:
    """What PostgreSQL said, without SQLAlchemy's statement dump."""
    original = getattr(error, "orig", None) or error
    sqlstate = getattr(original, "sqlstate", None)
    text = str(original).strip()
    return f"{sqlstate}: {text}" if sqlstate else text
