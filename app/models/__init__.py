"""SQLAlchemy models. Timestamps are integer milliseconds since the epoch (UTC), as in the API."""

from app.models.accounts import ApiKey, ApiKeyCustomer, Customer, User
from app.models.analysis_workers import AnalysisWorker
from app.models.base import Base
from app.models.dead import DeadSubmission
from app.models.intake import PendingSubmission
from app.models.jobs import Job, JobHistory, JobTask
from app.models.outbox import OutboxMessage
from app.models.policy import DEFAULT_POLICY_ID, AnalysisPolicy, AnalysisRule, PolicyGeneration
from app.models.sweeps import SchedulerLease, SweepRun

__all__ = [
    "AnalysisPolicy",
    "AnalysisRule",
    "AnalysisWorker",
    "DEFAULT_POLICY_ID",
    "ApiKey",
    "ApiKeyCustomer",
    "Base",
    "Customer",
    "DeadSubmission",
    "Job",
    "JobHistory",
    "JobTask",
    "OutboxMessage",
    "PendingSubmission",
    "PolicyGeneration",
    "SchedulerLease",
    "SweepRun",
    "User",
]
