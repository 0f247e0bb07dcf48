"""Jobs, tasks and history entries as the API (and Kafka) show them."""

from __future__ import annotations

from app.jobs.states import JOB_ACTIVE
from app.models import Job, JobHistory


def user_info(user) -> dict | None:
    """A User row or an app.accounts.access.Actor snapshot, as the API shows users."""
    return user.to_info() if user is not None else None


def task_to_dict(task) -> dict:
    """`task` is a JobTask or anything with its column attributes (a Core row of app.jobs.read)."""
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
    return job_view(
        job,
        customer=job.customer.to_info(),
        tasks=[task_to_dict(t) for t in job.tasks],
        last_updated_by=user_info(job.last_updated_by_user),
        abort_requested_by=user_info(job.abort_requested_by_user),
    )


def job_view(
    job, *, customer: dict, tasks: list[dict], last_updated_by: dict | None, abort_requested_by: dict | None
) -> dict:
    """The API's job: `job` is a Job or anything with its column attributes (a Core row of app.jobs.read)."""
    return {
        "id": str(job.id),
        "state": job.state,
        "flags": job_flags(job),
        "site": job.site,
        "analysedSample": {"id": job.sample_sha256, "size": job.sample_size},
        "customer": customer,
        "submission": job.submission,
        "classification": job.classification,
        "tasks": tasks,
        "options": job.options or [],
        "enqueuedTimestamp": job.enqueued_timestamp,
        "startTimestamp": job.start_timestamp,
        "endTimestamp": job.end_timestamp,
        "lastUpdatedTimestamp": job.last_updated_timestamp,
        "lastUpdatedByUser": last_updated_by,
        "abortRequestedTimestamp": job.abort_requested_timestamp,
        "abortRequestedByUser": abort_requested_by,
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
