"""`sampledb-jobs analyzer run`: an external command as an analysis worker."""

from __future__ import annotations

import collections
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import click

from analyzer.base import AnalysisFailed, Analyzer, Job, Result

# Bytes of a command's output kept for the report (the API takes messages of up to 4,096 characters).
OUTPUT_TAIL_BYTES = 3000
# Seconds between SIGTERM and SIGKILL when a command is stopped (abort, stop, --timeout).
KILL_GRACE_SECONDS = 5.0
PR_SET_PDEATHSIG = 1


def _die_with_runner(runner_pid: int) -> Callable[[], None]:
    """A preexec_fn: a SIGKILLed runner takes its command down with it (Linux).

    The signal follows the *thread* that started the command: the runner's analysis threads live
    as long as the runner, and a command outlives its analysis only if that thread died, which
    is what should kill it anyway."""

    def preexec() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            return
        if os.getppid() != runner_pid:  # the runner died before the signal was armed
            os._exit(1)

    return preexec


class _Tail(threading.Thread):
    """Drains a pipe (so the command never blocks on a full one) and keeps its last bytes."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe = pipe
        self.chunks: collections.deque = collections.deque()
        self.size = 0

    def run(self) -> None:
        for chunk in iter(lambda: self.pipe.read1(65536), b""):
            self.chunks.append(chunk)
            self.size += len(chunk)
            while self.size - len(self.chunks[0]) >= OUTPUT_TAIL_BYTES:
                self.size -= len(self.chunks.popleft())
        self.pipe.close()

    def text(self) -> str:
        return b"".join(self.chunks)[-OUTPUT_TAIL_BYTES:].decode("utf-8", "replace").strip()


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except (BrokenPipeError, OSError):
        pass  # the command does not read its input: that is its business


class CommandAnalyzer(Analyzer):
    """Runs `argv` per job: the job's JSON on stdin, `{jobID}` and `{sha256}` replaced in the arguments.

    Exit 0 is `success` (the last line of standard output, if any, is the message); any other exit
    is `failed` with the tail of standard error; past `timeout` seconds the command's process group
    is killed and the task fails with that reason. When the runner stops the analysis (abort
    request, shutdown) the command is killed the same way.
    """

    def __init__(self, worker: str, argv: list[str], timeout: float | None = None):
        self.worker = worker
        self.argv = list(argv)
        self.timeout = timeout

    def analyse(self, job: Job) -> Result:
        argv = [a.replace("{jobID}", job.id).replace("{sha256}", job.sha256) for a in self.argv]
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=_die_with_runner(os.getpid()),
            )
        except OSError as err:
            raise AnalysisFailed(f"cannot run {argv[0]}: {err}") from None
        stdout, stderr = _Tail(process.stdout), _Tail(process.stderr)
        stdout.start()
        stderr.start()
        threading.Thread(target=_feed, args=(process.stdin, json.dumps(job.data).encode()), daemon=True).start()
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        timed_out = False
        while process.poll() is None:
            if job.stop.wait(0.05):
                break
            if deadline is not None and time.monotonic() > deadline:
                timed_out = True
                break
        if process.poll() is None:
            _kill(process)
        stdout.join(5)
        stderr.join(5)
        if timed_out:
            raise AnalysisFailed(_with_tail(f"{argv[0]} killed after the {self.timeout:g} s timeout", stderr.text()))
        if job.stopped():
            return Result("failed", job.stop_reason)  # the runner reports the stop's own outcome
        if process.returncode != 0:
            raise AnalysisFailed(_with_tail(f"{argv[0]} exited with status {process.returncode}", stderr.text()))
        lines = stdout.text().splitlines()
        return Result("success", lines[-1] if lines else None)


def _with_tail(reason: str, tail: str) -> str:
    return f"{reason}: {tail}" if tail else reason


def _kill(process: subprocess.Popen) -> None:
    """SIGTERM the command's process group, SIGKILL it if it lingers."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Connection(NamedTuple):
    api_url: str
    api_key: str
    bootstrap_servers: str
    site: str
    kafka_security: dict = {}  # kafka-python's TLS and SASL arguments (SAMPLEDB_KAFKA_SECURITY_PROTOCOL, ...)


def analyzer_group(connect: Callable[[str | None, str | None, str | None], Connection]) -> click.Group:
    """The `analyzer` command group; `connect(api_url, api_key, bootstrap)` fills in what the options
    and their variables left open (the dev stack's values) and names the site."""

    @click.group()
    def analyzer() -> None:
        """Analysis workers: consume announced jobs and report on their tasks."""

    @analyzer.command("run", context_settings={"ignore_unknown_options": True})
    @click.option("--worker", required=True, help="the analysis worker's shortName (also the consumer group)")
    @click.option(
        "--concurrency", type=click.IntRange(1, 256), default=1, show_default=True, help="jobs analysed at once"
    )
    @click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="seconds after which the command is killed and the task fails",
    )
    @click.option(
        "--heartbeat",
        type=click.FloatRange(min=0, min_open=True),
        default=60,
        show_default=True,
        help="seconds between heartbeats of a running task (under the service's execution timeout)",
    )
    @click.option("--api-url", envvar="SAMPLEDB_API_URL", default=None, help="default: the dev stack's API")
    @click.option(
        "--api-key",
        envvar="SAMPLEDB_API_KEY",
        default=None,
        help="an ANALYZER key that sees every customer; default: the dev stack's key",
    )
    @click.option(
        "--bootstrap-servers",
        envvar="SAMPLEDB_KAFKA_BOOTSTRAP_SERVERS",
        default=None,
        help="Kafka host:port list; default: the dev stack's broker",
    )
    @click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
    def run(
        worker: str,
        concurrency: int,
        timeout: float | None,
        heartbeat: float,
        api_url: str | None,
        api_key: str | None,
        bootstrap_servers: str | None,
        command: tuple[str, ...],
    ) -> None:
        """Run COMMAND for every job with a task for WORKER: the job's JSON on its standard input,
        {jobID} and {sha256} replaced in its arguments; exit 0 reports success, anything else failed.

        Example: sampledb-jobs analyzer run --worker static-analyzer --timeout 600 -- file -
        """
        from analyzer.runner import Runner, serve

        if shutil.which(command[0]) is None:
            # Checked once here: a missing program would otherwise fail every job it is given.
            raise click.ClickException(f"{command[0]}: no such program")

        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO lines narrate every connection
        target = connect(api_url, api_key, bootstrap_servers)
        runner = Runner(
            CommandAnalyzer(worker, list(command), timeout),
            api_url=target.api_url,
            api_key=target.api_key,
            bootstrap_servers=target.bootstrap_servers,
            site=target.site,
            concurrency=concurrency,
            heartbeat_seconds=heartbeat,
            kafka_security=target.kafka_security,
        )
        from kafka.errors import KafkaError

        try:
            sys.exit(serve(runner))
        except KafkaError as err:
            raise click.ClickException(f"Kafka at {target.bootstrap_servers}: {err}") from None

    return analyzer
