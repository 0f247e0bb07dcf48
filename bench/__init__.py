"""`make bench`: the service's benchmarks at a million jobs (docs/BENCHMARKS.md).

Run with `python -m bench`. It starts embedded PostgreSQL, Redis and a Kafka-protocol
broker in a temp dir (app.dev) unless `SAMPLEDB_DATABASE_URL`,
`SAMPLEDB_REDIS_URL` and `SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS` point at real servers; on
those it works in databases, a Redis database and topics of its own and never touches
existing data. Knobs: `BENCH_JOBS` (default 1,000,000) and `BENCH_QUICK=1` (tiny
durations, for a smoke run).

B1 GET /job/{id} under load (gunicorn + wrk)   B2 six searches    B3 ingest to Kafka
B4 timeout sweep vs table size                  B5 peak RSS of the API and Celery workers
"""
