"""Running for months: retention, the periodic tasks' runs, metrics, the vital signs and status,
and the schema migrations."""
