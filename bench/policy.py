"""B3's figure for the analysis policy: what deciding a new job's tasks and options costs per submission.

On the bench's database, in one transaction that is rolled back (nothing stays): live rules
are added (0, 20, 200 of them, of every match kind; four of them fit some of B3's
submissions, the rest name other customers, types and keys), then a `app.policy.store.planner` (as one
ingest batch takes it) decides the tasks of 5,000 submissions of B3's kinds, timed in-process (median of 3
passes) with the snapshot cached as in the steady state; SQL statements are counted (SQLAlchemy's
before_cursor_execute) for one decision with the snapshot cached (the generation's one primary-key read) and
read afresh, and for a whole `ingest.ingest` of one submission. The baseline is B3's own cost per submission
(1 / sustained jobs per second).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
import uuid

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy import event

from app.accounts.customers import ensure_customer
from app.config import Settings
from app.intake import ingest
from app.policy import store
from bench.ingest import payload

RULE_COUNTS = (0, 20, 200)
RUNS = 3  # the median of as many timed passes


def _rule(session: so.Session, n: int, customer_ids: list[int]) -> dict:
    """Rules of every match kind; a few fit B3's submissions (its customers, PE, documents, metaData
    key "source"), most name other customers, types and keys, as a real rule set would."""
    kind = n % 4
    if kind == 0:
        customer = customer_ids[0] if n == 0 else ensure_customer(session, f"bench-rule-customer-{n}").id
        match = {"customer": {"customer_or_group": [str(customer)]}}
    elif kind == 1:
        match = {"classification": {"type": ["PE" if n == 1 else f"TYPE{n}"]}}
    elif kind == 2:
        match = {"classification": {"super_type": ["document" if n == 2 else f"super{n}"]}}
    else:
        match = {
            "submission": {"meta_data_key": ["source" if n == 3 else f"key{n}"], "meta_data_value": ["mail-gateway"]}
        }
    return {
        "name": f"bench rule {n}",
        "description": "",
        "match": match,
        "action": {"workers": {"add": ["static-analyzer"]}, "options": {"add": [{"key": f"k{n}", "value": "1"}]}},
    }


class StatementCounter:
    def __init__(self, engine: sa.Engine):
        self.engine, self.count = engine, 0

    def _count(self, *args) -> None:
        self.count += 1

    def __enter__(self) -> StatementCounter:
        event.listen(self.engine, "before_cursor_execute", self._count)
        return self

    def __exit__(self, *exc) -> None:
        event.remove(self.engine, "before_cursor_execute", self._count)


def run(settings: Settings, *, submissions_per_count: int = 5000) -> dict:
    engine = sa.create_engine(settings.database_url, poolclass=sa.pool.NullPool)
    cached = dataclasses.replace(settings, policy_cache_seconds=3600)
    uncached = dataclasses.replace(settings, policy_cache_seconds=0)
    results: dict = {"submissions": submissions_per_count, "by_rules": []}
    try:
        with so.Session(engine) as session:
            names = [f"bench-customer-{k:02d}" for k in range(1, 4)]
            ids = {name: ensure_customer(session, name).id for name in names}
            customers = list(ids.values())
            payloads = [payload(n, names[n % len(names)]) for n in range(submissions_per_count)]
            for data in payloads:
                data["customer_id"] = ids[data["submission"]["customer"]]
            added = 0
            for rules in RULE_COUNTS:
                while added < rules:
                    store.add_rule(session, _rule(session, added, customers), None)
                    added += 1
                store.forget_snapshots()
                with StatementCounter(engine) as cold:
                    store.plan_for(
                        session, cached, customers[0], payloads[0]["submission"], payloads[0]["classification"]
                    )
                with StatementCounter(engine) as warm:
                    store.plan_for(
                        session, cached, customers[0], payloads[0]["submission"], payloads[0]["classification"]
                    )
                timings = []
                for _ in range(RUNS):
                    started = time.perf_counter()
                    plan = store.planner(session, cached)
                    for data in payloads:
                        plan(data["customer_id"], data["submission"], data["classification"])
                    timings.append(time.perf_counter() - started)
                elapsed = statistics.median(timings)
                one = payload(0, "bench-customer-01")
                one["submission"]["id"] = str(uuid.uuid4())
                # Flushed inside the count: the statements its commit sends are the ingest's too.
                with StatementCounter(engine) as ingest_warm:
                    ingest.ingest(session, cached, one)
                    session.flush()
                one["submission"]["id"] = str(uuid.uuid4())
                with StatementCounter(engine) as ingest_cold:
                    ingest.ingest(session, uncached, one)
                    session.flush()
                results["by_rules"].append(
                    {
                        "rules": rules,
                        "us_per_submission": round(elapsed / len(payloads) * 1e6, 1),
                        "statements_cached": warm.count,
                        "statements_read_afresh": cold.count,
                        "ingest_statements_cached": ingest_warm.count,
                        "ingest_statements_read_afresh": ingest_cold.count,
                    }
                )
            session.rollback()
    finally:
        store.forget_snapshots()
        engine.dispose()
    return results
