"""Jobs, tasks and history entries as the API (and Kafka) show them."""

from __future__ import annotations

from app.jobs.states import JOB_ACTIVE
from app.models import Job, JobHistory


def user_info(user) -> dict | None:
    """A User row or an app.accounts.access.Actor snapshot, as the API shows users."""
    return user.to_info() if user is not None else None


def task_to_dict(task) -> dict:
    """`task` is a JobTask."""
    return {
        "id": str(task.id),
        "worker": task.worker,
        "state": task.state,
        "enqueuedTimestamp": task.enqueued_timestamp,
        "startTimestamp": task.start_timestamp,
        "endTimestamp": task.end_timestamp,
        "lastUpdatedTimestamp": task.last_updated_timestamp,
        "analyses": task.analyses or [],
        "message": task.message,
    }


def job_flags(job: Job) -> list[str]:
    return ["ABORT_REQUESTED"] if job.abort_requested and job.state in JOB_ACTIVE else []


def job_to_dict(job: Job) -> dict:
    """The API's job (the write paths' answers and the Kafka messages; the reads' JSON is PostgreSQL's,
    app.jobs.read, and equals this after parsing)."""
    return {
        "id": str(job.id),
        "state": job.state,
        "flags": job_flags(job),
        "site": job.site,
        "analysedSample": {"id": job.sample_sha256, "size": job.sample_size},
        "customer": job.customer.to_info(),
        "submission": job.submission,
        "classification": job.classification,
        "tasks": [task_to_dict(t) for t in job.tasks],
        "options": job.options or [],
        "enqueuedTimestamp": job.enqueued_timestamp,
        "startTimestamp": job.start_timestamp,
        "endTimestamp": job.end_timestamp,
        "lastUpdatedTimestamp": job.last_updated_timestamp,
        "lastUpdatedByUser": user_info(job.last_updated_by_user),
        "abortRequestedTimestamp": job.abort_requested_timestamp,
        "abortRequestedByUser": user_info(job.abort_requested_by_user),
        "abortReason": job.abort_reason,
        "message": job.message,
    }


def history_to_dict(entry: JobHistory) -> dict:
    return {
        "id": entry.id,
        "jobID": str(entry.job_id),
        "taskID": str(entry.task_id) if entry.task_id else None,
        "timestamp": entry.timestamp,
        "user": user_info(entry.user),
        "fromState": entry.from_state,
        "toState": entry.to_state,
        "message": entry.message,
    }
