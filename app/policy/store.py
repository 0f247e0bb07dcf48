"""The default analysis policy and its rules in PostgreSQL, as the API shows them, and the
per-process snapshot job creation evaluates.

The snapshot (policy, live rules, the workers' filters) is cached per process with the
generation number it was read at (table `policy_generation`, bumped by PostgreSQL's triggers
on every change of the policy, a rule or the worker registry: migration 0010). Job creation
reads that one row once per batch (`planner`) and the snapshot again only when the number
moved, so a change made by any process applies to the very next job everywhere, at no query
per submission in the steady state. SAMPLEDB_POLICY_CACHE_SECONDS bounds a snapshot's age
besides (for a change that bypassed the triggers, e.g. a restore with triggers disabled).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import sqlalchemy as sa
import sqlalchemy.orm as so

from app import clock
from app.accounts.access import Actor
from app.accounts.customers import customer_id_named
from app.clock import now_ms
from app.config import Settings
from app.errors.domain import Conflict, InvalidArgument, NotFound
from app.jobs.serialize import user_info
from app.models import DEFAULT_POLICY_ID, AnalysisPolicy, AnalysisRule, AnalysisWorker, Customer, PolicyGeneration
from app.policy.evaluate import JobPlan, PolicySnapshot, Rule, plan_job


class RuleNotFound(NotFound):
    pass


class PolicyRejected(InvalidArgument):
    """A policy or rule the caller may not store as given; `field` names the culprit."""


class RuleDeleted(Conflict):
    """A deleted rule cannot be changed."""


# -- the snapshot job creation reads ----------------------------------------------------------

# Per database: (generation, monotonic time read, snapshot).
_snapshots: dict[str, tuple[int, float, PolicySnapshot]] = {}
_snapshots_lock = threading.Lock()
_GENERATION = sa.select(PolicyGeneration.generation).where(PolicyGeneration.id == 1)


def load_snapshot(session: so.Session) -> PolicySnapshot:
    policy = session.get(AnalysisPolicy, DEFAULT_POLICY_ID)
    rules = session.execute(
        sa.select(AnalysisRule.match, AnalysisRule.action)
        .where(AnalysisRule.deleted.is_(False))
        .order_by(AnalysisRule.position)
    ).all()
    registry = session.execute(
        sa.select(AnalysisWorker.short_name, AnalysisWorker.accepts).where(AnalysisWorker.deleted.is_(False))
    ).all()
    return PolicySnapshot(
        workers=tuple(policy.workers) if policy else (),
        options=tuple((o["key"], o["value"]) for o in (policy.options if policy else [])),
        rules=tuple(Rule(match, action) for match, action in rules),
        registry={name: accepts or {} for name, accepts in registry},
    )


def snapshot(session: so.Session, settings: Settings) -> PolicySnapshot:
    """The policy as this transaction sees it: this process's cached snapshot while its generation is the
    database's (one primary-key read) and it is younger than the cache lifetime, else read afresh."""
    generation = session.scalar(_GENERATION)
    key = settings.database_url
    now = clock.monotonic()
    with _snapshots_lock:
        cached = _snapshots.get(key)
    if (
        cached is not None
        and generation is not None
        and cached[0] == generation
        and now - cached[1] < settings.policy_cache_seconds
    ):
        return cached[2]
    fresh = load_snapshot(session)
    if settings.policy_cache_seconds and generation is not None:
        with _snapshots_lock:
            _snapshots[key] = (generation, now, fresh)
    return fresh


Planner = Callable[[int, dict, dict], JobPlan]


def planner(session: so.Session, settings: Settings) -> Planner:
    """Decide the tasks and options of new jobs in this transaction: `plan(customer_id, submission,
    classification)`, under the policy as the transaction sees it (read once, for a whole batch)."""
    policy = snapshot(session, settings)
    return lambda customer_id, submission, classification: plan_job(
        policy, settings.fallback_worker, customer_id, submission, classification
    )


def plan_for(
    session: so.Session, settings: Settings, customer_id: int, submission: dict, classification: dict
) -> JobPlan:
    """The tasks and options of one new job (a batch uses `planner` once instead)."""
    return planner(session, settings)(customer_id, submission, classification)


def forget_snapshots() -> None:
    with _snapshots_lock:
        _snapshots.clear()


# -- references: workers by id or shortName, customers by id or shortName --------------------------


def resolve_workers(session: so.Session, refs: list[str], field: str) -> list[str]:
    """The shortNames of registered, non-deleted workers named by id or shortName, in the given order."""
    ids = [uuid.UUID(r) for r in refs if _is_uuid(r)]
    rows = session.execute(
        sa.select(AnalysisWorker.id, AnalysisWorker.short_name).where(
            AnalysisWorker.deleted.is_(False), sa.or_(AnalysisWorker.short_name.in_(refs), AnalysisWorker.id.in_(ids))
        )
    ).all()
    by_ref = {**{str(i): n for i, n in rows}, **{n: n for _, n in rows}}
    unknown = [r for r in refs if by_ref.get(r.lower() if _is_uuid(r) else r) is None]
    if unknown:
        raise PolicyRejected(field, f"not a registered analysis worker: {', '.join(unknown)}")
    return list(dict.fromkeys(by_ref[r.lower() if _is_uuid(r) else r] for r in refs))


def resolve_customers(session: so.Session, refs: list[str], field: str) -> list[int]:
    ids = [i for i in map(customer_id_named, refs) if i is not None]
    rows = session.execute(
        sa.select(Customer.id, Customer.short_name).where(sa.or_(Customer.short_name.in_(refs), Customer.id.in_(ids)))
    ).all()
    by_ref = {**{str(i): i for i, _ in rows}, **{n: i for i, n in rows}}
    unknown = [r for r in refs if r not in by_ref]
    if unknown:
        raise PolicyRejected(field, f"unknown customer: {', '.join(unknown)}")
    return list(dict.fromkeys(by_ref[r] for r in refs))


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _unique_option_keys(options: list[dict], field: str) -> list[dict]:
    keys = [o["key"] for o in options]
    if len(set(keys)) != len(keys):
        raise PolicyRejected(field, "one option per key")
    return [{"key": o["key"], "value": o["value"]} for o in options]


# -- the default policy ------------------------------------------------------------------------


def get_policy(session: so.Session, *, for_update: bool = False) -> AnalysisPolicy:
    stmt = sa.select(AnalysisPolicy).where(AnalysisPolicy.id == DEFAULT_POLICY_ID)
    if for_update:
        stmt = stmt.with_for_update(of=AnalysisPolicy).execution_options(populate_existing=True)
    return session.scalars(stmt).one()


def update_policy(session: so.Session, data: dict, actor: Actor | None) -> AnalysisPolicy:
    """Replace the policy's workers and/or options (each given list overwrites the stored one)."""
    policy = get_policy(session, for_update=True)
    if "workers" in data:
        if not data["workers"]:
            raise PolicyRejected("workers", "at least one worker is required")
        policy.workers = resolve_workers(session, data["workers"], "workers")
    if "options" in data:
        policy.options = _unique_option_keys(data["options"], "options")
    policy.last_updated_timestamp = now_ms()
    policy.last_updated_by_user_id = actor.id if actor else None
    _follow_user_ids(session, policy, ["last_updated_by_user"])
    return policy


def include_worker(session: so.Session, short_name: str) -> None:
    """A newly registered worker joins the default policy, so it runs as registered workers always did."""
    session.execute(
        sa.update(AnalysisPolicy)
        .where(AnalysisPolicy.id == DEFAULT_POLICY_ID, sa.not_(AnalysisPolicy.workers.has_key(short_name)))
        .values(workers=AnalysisPolicy.workers + sa.func.jsonb_build_array(short_name))
    )


# -- rules ------------------------------------------------------------------------------------


def get_rule(session: so.Session, rule_id: uuid.UUID, *, for_update: bool = False) -> AnalysisRule:
    stmt = sa.select(AnalysisRule).where(AnalysisRule.id == rule_id)
    if for_update:
        stmt = stmt.with_for_update(of=AnalysisRule).execution_options(populate_existing=True)
    rule = session.scalars(stmt).unique().one_or_none()
    if rule is None:
        raise RuleNotFound(f"Analysis rule {rule_id} not found")
    return rule


def list_rules(
    session: so.Session, *, limit: int, offset: int, include_deleted: bool
) -> tuple[list[AnalysisRule], int]:
    stmt = sa.select(AnalysisRule)
    if not include_deleted:
        stmt = stmt.where(AnalysisRule.deleted.is_(False))
    count = session.scalars(sa.select(sa.func.count()).select_from(stmt.subquery())).one()
    stmt = stmt.order_by(AnalysisRule.position).offset(offset)
    if limit:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt).unique()), count


def _stored_match(session: so.Session, match: dict) -> dict:
    """The request's match clause as stored: customers by id, values as given."""
    if len(match) != 1:
        raise PolicyRejected("match", "give exactly one clause: customer, classification or submission")
    ((name, clause),) = match.items()
    if name == "customer":
        return {"customer": resolve_customers(session, clause["customer_or_group"], "match.customer.customerOrGroup")}
    if name == "classification":
        if not clause.get("type") and not clause.get("super_type"):
            raise PolicyRejected("match.classification", "give type or superType")
        return {"classification": {"type": clause.get("type") or [], "superType": clause.get("super_type") or []}}
    stored = {"metaDataKey": clause["meta_data_key"]}
    if clause.get("meta_data_value") is not None:
        stored["metaDataValue"] = clause["meta_data_value"]
    return {"submission": stored}


def _stored_action(session: so.Session, action: dict) -> dict:
    stored: dict = {}
    for verb, refs in (action.get("workers") or {}).items():
        stored.setdefault("workers", {})[verb] = resolve_workers(session, refs, f"action.workers.{verb}")
    for verb, items in (action.get("options") or {}).items():
        field = f"action.options.{verb}"
        stored.setdefault("options", {})[verb] = (
            list(dict.fromkeys(items)) if verb == "remove" else _unique_option_keys(items, field)
        )
    if not stored:
        raise PolicyRejected("action", "set at least one action on workers or options")
    return stored


def add_rule(session: so.Session, data: dict, actor: Actor | None) -> AnalysisRule:
    now = now_ms()
    user_id = actor.id if actor else None
    rule = AnalysisRule(
        name=data["name"],
        description=data["description"],
        match=_stored_match(session, data["match"]),
        action=_stored_action(session, data["action"]),
        deleted=False,
        created_timestamp=now,
        created_by_user_id=user_id,
        last_updated_timestamp=now,
        last_updated_by_user_id=user_id,
    )
    session.add(rule)
    session.flush()
    return rule


def update_rule(session: so.Session, rule_id: uuid.UUID, data: dict, actor: Actor | None) -> AnalysisRule:
    rule = get_rule(session, rule_id, for_update=True)
    if rule.deleted:
        raise RuleDeleted(f"Analysis rule {rule_id} is deleted and cannot be changed")
    if "name" in data:
        rule.name = data["name"]
    if "description" in data:
        rule.description = data["description"]
    if "match" in data:
        rule.match = _stored_match(session, data["match"])
    if "action" in data:
        rule.action = _stored_action(session, data["action"])
    rule.last_updated_timestamp = now_ms()
    rule.last_updated_by_user_id = actor.id if actor else None
    _follow_user_ids(session, rule, ["last_updated_by_user"])
    return rule


def delete_rule(session: so.Session, rule_id: uuid.UUID, actor: Actor | None) -> AnalysisRule:
    """Mark the rule deleted: new jobs no longer follow it; it stays listed with includeDeleted."""
    rule = get_rule(session, rule_id, for_update=True)
    if not rule.deleted:
        rule.deleted = True
        rule.deleted_timestamp = now_ms()
        rule.deleted_by_user_id = actor.id if actor else None
        _follow_user_ids(session, rule, ["deleted_by_user"])
    return rule


def _follow_user_ids(session: so.Session, row, relationships: list[str]) -> None:
    """Make the *_by_user relationships show the user ids just set (they were loaded before)."""
    session.flush()
    session.expire(row, relationships)


# -- as the API shows them --------------------------------------------------------------------


class References:
    """Workers and customers named by policies and rules, looked up once for a whole response."""

    def __init__(self, session: so.Session, worker_names: set[str], customer_ids: set[int]):
        self.workers = (
            {
                w.short_name: w
                for w in session.scalars(sa.select(AnalysisWorker).where(AnalysisWorker.short_name.in_(worker_names)))
            }
            if worker_names
            else {}
        )
        self.customers = (
            {c.id: c for c in session.scalars(sa.select(Customer).where(Customer.id.in_(customer_ids)))}
            if customer_ids
            else {}
        )

    @classmethod
    def of(cls, session: so.Session, policies=(), rules=()) -> References:
        names = {n for p in policies for n in p.workers}
        names |= {n for r in rules for verb in (r.action.get("workers") or {}).values() for n in verb}
        customers = {c for r in rules for c in r.match.get("customer", ())}
        return cls(session, names, customers)

    def worker_info(self, short_name: str) -> dict:
        worker = self.workers.get(short_name)
        return {
            "id": str(worker.id) if worker else None,
            "shortName": short_name,
            "localizedName": worker.localized_names.get("english") if worker else None,
        }

    def customer_info(self, customer_id: int) -> dict:
        customer = self.customers.get(customer_id)
        return customer.to_info() if customer else {"id": customer_id, "shortName": None, "name": None, "domain": None}


def policy_to_dict(policy: AnalysisPolicy, refs: References) -> dict:
    # A deleted worker stays listed in the policy but runs no more: the policy shows the workers that run.
    return {
        "workers": [refs.worker_info(n) for n in policy.workers if n in refs.workers and not refs.workers[n].deleted],
        "options": policy.options,
        "lastUpdatedTimestamp": policy.last_updated_timestamp,
        "lastUpdatedByUser": user_info(policy.last_updated_by_user),
    }


def rule_to_dict(rule: AnalysisRule, refs: References) -> dict:
    match = dict(rule.match)
    if "customer" in match:
        match["customer"] = {"customer": [refs.customer_info(c) for c in match["customer"]]}
    action = dict(rule.action)
    if "workers" in action:
        action["workers"] = {verb: [refs.worker_info(n) for n in names] for verb, names in action["workers"].items()}
    return {
        "id": str(rule.id),
        "name": rule.name,
        "description": rule.description,
        "match": match,
        "action": action,
        "flags": ["deleted"] if rule.deleted else [],
        "createdTimestamp": rule.created_timestamp,
        "createdByUser": user_info(rule.created_by_user),
        "lastUpdatedTimestamp": rule.last_updated_timestamp,
        "lastUpdatedByUser": user_info(rule.last_updated_by_user),
        "deletedTimestamp": rule.deleted_timestamp,
        "deletedByUser": user_info(rule.deleted_by_user),
    }
