"""The registry of analysis workers (§2): which tasks a new job gets."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy.exc import IntegrityError

from app.accounts.access import Actor
from app.clock import now_ms
from app.config import WORKER_SHORT_NAME_PATTERN
from app.errors.domain import NotFound, WorkerExists
from app.jobs.serialize import user_info
from app.models import AnalysisWorker
from app.policy import store as policy_store

FILTER_KEYS = {"type": "type", "super_type": "superType", "arch": "arch", "platform": "platform"}


class WorkerNotFound(NotFound):
    """No analysis worker with this id or shortName."""


def worker_to_dict(worker: AnalysisWorker) -> dict:
    return {
        "id": str(worker.id),
        "shortName": worker.short_name,
        "localizedName": worker.localized_names.get("english"),
        "localizedDescription": worker.localized_descriptions.get("english"),
        "localizedNames": worker.localized_names,
        "localizedDescriptions": worker.localized_descriptions,
        "accepts": worker.accepts or {},
        "schema": worker.result_schema,
        "flags": ["deleted"] if worker.deleted else [],
        "createdTimestamp": worker.created_timestamp,
        "createdByUser": user_info(worker.created_by_user),
        "lastUpdatedTimestamp": worker.last_updated_timestamp,
        "lastUpdatedByUser": user_info(worker.last_updated_by_user),
        "deletedTimestamp": worker.deleted_timestamp,
        "deletedByUser": user_info(worker.deleted_by_user),
    }


def _filter(accepts: dict | None) -> dict:
    """The stored classification filter, keyed by the classification's own field names."""
    return {FILTER_KEYS[k]: v for k, v in (accepts or {}).items() if v}


def get_worker(session: so.Session, id_or_short_name: str, *, for_update: bool = False) -> AnalysisWorker:
    try:
        condition = AnalysisWorker.id == uuid.UUID(id_or_short_name)
    except ValueError:
        if not (len(id_or_short_name) <= 255 and WORKER_SHORT_NAME_PATTERN.fullmatch(id_or_short_name)):
            # No worker can have this name (and PostgreSQL could not even compare it, e.g. a NUL).
            raise WorkerNotFound(f"Analysis worker {id_or_short_name!r} not found") from None
        condition = AnalysisWorker.short_name == id_or_short_name
    stmt = sa.select(AnalysisWorker).where(condition)
    if for_update:
        stmt = stmt.with_for_update(of=AnalysisWorker)
    worker = session.scalars(stmt).unique().one_or_none()
    if worker is None:
        raise WorkerNotFound(f"Analysis worker {id_or_short_name} not found")
    return worker


def list_workers(
    session: so.Session, *, limit: int, offset: int, sort_by: list[str], include_deleted: bool
) -> tuple[list[AnalysisWorker], int]:
    columns = {
        "shortName": AnalysisWorker.short_name,
        "createdTimestamp": AnalysisWorker.created_timestamp,
        "lastUpdatedTimestamp": AnalysisWorker.last_updated_timestamp,
    }
    stmt = sa.select(AnalysisWorker)
    if not include_deleted:
        stmt = stmt.where(AnalysisWorker.deleted.is_(False))
    count = session.scalars(sa.select(sa.func.count()).select_from(stmt.subquery())).one()
    order = [columns[n.lstrip("-")].desc() if n.startswith("-") else columns[n.lstrip("-")] for n in sort_by]
    stmt = stmt.order_by(*order, AnalysisWorker.id).offset(offset)
    if limit:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt).unique()), count


def register_worker(session: so.Session, data: dict, actor: Actor | None) -> AnalysisWorker:
    now = now_ms()
    worker = AnalysisWorker(
        short_name=data["short_name"],
        localized_names=data["localized_names"],
        localized_descriptions=data["localized_descriptions"],
        result_schema=data.get("schema"),
        accepts=_filter(data.get("accepts")),
        deleted=False,
        created_timestamp=now,
        last_updated_timestamp=now,
        created_by_user_id=actor.id if actor else None,
        last_updated_by_user_id=actor.id if actor else None,
    )
    session.add(worker)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise WorkerExists(f"An analysis worker named {data['short_name']} already exists") from None
    policy_store.include_worker(session, worker.short_name)
    return worker


def update_worker(session: so.Session, id_or_short_name: str, data: dict, actor: Actor | None) -> AnalysisWorker:
    worker = get_worker(session, id_or_short_name, for_update=True)
    if "localized_names" in data:
        worker.localized_names = data["localized_names"]
    if "localized_descriptions" in data:
        worker.localized_descriptions = data["localized_descriptions"]
    if "schema" in data:
        worker.result_schema = data["schema"]
    if "accepts" in data:
        worker.accepts = _filter(data["accepts"])
    worker.last_updated_timestamp = now_ms()
    worker.last_updated_by_user_id = actor.id if actor else None
    _follow_user_ids(session, worker)
    return worker


def delete_worker(session: so.Session, id_or_short_name: str, actor: Actor | None) -> AnalysisWorker:
    """Mark the worker deleted: new jobs get no task for it; existing tasks stay."""
    worker = get_worker(session, id_or_short_name, for_update=True)
    if not worker.deleted:
        worker.deleted = True
        worker.deleted_timestamp = now_ms()
        worker.deleted_by_user_id = actor.id if actor else None
        _follow_user_ids(session, worker)
    return worker


def _follow_user_ids(session: so.Session, worker: AnalysisWorker) -> None:
    """Make the *_by_user relationships show the user ids just set (they were loaded before)."""
    session.flush()
    session.expire(worker, ["last_updated_by_user", "deleted_by_user"])
