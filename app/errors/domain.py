"""What the domain refuses, in its own words. app.api answers each kind in the Argus envelope
(see its error mapping); a Celery task logs or retries instead."""

from __future__ import annotations


class DomainError(Exception):
    """A request the domain cannot carry out as given."""


class NotFound(DomainError, LookupError):
    """No such thing, or one the caller may not see."""


class Conflict(DomainError):
    """The request contradicts the current state."""


class ArgumentConflict(Conflict):
    """One argument contradicts what exists (e.g. an id already taken); `field` names it."""

    def __init__(self, field: str, text: str):
        super().__init__(text)
        self.field = field


class InvalidRequest(DomainError, ValueError):
    """The request cannot be carried out as given; no single field is to blame."""


class InvalidArgument(InvalidRequest):
    """One argument is wrong; `field` names it (dotted for nested fields)."""

    def __init__(self, field: str, text: str):
        super().__init__(text)
        self.field = field


class TooManyMatches(InvalidArgument):
    """A search asked for every match and there are more than one answer may hold."""


class WorkerExists(Conflict):
    """An analysis worker with this shortName is already registered."""
