"""The Procfile spells out the command lines app.dev.commands builds: the two must not drift apart."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from app.dev import commands
from celeryconfig import QueueNames

ROOT = Path(__file__).resolve().parents[1]


def _procfile_command(process: str) -> list[str]:
    line = re.search(rf"^{process}:(.*)$", (ROOT / "Procfile").read_text(), re.MULTILINE).group(1)
    return shlex.split(line)


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_procfile_runs_gunicorn_with_the_options_of_the_code():
    web = _procfile_command("web")
    assert web[0] == "gunicorn"
    options = web[1 : web.index("-b")]
    assert options == commands.GUNICORN_OPTIONS
    built = commands.gunicorn("wsgi:app", "127.0.0.1:8000")
    assert built[built.index("gunicorn") + 1 :][: len(options)] == options


def test_the_procfile_worker_consumes_the_queues_of_the_code():
    worker = _procfile_command("worker")
    assert worker[:4] == ["celery", "-A", commands.CELERY_APP, "worker"]
    assert _option(worker, "-Q").split(",") == QueueNames.all()
    assert _option(commands.celery_worker(), "-Q").split(",") == QueueNames.all()
    assert _option(commands.celery_worker(queues=["bench-noop"], app="bench.noop_worker"), "-Q") == "bench-noop"


def test_the_procfile_bounds_flower_as_the_code_does():
    flower = _procfile_command("flower")
    assert flower[:4] == ["celery", "-A", commands.CELERY_APP, "flower"]
    assert flower[4 : 4 + len(commands.FLOWER_OPTIONS)] == commands.FLOWER_OPTIONS
    assert commands.flower("--port=1")[-1 - len(commands.FLOWER_OPTIONS) : -1] == commands.FLOWER_OPTIONS
