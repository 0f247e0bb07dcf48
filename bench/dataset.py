"""A realistic data set of N jobs, loaded in SQL (INSERT ... SELECT generate_series), not through the API.

Shape (per job, drawn with a fixed seed):
* customer: 20 customers, Zipf-like (the largest has ~23 % of the jobs, the smallest ~1.6 %);
* state: 1 % enqueued (enqueued in the last 20 h), 1 % executing (heartbeat in the last
  50 min, so no sweep touches them), 83 % done, 8 % failed, 4 % timeout, 3 % aborted
  (a third of those before they started), final jobs spread over the past year;
* sample: one of N * 0.7 distinct sha256, so a hash matches one or a few jobs;
* classification: 8 kinds (PE, PE64, ELF, APK, Mach-O, DOCX, PDF, JS) and a submission
  shaped as the seed's, ~0.9 KB of JSON per job;
* tasks: what the default workers (migration 0002) would make for the kind: the static
  analyzer, plus a sandbox of the platform or the document analyzer: 1.95 per job on average.
No job history is loaded: no benchmark reads it (the sweep only appends to it).

For speed the secondary indexes and foreign keys of jobs and job_tasks are dropped during
the load and made again from their own definitions afterwards (same names and DDL), then
VACUUM ANALYZE.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

CUSTOMERS = 20
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
LOADED_TABLES = ("jobs", "job_tasks")

# kind: (cumulative probability, type, superType, arch, platform, mime type, extension, task workers)
KINDS = [
    (0.40, "PE", "executable", "x86", "win", "application/x-dosexec", "exe", ["static-analyzer", "sandbox-windows"]),
    (
        0.55,
        "PE64",
        "executable",
        "x86_64",
        "win",
        "application/x-dosexec",
        "exe",
        ["static-analyzer", "sandbox-windows"],
    ),
    (
        0.65,
        "ELF",
        "executable",
        "x86_64",
        "linux",
        "application/x-executable",
        "elf",
        ["static-analyzer", "sandbox-linux"],
    ),
    (
        0.73,
        "APK",
        "executable",
        "arm",
        "android",
        "application/vnd.android.package-archive",
        "apk",
        ["static-analyzer", "sandbox-android"],
    ),
    (
        0.78,
        "MachO",
        "executable",
        "x86_64",
        "macos",
        "application/x-mach-binary",
        "macho",
        ["static-analyzer", "sandbox-macos"],
    ),
    (
        0.88,
        "DOCX",
        "document",
        None,
        None,
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "docx",
        ["document-analyzer", "static-analyzer"],
    ),
    (0.95, "PDF", "document", None, None, "application/pdf", "pdf", ["document-analyzer", "static-analyzer"]),
    (1.00, "JS", "script", None, None, "text/javascript", "js", ["static-analyzer"]),
]


def _sql_text(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def _kind_case(column_of_kind) -> str:
    """CASE kind WHEN 1 THEN <column_of_kind(KINDS[0])> ... END"""
    whens = " ".join(f"WHEN {n} THEN {column_of_kind(k)}" for n, k in enumerate(KINDS, start=1))
    return f"CASE g.kind {whens} END"


GENERATE = """
CREATE TEMP TABLE bench_gen AS
WITH draws AS MATERIALIZED (
    SELECT i, random() AS rs, random() AS rc, random() AS rk, random() AS rn,
           random() AS t1, random() AS t2, random() AS t3
    FROM generate_series(1, :n) AS i
), shaped AS (
    SELECT i, t1, t2, t3,
        CASE WHEN rs < 0.01 THEN 'enqueued' WHEN rs < 0.02 THEN 'executing' WHEN rs < 0.85 THEN 'done'
             WHEN rs < 0.93 THEN 'failed' WHEN rs < 0.97 THEN 'timeout' ELSE 'aborted' END AS state,
        least(floor(power(:customers + 1, rc))::int, :customers) AS customer_rank,
        {kind} AS kind,
        floor(rn * :samples)::int AS sample_no
    FROM draws
), timed AS (
    SELECT *,
        CASE state
            WHEN 'enqueued' THEN :now - (t1 * 20 * {hour})::bigint
            WHEN 'executing' THEN :now - (t1 * 50 * {minute})::bigint - (t2 * {hour})::bigint
            ELSE :now - {hour} - (t1 * (365::bigint * {day} - {hour}))::bigint
        END AS enq
    FROM shaped
), started AS (
    SELECT *,
        CASE
            WHEN state = 'enqueued' OR (state = 'aborted' AND t3 < 0.4) THEN NULL
            WHEN state = 'executing' THEN enq + (t3 * t2 * {hour})::bigint
            ELSE enq + (t2 * 10 * {minute})::bigint
        END AS start
    FROM timed
)
SELECT i, gen_random_uuid() AS id, gen_random_uuid() AS submission_id, state, customer_rank, kind, sample_no,
    encode(sha256(convert_to('bench-sample-' || sample_no, 'UTF8')), 'hex') AS sha,
    enq, start,
    CASE WHEN state IN ('enqueued', 'executing') THEN NULL
         WHEN state = 'timeout' THEN coalesce(start, enq) + {hour} + (t3 * {hour})::bigint
         ELSE coalesce(start, enq) + (t3 * 30 * {minute})::bigint
    END AS "end",
    CASE WHEN state = 'enqueued' THEN enq
         WHEN state = 'executing' THEN enq + (t2 * {hour})::bigint
    END AS active_last_updated
FROM started
"""

INSERT_JOBS = """
INSERT INTO jobs (id, state, abort_requested, site, sample_sha256, sample_size, customer_id, submission_id,
                  submission, classification, enqueued_timestamp, start_timestamp, end_timestamp,
                  last_updated_timestamp, abort_requested_timestamp, abort_reason, message)
SELECT g.id, g.state, g.state = 'aborted', :site, g.sha, 1000 + (hashtext(g.sha) & 8388607), c.ids[g.customer_rank],
    g.submission_id,
    jsonb_build_object(
        'id', g.submission_id, 'customer', c.names[g.customer_rank], 'sample', jsonb_build_object('id', g.sha),
        'createdByUser', jsonb_build_object('id', 0, 'shortName', 'upload-bot', 'name', 'Upload bot',
                                            'customer', NULL, 'domain', NULL),
        'createdTimestamp', g.enq - 1500, 'name', 'sample-' || g.sample_no || '.' || {ext},
        'timestamp', g.enq - 2000, 'mimeType', {mime},
        'metaData', jsonb_build_object('source', 'mail-gateway', 'key', 'value'),
        'tlp', (ARRAY['white', 'green', 'amber', 'red'])[1 + g.i % 4], 'acl', '[]'::jsonb,
        'userAgent', jsonb_build_object('name', 'python-requests', 'version', '3')),
    jsonb_build_object(
        'sample', g.sha, 'classificationID', gen_random_uuid(), 'createdTimestamp', g.enq - 1000, 'version', '1',
        'type', {type}, 'superType', {super_type}, 'arch', {arch}, 'platform', {platform}, 'meta', '{{}}'::jsonb),
    g.enq, g.start, g."end", coalesce(g."end", g.active_last_updated),
    CASE WHEN g.state = 'aborted' THEN coalesce(g.start, g.enq) + 1000 END,
    CASE WHEN g.state = 'aborted' THEN 'Requested by the customer' END,
    CASE g.state WHEN 'failed' THEN 'All tasks final: failed'
                 WHEN 'timeout' THEN 'No progress reported for 3600 seconds'
                 WHEN 'done' THEN 'All tasks final: success' END
FROM bench_gen g,
     (SELECT array_agg(id ORDER BY short_name) AS ids, array_agg(short_name ORDER BY short_name) AS names
      FROM customers WHERE short_name LIKE 'bench-customer-%') c
"""

INSERT_TASKS = """
INSERT INTO job_tasks (id, job_id, worker, state, enqueued_timestamp, start_timestamp, end_timestamp,
                       last_updated_timestamp, analyses, message)
SELECT gen_random_uuid(), t.id, t.worker, t.task_state, t.enq,
    CASE WHEN t.task_state <> 'enqueued' THEN t.start END,
    CASE WHEN t.task_state IN ('enqueued', 'executing') THEN NULL ELSE coalesce(t."end", t.enq + 60000) END,
    coalesce(t."end", t.active_last_updated),
    CASE WHEN t.task_state = 'success' THEN jsonb_build_array(jsonb_build_object(
        'id', gen_random_uuid(), 'analysisScore', (t.i * 7 + t.n) % 101,
        'userAgent', jsonb_build_object('name', t.worker, 'version', '2.1')))
    ELSE '[]'::jsonb END,
    CASE WHEN t.task_state = 'failed' THEN 'Analyzer crashed' END
FROM (
    SELECT g.*, w.worker, w.n,
        CASE g.state
            WHEN 'done' THEN CASE WHEN w.n = 2 AND g.i % 20 = 0 THEN 'failed' ELSE 'success' END
            WHEN 'failed' THEN 'failed'
            WHEN 'timeout' THEN 'timeout'
            WHEN 'aborted' THEN 'cancelled'
            WHEN 'enqueued' THEN 'enqueued'
            ELSE CASE WHEN w.n = 1 AND g.i % 2 = 0 THEN 'success' ELSE 'executing' END
        END AS task_state
    FROM bench_gen g CROSS JOIN LATERAL unnest({workers}) WITH ORDINALITY AS w(worker, n)
) t
"""


def _statements() -> tuple[str, str, str]:
    cumulative = " ".join(f"WHEN rk < {k[0]} THEN {n}" for n, k in enumerate(KINDS[:-1], start=1))
    generate = GENERATE.format(
        kind=f"CASE {cumulative} ELSE {len(KINDS)} END", hour=HOUR_MS, minute=MINUTE_MS, day=DAY_MS
    )
    jobs = INSERT_JOBS.format(
        type=_kind_case(lambda k: _sql_text(k[1])),
        super_type=_kind_case(lambda k: _sql_text(k[2])),
        arch=_kind_case(lambda k: _sql_text(k[3])),
        platform=_kind_case(lambda k: _sql_text(k[4])),
        mime=_kind_case(lambda k: _sql_text(k[5])),
        ext=_kind_case(lambda k: _sql_text(k[6])),
    )
    tasks = INSERT_TASKS.format(
        workers=_kind_case(lambda k: "ARRAY[" + ", ".join(_sql_text(w) for w in k[7]) + "]::text[]")
    )
    return generate, jobs, tasks


def _secondary_objects(conn: sa.Connection) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """(index name, CREATE INDEX ...) of the loaded tables' plain indexes and (table, name, definition)
    of their foreign keys: what the load drops and makes again."""
    indexes = conn.execute(
        sa.text("""
        SELECT i.relname, pg_get_indexdef(x.indexrelid)
        FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
        WHERE t.relname = ANY(:tables) AND t.relnamespace = 'public'::regnamespace
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
        ORDER BY i.relname
    """),
        {"tables": list(LOADED_TABLES)},
    ).all()
    foreign_keys = conn.execute(
        sa.text("""
        SELECT t.relname, c.conname, pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
        WHERE t.relname = ANY(:tables) AND t.relnamespace = 'public'::regnamespace AND c.contype = 'f'
        ORDER BY c.conname
    """),
        {"tables": list(LOADED_TABLES)},
    ).all()
    return [tuple(r) for r in indexes], [tuple(r) for r in foreign_keys]


def load_jobs(database_url: str, n: int, now_ms: int, *, site: str, seed: float = 0.42) -> dict:
    """Load `n` jobs (and their tasks, and 20 customers) into an empty migrated database; return what was made."""
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    phases: dict[str, float] = {}
    started = time.perf_counter()

    def phase(name: str, since: float) -> float:
        phases[name] = round(time.perf_counter() - since, 2)
        return time.perf_counter()

    generate, insert_jobs, insert_tasks = _statements()
    params = {"n": n, "now": now_ms, "customers": CUSTOMERS, "samples": max(1, int(n * 0.7)), "site": site}
    with engine.connect() as conn:
        conn.execute(sa.text("SET synchronous_commit = off"))
        conn.execute(sa.text("SET maintenance_work_mem = '512MB'"))
        conn.execute(sa.text("SET work_mem = '256MB'"))
        conn.execute(sa.text("SELECT setseed(:seed)"), {"seed": seed})
        conn.execute(
            sa.text(
                "INSERT INTO customers (short_name, name) SELECT format('bench-customer-%s', lpad(k::text, 2, '0')), "
                "format('Benchmark customer %s', k) FROM generate_series(1, :c) k ON CONFLICT (short_name) DO NOTHING"
            ),
            {"c": CUSTOMERS},
        )
        indexes, foreign_keys = _secondary_objects(conn)
        for table, name, _ in foreign_keys:
            conn.execute(sa.text(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"'))
        for name, _ in indexes:
            conn.execute(sa.text(f'DROP INDEX "{name}"'))
        conn.commit()
        t = phase("prepare", started)

        conn.execute(sa.text(generate), params)
        t = phase("generate", t)
        jobs = conn.execute(sa.text(insert_jobs), params).rowcount
        t = phase("insert_jobs", t)
        tasks = conn.execute(sa.text(insert_tasks), params).rowcount
        conn.execute(sa.text("DROP TABLE bench_gen"))
        conn.commit()
        t = phase("insert_tasks", t)

        for _, definition in indexes:
            conn.execute(sa.text(definition))
        for table, name, definition in foreign_keys:
            conn.execute(sa.text(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}'))
        conn.commit()
        t = phase("indexes", t)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM (ANALYZE) jobs"))
        conn.execute(sa.text("VACUUM (ANALYZE) job_tasks"))
        conn.execute(sa.text("ANALYZE"))
        t = phase("vacuum_analyze", t)
        states = dict(conn.execute(sa.text("SELECT state, count(*) FROM jobs GROUP BY state ORDER BY 1")).all())
        sizes = dict(
            conn.execute(
                sa.text("SELECT relname, pg_total_relation_size(oid) FROM pg_class WHERE relname = ANY(:t)"),
                {"t": list(LOADED_TABLES)},
            ).all()
        )
    engine.dispose()
    return {
        "jobs": jobs,
        "tasks": tasks,
        "tasks_per_job": round(tasks / jobs, 2) if jobs else 0,
        "customers": CUSTOMERS,
        "states": states,
        "total_bytes": sizes,
        "seconds": round(time.perf_counter() - started, 2),
        "phases": phases,
        "rebuilt_indexes": [name for name, _ in indexes],
        "rebuilt_foreign_keys": [name for _, name, _ in foreign_keys],
    }
