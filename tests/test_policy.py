"""§11.2: which tasks and options a new job gets, decided by the default policy and its rules.

The decision is a pure function (app.policy.evaluate), table-tested here; the API tests
check the rules' bodies, the refusals and that a job made through the service follows them.
"""

from __future__ import annotations

import pytest

from app.policy.evaluate import PolicySnapshot, Rule, plan_job

FALLBACK = "static-analyzer"
# The registry of a fresh installation (migration 0002) plus two workers of the examples below.
REGISTRY = {
    "static-analyzer": {},
    "sandbox-windows": {"platform": ["win"]},
    "sandbox-linux": {"platform": ["linux"]},
    "sandbox-android": {"platform": ["android"]},
    "sandbox-macos": {"platform": ["macos", "osx"]},
    "document-analyzer": {"superType": ["document"]},
    "document-sandbox": {"superType": ["document"]},
    "url-analyzer": {},
}
POLICY_WORKERS = (
    "document-analyzer",
    "sandbox-android",
    "sandbox-linux",
    "sandbox-macos",
    "sandbox-windows",
    "static-analyzer",
)
ACME, GLOBEX, INITECH = 1, 2, 3
OFFLINE = {"key": "meta.sampledb.allowInternetAccess", "value": "false"}

RULES = {
    "acme docs sandbox, offline": Rule(
        {"customer": [ACME]}, {"workers": {"add": ["document-sandbox"]}, "options": {"add": [OFFLINE]}}
    ),
    "PE: long timeout only": Rule(
        {"classification": {"type": ["PE"], "superType": []}},
        {"options": {"set": [{"key": "timeout", "value": "600"}]}},
    ),
    "scripts: static and url": Rule(
        {"classification": {"type": [], "superType": ["script"]}},
        {"workers": {"set": ["static-analyzer", "url-analyzer"]}},
    ),
    "priority key: flag": Rule(
        {"submission": {"metaDataKey": ["priority"]}}, {"options": {"add": [{"key": "priority", "value": "high"}]}}
    ),
    "honeypot source: no windows sandbox": Rule(
        {"submission": {"metaDataKey": ["source"], "metaDataValue": ["honeypot", "42"]}},
        {"workers": {"remove": ["sandbox-windows"]}},
    ),
    "initech: nothing at all": Rule({"customer": [INITECH]}, {"workers": {"remove": list(REGISTRY)}}),
    "globex: drop the timeout": Rule({"customer": [GLOBEX]}, {"options": {"remove": ["timeout"]}}),
}


def classification(type_="PE", super_type="executable", platform="win") -> dict:
    return {"type": type_, "superType": super_type, "arch": "x86", "platform": platform}


# rules (oldest first), customer, classification, metaData -> tasks, options
TABLE = [
    (
        "fresh installation: as the workers' filters alone",
        [],
        ACME,
        classification(),
        {},
        ["sandbox-windows", "static-analyzer"],
        [],
    ),
    (
        "fresh installation, a document",
        [],
        ACME,
        classification("DOCX", "document", None),
        {},
        ["document-analyzer", "static-analyzer"],
        [],
    ),
    (
        "customer in the list: worker and option added",
        ["acme docs sandbox, offline"],
        ACME,
        classification("PDF", "document", None),
        {},
        ["document-analyzer", "document-sandbox", "static-analyzer"],
        [OFFLINE],
    ),
    (
        "customer not in the list",
        ["acme docs sandbox, offline"],
        GLOBEX,
        classification("PDF", "document", None),
        {},
        ["document-analyzer", "static-analyzer"],
        [],
    ),
    (
        "added worker still obeys its own filter",
        ["acme docs sandbox, offline"],
        ACME,
        classification(),
        {},
        ["sandbox-windows", "static-analyzer"],
        [OFFLINE],
    ),
    (
        "classification type",
        ["PE: long timeout only"],
        GLOBEX,
        classification("PE"),
        {},
        ["sandbox-windows", "static-analyzer"],
        [{"key": "timeout", "value": "600"}],
    ),
    (
        "classification type not in the list",
        ["PE: long timeout only"],
        GLOBEX,
        classification("ELF"),
        {},
        ["sandbox-windows", "static-analyzer"],
        [],
    ),
    (
        "classification superType: workers set",
        ["scripts: static and url"],
        ACME,
        classification("PS1", "script", "win"),
        {},
        ["static-analyzer", "url-analyzer"],
        [],
    ),
    (
        "metaData key, any value",
        ["priority key: flag"],
        ACME,
        classification(),
        {"priority": "whatever"},
        ["sandbox-windows", "static-analyzer"],
        [{"key": "priority", "value": "high"}],
    ),
    (
        "metaData key absent",
        ["priority key: flag"],
        ACME,
        classification(),
        {"other": "x"},
        ["sandbox-windows", "static-analyzer"],
        [],
    ),
    (
        "metaData key with a listed value: worker removed",
        ["honeypot source: no windows sandbox"],
        ACME,
        classification(),
        {"source": "honeypot"},
        ["static-analyzer"],
        [],
    ),
    (
        "metaData value compared as text",
        ["honeypot source: no windows sandbox"],
        ACME,
        classification(),
        {"source": 42},
        ["static-analyzer"],
        [],
    ),
    (
        "metaData key with another value",
        ["honeypot source: no windows sandbox"],
        ACME,
        classification(),
        {"source": "email"},
        ["sandbox-windows", "static-analyzer"],
        [],
    ),
    (
        "a rule removing every worker: the fallback worker",
        ["initech: nothing at all"],
        INITECH,
        classification(),
        {},
        [FALLBACK],
        [],
    ),
    (
        "options: set by an older rule, removed by a newer one",
        ["PE: long timeout only", "globex: drop the timeout"],
        GLOBEX,
        classification("PE"),
        {},
        ["sandbox-windows", "static-analyzer"],
        [],
    ),
    (
        "options: removed first, set by the newer rule",
        ["globex: drop the timeout", "PE: long timeout only"],
        GLOBEX,
        classification("PE"),
        {},
        ["sandbox-windows", "static-analyzer"],
        [{"key": "timeout", "value": "600"}],
    ),
    (
        "workers: set by an older rule, added to by a newer one",
        ["scripts: static and url", "acme docs sandbox, offline"],
        ACME,
        classification("JS", "script", None),
        {},
        ["static-analyzer", "url-analyzer"],
        [OFFLINE],
    ),
    (
        "several rules at once",
        ["acme docs sandbox, offline", "priority key: flag", "honeypot source: no windows sandbox"],
        ACME,
        classification(),
        {"priority": "1", "source": "honeypot"},
        ["static-analyzer"],
        [OFFLINE, {"key": "priority", "value": "high"}],
    ),
]


@pytest.mark.parametrize(
    "rules, customer, cls, meta, tasks, options", [row[1:] for row in TABLE], ids=[row[0] for row in TABLE]
)
def test_policy_decides_tasks_and_options(rules, customer, cls, meta, tasks, options):
    snapshot = PolicySnapshot(
        workers=POLICY_WORKERS, options=(), rules=tuple(RULES[name] for name in rules), registry=REGISTRY
    )
    plan = plan_job(snapshot, FALLBACK, customer, {"metaData": meta}, cls)
    assert list(plan.workers) == tasks
    assert plan.options_as_json() == options


def test_policy_options_and_workers_are_the_starting_point():
    snapshot = PolicySnapshot(
        workers=("static-analyzer",),
        options=(("timeout", "60"), ("depth", "2")),
        rules=(RULES["PE: long timeout only"],),
        registry=REGISTRY,
    )
    assert plan_job(snapshot, FALLBACK, ACME, {}, classification("ELF")).options_as_json() == [
        {"key": "timeout", "value": "60"},
        {"key": "depth", "value": "2"},
    ]
    assert plan_job(snapshot, FALLBACK, ACME, {}, classification("PE")).options_as_json() == [
        {"key": "timeout", "value": "600"}
    ]
    assert plan_job(snapshot, FALLBACK, ACME, {}, classification()).workers == ("static-analyzer",)
    # A worker the registry no longer holds (deleted) gets no task.
    gone = PolicySnapshot(workers=("static-analyzer", "retired"), options=(), rules=(), registry=REGISTRY)
    assert plan_job(gone, FALLBACK, ACME, {}, classification()).workers == ("static-analyzer",)


# -- over the API ------------------------------------------------------------------------------

OFFLINE_RULE = {
    "name": "acme documents",
    "description": "acme's documents also go to the document sandbox, offline",
    "match": {"customer": {"customerOrGroup": ["acme"]}},
    "action": {"workers": {"add": ["document-sandbox"]}, "options": {"add": [OFFLINE]}},
}


@pytest.fixture
def analyzer(make_key):
    return make_key("ANALYZER", customer="acme", user="policy-admin", all_customers=True)


def test_a_rule_changes_new_jobs_tasks_and_options(api, analyzer, make_job):
    from tests.test_api_analysis_workers import worker_body

    api.post(
        "/worker", 201, headers=analyzer, json=worker_body("document-sandbox", accepts={"superType": ["document"]})
    )
    # A newly registered worker joins the default policy, as every registered worker ran before.
    policy = api.get("/policy/default", headers=analyzer)["data"]
    assert "document-sandbox" in [w["shortName"] for w in policy["workers"]]
    api.put(
        "/policy/default",
        headers=analyzer,
        json={"workers": [w["shortName"] for w in policy["workers"] if w["shortName"] != "document-sandbox"]},
    )
    before = api.get(f"/job/{make_job(customer='acme', super_type='document')}", headers=analyzer)["data"]
    assert [t["worker"] for t in before["tasks"]] == ["document-analyzer", "sandbox-windows", "static-analyzer"]
    assert before["options"] == []

    rule = api.post("/policy/default/rule", 201, headers=analyzer, json=OFFLINE_RULE)["data"]
    job = api.get(f"/job/{make_job(customer='acme', super_type='document')}", headers=analyzer)["data"]
    assert [t["worker"] for t in job["tasks"]] == [
        "document-analyzer",
        "document-sandbox",
        "sandbox-windows",
        "static-analyzer",
    ]
    assert job["options"] == [OFFLINE]
    other = api.get(f"/job/{make_job(customer='globex', super_type='document')}", headers=analyzer)["data"]
    assert other["options"] == [] and "document-sandbox" not in [t["worker"] for t in other["tasks"]]

    api.delete(f"/policy/default/rule/{rule['id']}", headers=analyzer)
    after = api.get(f"/job/{make_job(customer='acme', super_type='document')}", headers=analyzer)["data"]
    assert after["options"] == [] and "document-sandbox" not in [t["worker"] for t in after["tasks"]]
    # Jobs made before keep what they were given.
    assert api.get(f"/job/{job['id']}", headers=analyzer)["data"]["options"] == [OFFLINE]


def test_a_deleted_worker_leaves_the_policy_shown_and_runs_no_more(api, analyzer, make_job):
    api.delete("/worker/sandbox-windows", headers=analyzer)
    policy = api.get("/policy/default", headers=analyzer)["data"]
    assert "sandbox-windows" not in [w["shortName"] for w in policy["workers"]]
    assert [t["worker"] for t in api.get(f"/job/{make_job()}", headers=analyzer)["data"]["tasks"]] == [
        "static-analyzer"
    ]


@pytest.mark.parametrize(
    "body, field",
    [
        ({**OFFLINE_RULE, "match": {}}, "match"),
        (
            {**OFFLINE_RULE, "match": {"customer": {"customerOrGroup": ["acme"]}, "classification": {"type": ["PE"]}}},
            "match",
        ),
        ({**OFFLINE_RULE, "match": {"customer": {"customerOrGroup": []}}}, "match.customer.customerOrGroup"),
        (
            {**OFFLINE_RULE, "match": {"customer": {"customerOrGroup": ["nobody-knows"]}}},
            "match.customer.customerOrGroup",
        ),
        ({**OFFLINE_RULE, "match": {"classification": {}}}, "match.classification"),
        ({**OFFLINE_RULE, "match": {"submission": {"metaDataValue": ["x"]}}}, "match.submission.metaDataKey"),
        ({**OFFLINE_RULE, "match": {"tlp": {"level": ["red"]}}}, "match.tlp"),
        ({**OFFLINE_RULE, "action": {}}, "action"),
        ({**OFFLINE_RULE, "action": {"workers": {"add": ["no-such-worker"]}}}, "action.workers.add"),
        ({**OFFLINE_RULE, "action": {"workers": {"add": ["bad name!"]}}}, "action.workers.add"),
        (
            {**OFFLINE_RULE, "action": {"options": {"add": [OFFLINE, {**OFFLINE, "value": "true"}]}}},
            "action.options.add",
        ),
        ({**OFFLINE_RULE, "action": {"options": {"set": [{"key": "k"}]}}}, "action.options.set.value"),
        ({**OFFLINE_RULE, "name": ""}, "name"),
        ({k: v for k, v in OFFLINE_RULE.items() if k != "description"}, "description"),
        ({**OFFLINE_RULE, "priority": 1}, "priority"),
    ],
)
def test_a_bad_rule_is_refused_naming_the_field(api, analyzer, body, field):
    from tests.test_api_analysis_workers import worker_body

    api.post("/worker", 201, headers=analyzer, json=worker_body("document-sandbox"))
    refused = api.post("/policy/default/rule", 412, headers=analyzer, json=body)
    assert [m["field"] for m in refused["messages"]] == [field]
    assert api.get("/policy/default/rule", headers=analyzer)["count"] == 0


@pytest.mark.parametrize(
    "body, field",
    [
        ({"workers": []}, "workers"),
        ({"workers": ["static-analyzer", "ghost"]}, "workers"),
        ({"options": [OFFLINE, OFFLINE]}, "options"),
        ({"options": [{"key": "", "value": "x"}]}, "options.key"),
        ({"workers": "static-analyzer"}, "workers"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_field(api, analyzer, body, field):
    refused = api.put("/policy/default", 412, headers=analyzer, json=body)
    assert [m["field"] for m in refused["messages"]] == [field]


def test_roles_and_unknown_rules(api, make_key, analyzer):
    viewer = make_key("VIEWER", customer="acme")
    user = make_key("USER", customer="acme")
    api.get("/policy/default", headers=viewer)
    api.get("/policy/default/rule", headers=viewer)
    api.put("/policy/default", 403, headers=user, json={"options": []})
    api.post("/policy/default/rule", 403, headers=user, json=OFFLINE_RULE)
    api.get("/policy/default", 401)
    api.get("/policy/default/rule/00000000-0000-0000-0000-000000000000", 404, headers=viewer)
    api.get("/policy/default/rule/not-a-uuid", 404, headers=viewer)
    rule = api.post(
        "/policy/default/rule",
        201,
        headers=analyzer,
        json={**OFFLINE_RULE, "action": {"options": {"remove": ["timeout"]}}},
    )["data"]
    api.delete(f"/policy/default/rule/{rule['id']}", headers=analyzer)
    api.put(f"/policy/default/rule/{rule['id']}", 409, headers=analyzer, json={"name": "revived"})
    listed = api.get("/policy/default/rule", headers=viewer, query_string={"includeDeleted": "true", "limit": 1})
    assert (listed["count"], listed["size"], listed["limit"]) == (1, 1, 1)
    api.get("/policy/default/rule", 412, headers=viewer, query_string={"includeDeleted": "maybe"})


def test_openapi_documents_the_policy_and_reanalysis(client):
    document = client.get("/sampledb/v2/openapi.json").get_json()
    paths = document["paths"]
    assert set(paths["/sampledb/v2/policy/default"]) >= {"get", "put"}
    assert set(paths["/sampledb/v2/policy/default/rule"]) >= {"get", "post"}
    assert set(paths["/sampledb/v2/policy/default/rule/{rule_id}"]) >= {"get", "put", "delete"}
    assert "put" in paths["/sampledb/v2/sample/{sha256}/reanalyse"]
    assert "220" in paths["/sampledb/v2/sample/{sha256}/submission"]["post"]["responses"]
    assert "options" in document["components"]["schemas"]["Job"]["properties"]


def test_the_snapshot_is_cached_until_the_generation_moves_whoever_made_the_change(app, settings, sql):
    """Found from outside: a rule or a worker added by one process reached the others only after their 5 s
    cache. Now any change (here plain SQL, as another process or an operator would make it) bumps the policy's
    generation, and the next snapshot is read afresh however long the cache lifetime."""
    import dataclasses

    import sqlalchemy as sa

    from app.extensions import db
    from app.policy import store

    cached = dataclasses.replace(settings, policy_cache_seconds=3600)
    reads: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        reads.append(statement)

    with app.app_context():
        bind = db.session.get_bind()
        sa.event.listen(bind, "before_cursor_execute", count)
        try:
            assert store.snapshot(db.session, cached).workers[-1] == "static-analyzer"
            reads.clear()
            assert store.snapshot(db.session, cached).workers[-1] == "static-analyzer"
            assert len(reads) == 1 and "policy_generation" in reads[0]  # cached: the generation's read only
            sql("""UPDATE analysis_policy SET workers = '["sandbox-linux"]'""")
            assert store.snapshot(db.session, cached).workers == ("sandbox-linux",)
            sql(
                "UPDATE analysis_workers SET accepts = '{\"platform\": [\"plan9\"]}' WHERE short_name = 'sandbox-linux'"
            )
            assert store.snapshot(db.session, cached).registry["sandbox-linux"] == {"platform": ["plan9"]}
        finally:
            sa.event.remove(bind, "before_cursor_execute", count)


def test_a_rolled_back_change_never_matches_a_later_generation(app):
    """The generation comes from a sequence: the number a rolled-back change took is never the number of a
    later committed change, so a snapshot read inside the rolled-back transaction is never taken for it."""
    import sqlalchemy as sa

    from app.extensions import db

    generation = sa.text("SELECT generation FROM policy_generation")
    touch = sa.text("UPDATE analysis_rules SET name = name")  # no row at all: the statement bumps it
    with db.engine_of(app).connect() as conn:
        before = conn.scalar(generation)
        conn.execute(touch)
        rolled_back = conn.scalar(generation)
        conn.rollback()
        assert conn.scalar(generation) == before != rolled_back
        conn.execute(touch)
        later = conn.scalar(generation)
        conn.rollback()
    assert later not in (before, rolled_back)


def test_the_rule_index_finds_every_rule_that_fits():
    """Deciding looks only at the rules indexed under what a submission has: it must agree with trying all."""
    import random

    from app.policy.evaluate import apply_policy, rule_matches

    rng = random.Random(7)
    values = ["a", "b", "c"]

    def random_rule(n: int) -> Rule:
        match = rng.choice(
            [
                {"customer": rng.sample([ACME, GLOBEX, INITECH], rng.randint(1, 2))},
                {
                    "classification": {
                        "type": rng.sample(values, rng.randint(0, 2)),
                        "superType": rng.sample(values, rng.randint(0, 2)),
                    }
                },
                {
                    "submission": {
                        "metaDataKey": rng.sample(values, rng.randint(1, 2)),
                        **({"metaDataValue": rng.sample(values, 1)} if rng.random() < 0.5 else {}),
                    }
                },
            ]
        )
        return Rule(
            match,
            {
                "workers": {rng.choice(["set", "add", "remove"]): rng.sample(list(REGISTRY), 2)},
                "options": {"add": [{"key": rng.choice(values), "value": str(n)}]},
            },
        )

    for _ in range(200):
        rules = tuple(random_rule(n) for n in range(rng.randint(0, 12)))
        snapshot = PolicySnapshot(POLICY_WORKERS, (), rules, REGISTRY)
        customer = rng.choice([ACME, GLOBEX, INITECH])
        cls = {"type": rng.choice(values), "superType": rng.choice(values)}
        submission = {"metaData": {k: rng.choice(values) for k in rng.sample(values, rng.randint(0, 3))}}
        workers, options = list(POLICY_WORKERS), {}
        for rule in rules:  # the definition: every rule, oldest first
            if rule_matches(rule.match, customer, submission, cls):
                snapshot_of_one = PolicySnapshot(tuple(workers), tuple(options.items()), (rule,), REGISTRY)
                one = apply_policy(snapshot_of_one, customer, submission, cls)
                workers, options = list(one.workers), dict(one.options)
        plan = apply_policy(snapshot, customer, submission, cls)
        assert (list(plan.workers), dict(plan.options)) == (workers, options)
