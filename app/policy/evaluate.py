"""Which tasks and options a new job gets: the one place that decides it, as pure functions.

A job starts from the default policy's workers and options. Every live rule whose match
clause fits the submission then applies its action, oldest rule first: workers `set`,
`add`, `remove`, then options `set`, `add`, `remove`. Each worker's own classification
filter (`accepts`) applies to the result, and a job never has no task: when nothing is
left it gets the fallback worker.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CLASSIFICATION_FILTER_KEYS = ("type", "superType", "arch", "platform")


@dataclass(frozen=True)
class Rule:
    """A live rule as evaluation needs it: its stored match and action clauses."""

    match: Mapping
    action: Mapping


def _index_rules(rules: Sequence[Rule]) -> dict[tuple[str, object], tuple[int, ...]]:
    """Rule positions by what a submission must have for the rule to fit: ("customer", id), ("type", t),
    ("superType", s) or ("metaDataKey", k). Deciding a job then looks at the rules that may fit, not all."""
    index: dict[tuple[str, object], list[int]] = {}
    for position, rule in enumerate(rules):
        if not rule.match:
            continue
        name, clause = next(iter(rule.match.items()))  # every clause must fit: the first one decides candidacy
        keys = {
            "customer": lambda: [("customer", c) for c in clause],
            "classification": lambda: (
                [("type", t) for t in clause.get("type", ())] + [("superType", t) for t in clause.get("superType", ())]
            ),
            "submission": lambda: [("metaDataKey", k) for k in clause.get("metaDataKey", ())],
        }[name]()
        for key in set(keys):
            index.setdefault(key, []).append(position)
    return {key: tuple(positions) for key, positions in index.items()}


@dataclass(frozen=True)
class PolicySnapshot:
    """Everything job creation reads: the default policy, its live rules oldest first, and the
    classification filters of the registered, non-deleted workers by shortName."""

    workers: tuple[str, ...]
    options: tuple[tuple[str, str], ...]
    rules: tuple[Rule, ...]
    registry: Mapping[str, Mapping]
    index: Mapping[tuple[str, object], tuple[int, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "index", _index_rules(self.rules))

    def rules_that_may_fit(self, customer_id: int, submission: Mapping, classification: Mapping) -> list[Rule]:
        """The rules indexed under something this submission has, oldest first."""
        keys = [
            ("customer", customer_id),
            ("type", classification.get("type")),
            ("superType", classification.get("superType")),
        ]
        keys += [("metaDataKey", k) for k in (submission.get("metaData") or {})]
        positions = {p for key in keys for p in self.index.get(key, ())}
        return [self.rules[p] for p in sorted(positions)]


@dataclass(frozen=True)
class JobPlan:
    workers: tuple[str, ...]
    options: tuple[tuple[str, str], ...]

    def options_as_json(self) -> list[dict]:
        return [{"key": key, "value": value} for key, value in self.options]


def metadata_text(value) -> str:
    """A metaData value as rules compare it: strings as they are, anything else as compact JSON."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)


def _customer_fits(customer_ids: Sequence[int], customer_id: int, submission, classification) -> bool:
    return customer_id in customer_ids


def _classification_fits(clause: Mapping, customer_id: int, submission, classification) -> bool:
    return classification.get("type") in clause.get("type", ()) or classification.get("superType") in clause.get(
        "superType", ()
    )


def _submission_fits(clause: Mapping, customer_id: int, submission, classification) -> bool:
    meta = submission.get("metaData") or {}
    values = clause.get("metaDataValue")
    return any(
        key in meta and (values is None or metadata_text(meta[key]) in values) for key in clause.get("metaDataKey", ())
    )


_CLAUSES: dict[str, Callable[[Any, int, Mapping, Mapping], bool]] = {
    "customer": _customer_fits,
    "classification": _classification_fits,
    "submission": _submission_fits,
}


def rule_matches(match: Mapping, customer_id: int, submission: Mapping, classification: Mapping) -> bool:
    """Every clause the rule gives must fit (Argus gives each rule exactly one)."""
    return bool(match) and all(
        _CLAUSES[name](clause, customer_id, submission, classification) for name, clause in match.items()
    )


def _apply_workers(workers: list[str], clause: Mapping) -> list[str]:
    if "set" in clause:
        workers = list(dict.fromkeys(clause["set"]))
    workers = workers + [w for w in clause.get("add", ()) if w not in workers]
    removed = set(clause.get("remove", ()))
    return [w for w in workers if w not in removed]


def _apply_options(options: dict[str, str], clause: Mapping) -> dict[str, str]:
    if "set" in clause:
        options = {o["key"]: o["value"] for o in clause["set"]}
    options = {**options, **{o["key"]: o["value"] for o in clause.get("add", ())}}
    removed = set(clause.get("remove", ()))
    return {k: v for k, v in options.items() if k not in removed}


def apply_policy(snapshot: PolicySnapshot, customer_id: int, submission: Mapping, classification: Mapping) -> JobPlan:
    """The policy's workers and options after every matching rule, before the workers' own filters."""
    workers, options = list(snapshot.workers), dict(snapshot.options)
    for rule in snapshot.rules_that_may_fit(customer_id, submission, classification):
        if rule_matches(rule.match, customer_id, submission, classification):
            workers = _apply_workers(workers, rule.action.get("workers") or {})
            options = _apply_options(options, rule.action.get("options") or {})
    return JobPlan(tuple(workers), tuple(options.items()))


def accepts_classification(accepts: Mapping | None, classification: Mapping) -> bool:
    """A worker's filter: every criterion it lists must hold the sample's value; an empty one accepts all."""
    filters = accepts or {}
    return all(
        not filters.get(criterion) or classification.get(criterion) in filters[criterion]
        for criterion in CLASSIFICATION_FILTER_KEYS
    )


def plan_job(
    snapshot: PolicySnapshot, fallback_worker: str, customer_id: int, submission: Mapping, classification: Mapping
) -> JobPlan:
    """The tasks (worker shortNames, sorted, never none) and options of a new job."""
    decided = apply_policy(snapshot, customer_id, submission, classification)
    workers = sorted(
        w
        for w in decided.workers
        if w in snapshot.registry and accepts_classification(snapshot.registry[w], classification)
    )
    return JobPlan(tuple(workers or [fallback_worker]), decided.options)
