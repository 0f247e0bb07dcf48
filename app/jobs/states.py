"""Job and task states and the one rule that says which moves are allowed."""

from __future__ import annotations

import enum

from app.errors.domain import Conflict

JOB_ACTIVE = ("enqueued", "executing")
JOB_FINAL = ("done", "failed", "timeout", "aborted")
JOB_STATES = JOB_ACTIVE + JOB_FINAL

TASK_ACTIVE = ("enqueued", "executing")
TASK_FINAL = ("success", "failed", "timeout", "cancelled")
TASK_STATES = TASK_ACTIVE + TASK_FINAL
# Older clients say "successful"; it means "success".
TASK_STATE_ALIASES = {"successful": "success"}
# States an analyzer may set on a task (PUT /job/{id}/task/{taskId}).
TASK_UPDATE_STATES = ("executing", "success", "failed", "cancelled")

# When a job goes final, its unfinished tasks follow.
TASK_STATE_WHEN_JOB_ENDS = {"timeout": "timeout", "failed": "failed", "done": "cancelled", "aborted": "cancelled"}


class Move(enum.Enum):
    CHANGE = "change"          # a real state change: recorded in history and announced
    HEARTBEAT = "heartbeat"    # executing -> executing: refreshes lastUpdatedTimestamp only
    REPEAT = "repeat"          # the same final state again: idempotent, nothing changes


class StateConflict(Conflict):
    """The move is not allowed from the current state."""


def classify_move(kind: str, current: str, target: str) -> Move:
    """Say what moving a job or task (`kind`) from `current` to `target` is, or raise StateConflict."""
    final = JOB_FINAL if kind == "job" else TASK_FINAL
    if current in final:
        if target == current:
            return Move.REPEAT
        raise StateConflict(f"Cannot change {kind} state from {current} to {target}: {current} is final")
    if target == "executing":
        return Move.HEARTBEAT if current == "executing" else Move.CHANGE
    if target in final:
        return Move.CHANGE
    raise StateConflict(f"Cannot change {kind} state from {current} to {target}")
