"""The analyzer side of SampleDB jobs: consume announced jobs, analyse, report.

Importable with kafka-python alone (no Flask, SQLAlchemy or Celery): write a subclass of
`Analyzer` and run it with `Runner(...).run()` (or `serve(runner)` for SIGTERM handling), or
wrap a command with `sampledb-jobs analyzer run`.
"""

from __future__ import annotations

import importlib

# Resolved on first use, so that `sampledb-jobs --help` does not pay for importing kafka-python.
_EXPORTS = {
    "AnalysisFailed": "analyzer.base",
    "Analyzer": "analyzer.base",
    "Job": "analyzer.base",
    "Result": "analyzer.base",
    "ApiError": "analyzer.client",
    "ApiUnavailable": "analyzer.client",
    "Client": "analyzer.client",
    "NotAllowed": "analyzer.client",
    "Runner": "analyzer.runner",
    "STOPPED_MESSAGE": "analyzer.runner",
    "serve": "analyzer.runner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'analyzer' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
