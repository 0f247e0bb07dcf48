"""Which database errors go away on their own (retry later) and which never will (the data is refused).

PEP 249 files several permanent refusals under OperationalError too: psycopg raises
ProgramLimitExceeded (SQLSTATE 54000, e.g. an index row too large) as one. So the
SQLSTATE decides, not the exception class.
"""

from __future__ import annotations

import sqlalchemy.exc as sa_exc

# 08 connection exception, 40 transaction rollback (deadlock, serialisation), 53 insufficient
# resources, 57 operator intervention (shutdown, query cancelled), 55P03 lock not available.
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57"})
TRANSIENT_SQLSTATES = frozenset({"55P03"})
# The exception classes a transient error arrives as (what Celery's autoretry_for catches).
TRANSIENT_ERROR_CLASSES = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)


def is_transient(error: BaseException) -> bool:
    """True when retrying later can succeed: the database went away or was busy."""
    if isinstance(error, (sa_exc.TimeoutError, sa_exc.InterfaceError)):
        return True  # no connection from the pool in time; a connection broke under the driver
    if not isinstance(error, sa_exc.DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate is None:  # no answer from the server at all: it is away
        return isinstance(error, sa_exc.OperationalError)
    return sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES or sqlstate in TRANSIENT_SQLSTATES


def refusal_text(error: BaseException) -> str:
    """What PostgreSQL said, without SQLAlchemy's statement dump."""
    original = getattr(error, "orig", None) or error
    sqlstate = getattr(original, "sqlstate", None)
    text = str(original).strip()
    return f"{sqlstate}: {text}" if sqlstate else text
