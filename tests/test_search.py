"""§5.4: every search criterion and strategy, through POST /job/search and GET /job.

Timestamps are set directly in SQL so the time tests are exact.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app import clock as service_clock
from tests.support.payloads import SAMPLE_SHA256

BASE_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z
OTHER_SHA256 = "a" * 64


@pytest.fixture
def viewer(make_key):
    return make_key("VIEWER", all_customers=True)


@pytest.fixture
def set_job(sql):
    """set_job(job_id, state=..., enqueued=..., start=..., end=..., last=...): exact values by SQL."""

    def update(job_id: str, **values):
        columns = {
            "state": "state",
            "enqueued": "enqueued_timestamp",
            "start": "start_timestamp",
            "end": "end_timestamp",
            "last": "last_updated_timestamp",
        }
        assignments = ", ".join(f"{columns[k]} = :{k}" for k in values)
        sql(f"UPDATE jobs SET {assignments} WHERE id = :id", id=job_id, **values)
        return job_id

    return update


@pytest.fixture
def bulk_jobs(sql, make_job):
    """bulk_jobs(n, customer="acme", state="done", enqueued=BASE_MS): n task-less jobs in one INSERT ... SELECT."""

    def insert(n: int, customer: str = "acme", state: str = "done", enqueued: int = BASE_MS):
        make_job(customer=customer)  # makes sure the customer exists
        sql(
            """
            INSERT INTO jobs (id, state, abort_requested, site, sample_sha256, customer_id, submission_id,
                              submission, classification, enqueued_timestamp, last_updated_timestamp)
            SELECT gen_random_uuid(), :state, false, 'OSL', :sha, c.id, gen_random_uuid(), '{}'::jsonb,
                   '{}'::jsonb, :enqueued, :enqueued
            FROM generate_series(1, :n), customers c WHERE c.short_name = :customer
        """,
            state=state,
            sha=OTHER_SHA256,
            customer=customer,
            n=n,
            enqueued=enqueued,
        )

    return insert


def ids(body: dict) -> list[str]:
    return [job["id"] for job in body["data"]]


def search(api, headers, status=200, **criteria) -> dict:
    return api.post("/job/search", status, headers=headers, json=criteria)


# -- limit and offset --------------------------------------------------------------------------------


def test_limit_defaults_to_25_and_count_is_the_total(api, viewer, bulk_jobs):
    bulk_jobs(30, state="enqueued")
    body = api.get("/job", headers=viewer)
    assert (body["limit"], body["offset"], body["count"], body["size"]) == (25, 0, 31, 25)
    body = search(api, viewer, limit=7, offset=28)
    assert (body["limit"], body["offset"], body["count"], body["size"]) == (7, 28, 31, 3)
    body = search(api, viewer, offset=31)
    assert (body["count"], body["size"], body["data"]) == (31, 0, [])


def _count_scans(plan: dict) -> int:
    """How many times the count of every match (the page statement's InitPlan) ran in this EXPLAIN ANALYZE."""
    own = plan.get("Actual Loops", 0) if plan.get("Parent Relationship") == "InitPlan" else 0
    return own + sum(_count_scans(child) for child in plan.get("Plans", []))


def test_a_page_is_one_statement_and_counts_only_when_it_does_not_hold_every_match(api, viewer, bulk_jobs, app):
    """One round trip per page (SPEC 5.3's count is still exact); PostgreSQL runs the count of every match only
    when the page is full or starts past offset 0: a page not full from offset 0 is its own count."""
    import psycopg
    import sqlalchemy as sa

    from app.extensions import db

    bulk_jobs(9, state="enqueued")  # 10 active jobs with the one of the fixture
    statements: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "FROM jobs" in statement:
            statements.append((statement, parameters))

    engine = db.engine_of(app)
    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        figures = {}
        for limit, offset in ((25, 0), (10, 0), (4, 0), (4, 8), (4, 12)):
            statements.clear()
            body = search(api, viewer, limit=limit, offset=offset)
            figures[(limit, offset)] = (body["count"], body["size"], list(statements))
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    with app.app_context():  # on the connection the reads use: in this test, its own transaction
        raw = db.reader().connection.dbapi_connection
        mogrify = psycopg.ClientCursor(raw).mogrify

        def count_scans(statement, parameters) -> int:
            (plan,) = raw.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + mogrify(statement, parameters)).fetchone()[0]
            return _count_scans(plan["Plan"])

        seen = {key: (count, size, [count_scans(*s) for s in run]) for key, (count, size, run) in figures.items()}
    assert seen == {
        (25, 0): (10, 10, [0]),
        (10, 0): (10, 10, [1]),  # full: there may be more
        (4, 0): (10, 4, [1]),
        (4, 8): (10, 2, [1]),
        (4, 12): (10, 0, [1]),
    }


def test_limit_zero_means_every_match(api, viewer, bulk_jobs):
    bulk_jobs(60, state="enqueued")
    body = api.get("/job", headers=viewer, query_string={"limit": 0})
    assert (body["limit"], body["count"], body["size"]) == (0, 61, 61)
    assert len(set(ids(body))) == 61


def test_limit_zero_with_more_than_10000_matches_is_412(api, viewer, bulk_jobs):
    bulk_jobs(10_001, state="done")
    body = search(api, viewer, 412, limit=0, state=[])
    assert [m["field"] for m in body["messages"]] == ["limit"]
    assert body["messages"][0]["type"] == "FIELD_ERROR"
    # Paging through them works, and a narrower search may ask for everything.
    body = search(api, viewer, state=[], limit=10, offset=9_995)
    assert (body["count"], body["size"]) == (10_002, 7)
    body = search(api, viewer, limit=0)  # active jobs only: the one make_job made
    assert (body["count"], body["size"]) == (1, 1)


@pytest.mark.parametrize(
    "criteria, field",
    [
        ({"limit": 10_001}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"limit": 2.5}, "limit"),
        ({"limit": True}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": None}, "offset"),
    ],
)
def test_limit_and_offset_out_of_range_are_412(api, viewer, criteria, field):
    body = search(api, viewer, 412, **criteria)
    assert [m["field"] for m in body["messages"]] == [field]


# -- sortBy and paging ----------------------------------------------------------------------------------


def test_default_sort_is_enqueued_timestamp_ascending(api, viewer, make_job, set_job):
    late = set_job(make_job(), enqueued=BASE_MS + 3)
    early = set_job(make_job(), enqueued=BASE_MS + 1)
    middle = set_job(make_job(), enqueued=BASE_MS + 2)
    assert ids(api.get("/job", headers=viewer)) == [early, middle, late]
    assert ids(search(api, viewer, sortBy=["-enqueuedTimestamp"])) == [late, middle, early]
    # A single value for a list criterion, in the body and in the query string.
    assert ids(search(api, viewer, sortBy="-enqueuedTimestamp")) == [late, middle, early]
    assert ids(api.get("/job", headers=viewer, query_string={"sortBy": "-enqueuedTimestamp"})) == [late, middle, early]


def test_sort_by_each_field(api, viewer, make_job, set_job, sql):
    a = set_job(
        make_job(customer="zeta", sha256="c" * 64),
        state="done",
        enqueued=BASE_MS + 1,
        start=BASE_MS + 30,
        end=BASE_MS + 40,
        last=BASE_MS + 40,
    )
    b = set_job(
        make_job(customer="alpha", sha256="a" * 64),
        state="executing",
        enqueued=BASE_MS + 2,
        start=BASE_MS + 10,
        last=BASE_MS + 60,
    )
    c = set_job(
        make_job(customer="mid", sha256="b" * 64),
        state="failed",
        enqueued=BASE_MS + 3,
        start=BASE_MS + 20,
        end=BASE_MS + 25,
        last=BASE_MS + 50,
    )
    expected = {
        "enqueuedTimestamp": [a, b, c],
        "startTimestamp": [b, c, a],
        "lastUpdatedTimestamp": [a, c, b],
        "state": [a, b, c],  # done < executing < failed
        "sampleSha256": [b, c, a],
        "customer": [b, c, a],  # by shortName: alpha < mid < zeta
        "id": sorted([a, b, c]),
    }
    for field, order in expected.items():
        assert ids(search(api, viewer, state=[], sortBy=[field])) == order, field
        assert ids(search(api, viewer, state=[], sortBy=[f"-{field}"])) == order[::-1], field
    # endTimestamp: b has none; among those that ended, c ended first.
    ended = [j for j in ids(search(api, viewer, state=["done", "failed"], sortBy="endTimestamp"))]
    assert ended == [c, a]


def test_ties_are_broken_by_id_and_sort_keys_combine(api, viewer, make_job, set_job):
    jobs = [set_job(make_job(), enqueued=BASE_MS) for _ in range(5)]
    first = set_job(make_job(), enqueued=BASE_MS - 1)
    assert ids(api.get("/job", headers=viewer)) == [first] + sorted(jobs)
    # Ties stay in id order also when the sort key is descending.
    assert ids(search(api, viewer, sortBy=["-enqueuedTimestamp"])) == sorted(jobs) + [first]
    set_job(jobs[0], state="executing")
    set_job(jobs[1], state="executing")
    body = search(api, viewer, sortBy=["-state", "-enqueuedTimestamp"])
    assert ids(body) == sorted(jobs[:2]) + sorted(jobs[2:]) + [first]


def test_paging_is_stable_without_duplicates_or_gaps(api, viewer, bulk_jobs, sql):
    bulk_jobs(47, state="enqueued")  # all with the same enqueuedTimestamp
    tied = sorted(str(r[0]) for r in sql("SELECT id FROM jobs WHERE enqueued_timestamp = :t", t=BASE_MS))
    newest = [str(r[0]) for r in sql("SELECT id FROM jobs WHERE enqueued_timestamp > :t", t=BASE_MS)]
    expected = tied + newest  # the tied ones in id order, then the one make_job made just now
    assert len(expected) == 48
    seen = []
    for offset in range(0, 50, 6):
        body = api.get("/job", headers=viewer, query_string={"limit": 6, "offset": offset})
        assert body["count"] == 48
        seen.extend(ids(body))
    assert seen == expected  # id order, each once


def test_unknown_sort_field_is_412(api, viewer):
    body = search(api, viewer, 412, sortBy=["enqueuedTimestamp", "colour"])
    assert [m["field"] for m in body["messages"]] == ["sortBy"]
    api.get("/job", 412, headers=viewer, query_string={"sortBy": "+id"})


# -- state ----------------------------------------------------------------------------------------------


@pytest.fixture
def one_per_state(make_job, set_job):
    return {
        state: set_job(make_job(), state=state)
        for state in ("enqueued", "executing", "done", "failed", "timeout", "aborted")
    }


def test_state_defaults_to_the_active_states(api, viewer, one_per_state):
    active = {one_per_state["enqueued"], one_per_state["executing"]}
    assert set(ids(api.get("/job", headers=viewer))) == active
    assert set(ids(search(api, viewer))) == active


def test_explicit_empty_state_list_means_every_state(api, viewer, one_per_state):
    assert set(ids(search(api, viewer, state=[]))) == set(one_per_state.values())


def test_state_single_value_list_and_repeated_query_parameter(api, viewer, one_per_state):
    assert ids(search(api, viewer, state="done")) == [one_per_state["done"]]
    assert ids(api.get("/job", headers=viewer, query_string={"state": "done"})) == [one_per_state["done"]]
    expected = {one_per_state["aborted"], one_per_state["timeout"]}
    assert set(ids(search(api, viewer, state=["aborted", "timeout"]))) == expected
    body = api.get("/job", headers=viewer, query_string=[("state", "aborted"), ("state", "timeout")])
    assert set(ids(body)) == expected


def test_bad_state_is_412(api, viewer):
    for bad in (["running"], "DONE", [None], [1], {"state": "done"}):
        body = search(api, viewer, 412, state=bad)
        assert [m["field"] for m in body["messages"]] == ["state"], bad


# -- sampleSha256 and customer -------------------------------------------------------------------------------


def test_sample_sha256_is_case_insensitive(api, viewer, make_job):
    mine = make_job(sha256=SAMPLE_SHA256)
    other = make_job(sha256=OTHER_SHA256)
    assert ids(search(api, viewer, sampleSha256=SAMPLE_SHA256.upper())) == [mine]
    assert ids(api.get("/job", headers=viewer, query_string={"sampleSha256": SAMPLE_SHA256.upper()})) == [mine]
    both = search(api, viewer, sampleSha256=[SAMPLE_SHA256, OTHER_SHA256.upper()])
    assert set(ids(both)) == {mine, other}
    assert search(api, viewer, sampleSha256="b" * 64)["count"] == 0


@pytest.mark.parametrize("bad", ["a" * 63, "a" * 65, "g" * 64, SAMPLE_SHA256 + "\n", "", 5, None])
def test_malformed_sample_sha256_is_412(api, viewer, bad):
    body = search(api, viewer, 412, sampleSha256=[bad])
    assert [m["field"] for m in body["messages"]] == ["sampleSha256"]
    if isinstance(bad, str):
        body = api.get("/job", 412, headers=viewer, query_string={"sampleSha256": bad})
        assert [m["field"] for m in body["messages"]] == ["sampleSha256"]


def test_customer_by_id_and_by_short_name(api, viewer, make_job, sql):
    acme = make_job(customer="acme")
    globex = make_job(customer="globex")
    make_job(customer="initech")
    globex_id = sql("SELECT id FROM customers WHERE short_name = 'globex'")[0][0]
    assert ids(search(api, viewer, customer="acme")) == [acme]
    assert ids(search(api, viewer, customer=globex_id)) == [globex]
    assert set(ids(search(api, viewer, customer=["acme", globex_id]))) == {acme, globex}
    body = api.get("/job", headers=viewer, query_string=[("customer", "acme"), ("customer", str(globex_id))])
    assert set(ids(body)) == {acme, globex}
    assert search(api, viewer, customer=["nobody", 999_999])["count"] == 0
    job = api.get(f"/job/{acme}", headers=viewer)["data"]
    assert job["customer"]["shortName"] == "acme" and isinstance(job["customer"]["id"], int)


def test_only_ascii_digits_name_a_customer_id(api, viewer, make_job, sql):
    """Fault: digits Python's isdigit() takes that int() refuses ("²") answered 500; Arabic-Indic digits ("١٢")
    meant customer 12 in search and a shortName elsewhere. Only ASCII digits name an id; any text is a shortName."""
    first = make_job(customer="acme")
    acme_id = sql("SELECT id FROM customers WHERE short_name = 'acme'")[0][0]
    arabic = "".join(chr(0x0660 + int(d)) for d in str(acme_id))  # the id in Arabic-Indic digits
    for ref in ("²", "¹²", arabic, "٣", "0" * 40, "9" * 1000, "2147483648"):
        body = api.get("/job", headers=viewer, query_string={"customer": ref})
        assert body["count"] == 0, ref
        assert search(api, viewer, customer=[ref])["count"] == 0, ref
    body = api.get("/job", 412, headers=viewer, query_string={"customer": "9" * 5000})  # longer than any shortName
    assert [m["field"] for m in body["messages"]] == ["customer"]
    superscript = make_job(customer="²")  # a shortName of any text still names its customer
    assert ids(api.get("/job", headers=viewer, query_string={"customer": "²"})) == [superscript]
    assert ids(api.get("/job", headers=viewer, query_string={"customer": str(acme_id)})) == [first]


def test_bad_customer_is_412(api, viewer):
    for bad in ([True], [1.5], [{"id": 1}], [""], [-1], [2**40], ["x" * 1025]):
        body = search(api, viewer, 412, customer=bad)
        assert [m["field"] for m in body["messages"]] == ["customer"], bad


# -- time range --------------------------------------------------------------------------------------------


@pytest.fixture
def timed(make_job, set_job):
    """Three jobs with exact timestamps (offsets from BASE_MS):
    finished: enqueued 1000, started 2000, ended 3000, last update 3000
    waiting:  enqueued 1500, never started or ended, last update 1500
    running:  enqueued 5000, started 6000, not ended, last update 7000
    """
    return {
        "finished": set_job(
            make_job(),
            state="done",
            enqueued=BASE_MS + 1000,
            start=BASE_MS + 2000,
            end=BASE_MS + 3000,
            last=BASE_MS + 3000,
        ),
        "waiting": set_job(make_job(), state="enqueued", enqueued=BASE_MS + 1500, last=BASE_MS + 1500),
        "running": set_job(
            make_job(), state="executing", enqueued=BASE_MS + 5000, start=BASE_MS + 6000, last=BASE_MS + 7000
        ),
    }


def found(api, headers, timed, **criteria) -> set[str]:
    names = {job_id: name for name, job_id in timed.items()}
    return {names[j] for j in ids(search(api, headers, state=[], **criteria))}


def test_time_range_on_one_field_with_inclusive_bounds(api, viewer, timed):
    assert found(
        api,
        viewer,
        timed,
        startTimestamp=BASE_MS + 1000,
        endTimestamp=BASE_MS + 1500,
        timeFieldStrategy=["enqueuedTimestamp"],
    ) == {"finished", "waiting"}
    assert (
        found(
            api,
            viewer,
            timed,
            startTimestamp=BASE_MS + 1001,
            endTimestamp=BASE_MS + 1499,
            timeFieldStrategy="enqueuedTimestamp",
        )
        == set()
    )
    assert found(
        api,
        viewer,
        timed,
        startTimestamp=BASE_MS + 3000,
        endTimestamp=BASE_MS + 3000,
        timeFieldStrategy=["endTimestamp"],
    ) == {"finished"}
    # A null field never lies in a range: "waiting" has no startTimestamp.
    assert found(
        api, viewer, timed, startTimestamp=0, endTimestamp=BASE_MS + 10_000, timeFieldStrategy=["startTimestamp"]
    ) == {"finished", "running"}


def test_only_one_bound(api, viewer, timed):
    assert found(api, viewer, timed, startTimestamp=BASE_MS + 1500, timeFieldStrategy=["enqueuedTimestamp"]) == {
        "waiting",
        "running",
    }
    assert found(api, viewer, timed, endTimestamp=BASE_MS + 1499, timeFieldStrategy=["enqueuedTimestamp"]) == {
        "finished"
    }


def test_time_field_strategy_all_means_every_time_field(api, viewer, timed):
    # lastUpdatedTimestamp 7000 of "running" is the only time in [6500, 7000]
    assert found(api, viewer, timed, startTimestamp=BASE_MS + 6500, endTimestamp=BASE_MS + 7000) == {"running"}
    assert found(
        api, viewer, timed, startTimestamp=BASE_MS + 6500, endTimestamp=BASE_MS + 7000, timeFieldStrategy=["all"]
    ) == {"running"}
    assert (
        found(
            api,
            viewer,
            timed,
            startTimestamp=BASE_MS + 6500,
            endTimestamp=BASE_MS + 7000,
            timeFieldStrategy=["enqueuedTimestamp", "startTimestamp", "endTimestamp"],
        )
        == set()
    )
    assert found(
        api,
        viewer,
        timed,
        startTimestamp=BASE_MS + 6500,
        endTimestamp=BASE_MS + 7000,
        timeFieldStrategy=["lastUpdatedTimestamp"],
    ) == {"running"}


def test_time_match_strategy_any_versus_all(api, viewer, timed):
    window = {"startTimestamp": BASE_MS, "endTimestamp": BASE_MS + 10_000}
    fields = ["enqueuedTimestamp", "startTimestamp"]
    assert found(api, viewer, timed, **window, timeFieldStrategy=fields) == {"finished", "waiting", "running"}
    assert found(api, viewer, timed, **window, timeFieldStrategy=fields, timeMatchStrategy="any") == {
        "finished",
        "waiting",
        "running",
    }
    # all: every listed field must lie in the range, and waiting's null startTimestamp does not.
    assert found(api, viewer, timed, **window, timeFieldStrategy=fields, timeMatchStrategy="all") == {
        "finished",
        "running",
    }
    # all over every time field: only the finished job has all four set and in range.
    assert found(api, viewer, timed, **window, timeFieldStrategy="all", timeMatchStrategy="all") == {"finished"}
    # all with a narrow window: finished's start (2000) is in, its end (3000) is not.
    assert (
        found(
            api,
            viewer,
            timed,
            startTimestamp=BASE_MS + 1000,
            endTimestamp=BASE_MS + 2000,
            timeFieldStrategy=["enqueuedTimestamp", "endTimestamp"],
            timeMatchStrategy="all",
        )
        == set()
    )
    assert found(
        api,
        viewer,
        timed,
        startTimestamp=BASE_MS + 1000,
        endTimestamp=BASE_MS + 2000,
        timeFieldStrategy=["enqueuedTimestamp", "endTimestamp"],
        timeMatchStrategy="any",
    ) == {"finished", "waiting"}


def test_iso_timestamps_with_z_and_fractions(api, viewer, timed):
    start = datetime.fromtimestamp((BASE_MS + 1000) / 1000, UTC)
    iso = lambda dt: dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"  # noqa: E731
    assert iso(start) == "2023-11-14T22:13:21.000Z"
    assert found(
        api,
        viewer,
        timed,
        startTimestamp=iso(start),
        endTimestamp=iso(start + timedelta(milliseconds=500)),
        timeFieldStrategy=["enqueuedTimestamp"],
    ) == {"finished", "waiting"}
    assert found(
        api,
        viewer,
        timed,
        startTimestamp="2023-11-14T22:13:21.001Z",
        endTimestamp="2023-11-14T22:13:21.5Z",
        timeFieldStrategy=["enqueuedTimestamp"],
    ) == {"waiting"}
    assert found(
        api,
        viewer,
        timed,
        startTimestamp="2023-11-14T22:13:21Z",
        endTimestamp="2023-11-14T22:13:21Z",
        timeFieldStrategy=["enqueuedTimestamp"],
    ) == {"finished"}
    # The same bounds in the query string.
    body = api.get(
        "/job",
        headers=viewer,
        query_string={
            "startTimestamp": "2023-11-14T22:13:21Z",
            "endTimestamp": str(BASE_MS + 1500),
            "timeFieldStrategy": "enqueuedTimestamp",
            "state": ["done", "enqueued"],
        },
    )
    assert set(ids(body)) == {timed["finished"], timed["waiting"]}


@pytest.mark.parametrize(
    "bad",
    [
        "2023-11-14T22:13:21+01:00",
        "2023-11-14T22:13:21",
        "2023-11-14",
        "yesterday",
        "now + 1 fortnight",
        "now -",
        "",
        "1.5",
        1.5,
        True,
        [1],
        {"t": 1},
    ],
)
def test_bad_time_expression_is_412_naming_the_field(api, viewer, bad):
    body = search(api, viewer, 412, startTimestamp=bad)
    assert [m["field"] for m in body["messages"]] == ["startTimestamp"], bad
    body = search(api, viewer, 412, endTimestamp=bad)
    assert [m["field"] for m in body["messages"]] == ["endTimestamp"], bad


def test_start_after_end_is_412(api, viewer):
    body = search(api, viewer, 412, startTimestamp=BASE_MS + 1, endTimestamp=BASE_MS)
    assert body["messages"][0]["type"] == "FIELD_ERROR"
    assert body["messages"][0]["field"] in ("startTimestamp", "endTimestamp")
    search(api, viewer, 412, startTimestamp="now", endTimestamp="now - 1 hour")
    search(api, viewer, startTimestamp="now - 1 hour", endTimestamp="now")


def test_relative_time_expressions(api, viewer, make_job, set_job):
    now = service_clock.now_ms()
    day = 86_400_000
    recent = set_job(make_job(), enqueued=now - 2 * day, last=now - 2 * day)
    older = set_job(make_job(), enqueued=now - 10 * day, last=now - 10 * day)
    ancient = set_job(make_job(), enqueued=now - 400 * day, last=now - 400 * day)
    field = {"timeFieldStrategy": ["enqueuedTimestamp"]}
    assert ids(search(api, viewer, startTimestamp="now - 1 week", endTimestamp="now", **field)) == [recent]
    assert ids(search(api, viewer, startTimestamp="-1w", **field)) == [recent]
    assert ids(search(api, viewer, startTimestamp="NOW-3D", **field)) == [recent]
    assert ids(search(api, viewer, startTimestamp="now - 11 days", endTimestamp="now - 9days", **field)) == [older]
    assert set(ids(search(api, viewer, startTimestamp="-1month", **field))) == {recent, older}
    assert set(ids(search(api, viewer, endTimestamp="now - 1 year", **field))) == {ancient}
    assert set(ids(search(api, viewer, startTimestamp="startOfYear - 2y", **field))) == {recent, older, ancient}
    assert ids(search(api, viewer, endTimestamp="startOfDay - 9d", **field)) == [ancient, older]
    body = api.get("/job", headers=viewer, query_string={"startTimestamp": "now-1w", "timeFieldStrategy": "all"})
    assert ids(body) == [recent]


def test_bad_time_field_and_match_strategy_are_412(api, viewer):
    body = search(api, viewer, 412, timeFieldStrategy=["createdTimestamp"], timeMatchStrategy=["any"])
    assert sorted(m["field"] for m in body["messages"]) == ["timeFieldStrategy", "timeMatchStrategy"]


# -- all together ------------------------------------------------------------------------------------------


def test_criteria_are_anded(api, viewer, make_job, set_job):
    target = set_job(make_job(customer="acme", sha256=SAMPLE_SHA256), state="failed", enqueued=BASE_MS)
    set_job(make_job(customer="acme", sha256=SAMPLE_SHA256), state="done", enqueued=BASE_MS)
    set_job(make_job(customer="globex", sha256=SAMPLE_SHA256), state="failed", enqueued=BASE_MS)
    set_job(make_job(customer="acme", sha256=OTHER_SHA256), state="failed", enqueued=BASE_MS)
    set_job(make_job(customer="acme", sha256=SAMPLE_SHA256), state="failed", enqueued=BASE_MS + 10_000)
    body = search(
        api,
        viewer,
        state=["failed", "timeout"],
        customer="acme",
        sampleSha256=SAMPLE_SHA256,
        startTimestamp=BASE_MS - 1,
        endTimestamp=BASE_MS + 1,
        timeFieldStrategy="enqueuedTimestamp",
    )
    assert ids(body) == [target] and body["count"] == 1


def test_list_criterion_bounded_to_10000_values(api, viewer):
    body = search(api, viewer, 412, sampleSha256=[SAMPLE_SHA256] * 10_001)
    assert [m["field"] for m in body["messages"]] == ["sampleSha256"]
    assert search(api, viewer, customer=[str(uuid.uuid4())[:8] for _ in range(10_000)])["count"] == 0
