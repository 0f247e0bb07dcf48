"""What an analyzer writes: a subclass of `Analyzer` with an `analyse(job)` method."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


class AnalysisFailed(Exception):
    """Raise it from `analyse` to report the task `failed` with this message."""


@dataclass(frozen=True)
class Result:
    """The outcome `analyse` returns; returning None means `success` without a message."""

    state: str = "success"  # "success" or "failed"
    message: str | None = None
    analyses: tuple[str, ...] = ()  # ids of the analysis results stored elsewhere, optional

    def __post_init__(self):
        if self.state not in ("success", "failed"):
            raise ValueError(f"an analysis ends in success or failed, not {self.state!r}")


@dataclass
class Job:
    """One job handed to `analyse`, with the task of this analyzer's worker.

    `data` is the job as the API shows it (GET /job/{id}); `announcement` the message it came in
    on from the job topic. `stop` is set when the analysis must end early — an abort was
    requested, the task went final elsewhere, or the analyzer is stopping — with the reason in
    `stop_reason`: long analyses should check `job.stopped()` or wait on `job.stop`.
    """

    data: dict
    task_id: str
    announcement: dict = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    stop_reason: str | None = None

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def sha256(self) -> str:
        return self.data["analysedSample"]["id"]

    @property
    def task(self) -> dict:
        return next(t for t in self.data["tasks"] if t["id"] == self.task_id)

    @property
    def classification(self) -> dict:
        return self.data.get("classification") or {}

    def stopped(self) -> bool:
        return self.stop.is_set()


class Analyzer:
    """One analysis worker (by its registered `shortName`): subclass it and write `analyse`.

    The runner (`analyzer.Runner`) calls `analyse(job)` for every new job that has a task for
    `worker`, in one of its threads, once the task is claimed; it heartbeats meanwhile and
    reports what `analyse` returns (None or a Result), raises (AnalysisFailed or any exception:
    `failed`), or — when `job.stop` was set by an abort request — `cancelled`.
    """

    worker: str = ""

    def analyse(self, job: Job) -> Result | None:
        raise NotImplementedError
