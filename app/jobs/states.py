"""Job and task states, the one rule that says which moves are allowed, and the moves each cause makes."""

from __future__ import annotations

import enum

from app.errors.domain import Conflict


class JobState(enum.StrEnum):
    ENQUEUED = "enqueued"
    EXECUTING = "executing"
    DONE = "done"
    FAILED = "failed"
    TIMEOUT = "timeout"
    ABORTED = "aborted"


class TaskState(enum.StrEnum):
    ENQUEUED = "enqueued"
    EXECUTING = "executing"
    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


JOB_ACTIVE = (JobState.ENQUEUED, JobState.EXECUTING)
JOB_FINAL = (JobState.DONE, JobState.FAILED, JobState.TIMEOUT, JobState.ABORTED)
JOB_STATES = JOB_ACTIVE + JOB_FINAL

TASK_ACTIVE = (TaskState.ENQUEUED, TaskState.EXECUTING)
TASK_FINAL = (TaskState.SUCCESS, TaskState.FAILED, TaskState.TIMEOUT, TaskState.CANCELLED)
TASK_STATES = TASK_ACTIVE + TASK_FINAL
# Older clients say "successful"; it means "success".
TASK_STATE_ALIASES = {"successful": TaskState.SUCCESS}
# States an analyzer may set on a task (PUT /job/{id}/task/{taskId}).
TASK_UPDATE_STATES = (TaskState.EXECUTING, TaskState.SUCCESS, TaskState.FAILED, TaskState.CANCELLED)

# When a job goes final, its unfinished tasks follow.
TASK_STATE_WHEN_JOB_ENDS = {
    JobState.TIMEOUT: TaskState.TIMEOUT,
    JobState.FAILED: TaskState.FAILED,
    JobState.DONE: TaskState.CANCELLED,
    JobState.ABORTED: TaskState.CANCELLED,
}


class Cause(enum.StrEnum):
    """Who moved a job: the label of its transition's metric."""

    API = "api"  # an analyzer's PUT /job/{id}
    TASK = "task"  # its tasks rolled up
    SWEEP = "sweep"  # a timeout sweep
    ABORT = "abort"  # an abort request ended an enqueued job at once


# Every (from, to, cause) a job can make: an analyzer may set any state, tasks roll up, the sweeps
# time out or abort, an abort request ends an enqueued job at once (the metrics show each from zero).
JOB_TRANSITIONS = (
    [(f, t, Cause.API) for f in JOB_ACTIVE for t in (JobState.EXECUTING, *JOB_FINAL) if f != t]
    + [(JobState.ENQUEUED, JobState.EXECUTING, Cause.TASK)]
    + [(JobState.EXECUTING, t, Cause.TASK) for t in (JobState.DONE, JobState.FAILED, JobState.ABORTED)]
    + [
        (JobState.ENQUEUED, JobState.TIMEOUT, Cause.SWEEP),
        (JobState.EXECUTING, JobState.TIMEOUT, Cause.SWEEP),
        (JobState.EXECUTING, JobState.ABORTED, Cause.SWEEP),
        (JobState.ENQUEUED, JobState.ABORTED, Cause.ABORT),
    ]
)


class Move(enum.Enum):
    CHANGE = "change"  # a real state change: recorded in history and announced
    HEARTBEAT = "heartbeat"  # executing -> executing: refreshes lastUpdatedTimestamp only
    REPEAT = "repeat"  # the same final state again: idempotent, nothing changes


class StateConflict(Conflict):
    """The move is not allowed from the current state."""


def classify_move(kind: str, current: str, target: str) -> Move:
    """Say what moving a job or task (`kind`) from `current` to `target` is, or raise StateConflict."""
    final: tuple[str, ...] = JOB_FINAL if kind == "job" else TASK_FINAL
    if current in final:
        if target == current:
            return Move.REPEAT
        raise StateConflict(f"Cannot change {kind} state from {current} to {target}: {current} is final")
    if target == JobState.EXECUTING:  # the same word for a task
        return Move.HEARTBEAT if current == JobState.EXECUTING else Move.CHANGE
    if target in final:
        return Move.CHANGE
    raise StateConflict(f"Cannot change {kind} state from {current} to {target}")
