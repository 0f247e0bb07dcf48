"""The runner: jobs from Kafka to `Analyzer.analyse` and its outcome back to the API.

For each announced job with a task for the analyzer's worker: fetch the job, claim the task,
analyse it while heartbeating, report the outcome, and only then let the record's offset be
committed. At least once: a record whose job is already claimed or final is skipped, so a
redelivery after a restart or a rebalance costs one GET.

Claiming. A task is ours only if our `PUT … executing` made its enqueued → executing move.
The service serialises task updates under the job's row lock and records that one move in the
job's history with the message of the PUT that made it; a later PUT on an executing task is a
mere heartbeat (200, no history). So the runner GETs the job first (skip unless the task is
`enqueued`), PUTs `executing` with a message naming this runner instance, and reads the
history: if the move carries another instance's message, another analyzer won the race
(possible while a rebalance hands a partition over mid-record) and this one backs off.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from analyzer.base import AnalysisFailed, Analyzer, Job, Result
from analyzer.client import ApiError, ApiUnavailable, Client, NotAllowed
from analyzer.topics import AbortFollower, OffsetTracker, abort_topic, group_consumer, job_topic

log = logging.getLogger(__name__)

STOPPED_MESSAGE = "analyzer stopped"
ABORT_FLAG = "ABORT_REQUESTED"


@dataclass
class _Claim:
    """One task this runner is working on, from the first GET to the final report."""

    job: Job
    record: tuple  # (partition, offset, token) of the job record, for the offset commit
    claimed: bool = False  # our PUT made the enqueued -> executing move
    stop_state: str | None = None  # what to report when job.stop is set; None: nothing (the task is gone)
    reported: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def halt(self, state: str | None, reason: str) -> None:
        """Ask the analysis to end; the first reason wins (an abort seen before a stop stays an abort)."""
        with self.lock:
            if self.job.stop.is_set():
                return
            self.stop_state, self.job.stop_reason = state, reason
            self.job.stop.set()


class _Skip(Exception):
    """This task is not ours to analyse (gone, claimed elsewhere, final): the record is done."""


class _Left(Exception):
    """The runner stops before this task was claimed: its record stays uncommitted, to come again."""


class Runner:
    """Runs one `Analyzer` against a SampleDB jobs service until `stop()` (or SIGTERM via `serve`).

    concurrency: analyses at once (threads). heartbeat_seconds: how often a running task is
    reported `executing` again — keep it well under the service's execution timeout.
    stop_grace_seconds: how long `stop()` waits for running analyses to end (their `job.stop`
    is set) before it reports them `failed` anyway. group_id: the consumer group, by default
    the worker's shortName, so that instances of one worker share the jobs.
    """

    def __init__(
        self,
        analyzer: Analyzer,
        *,
        api_url: str,
        api_key: str,
        bootstrap_servers: str,
        site: str = "OSL",
        concurrency: int = 1,
        heartbeat_seconds: float = 60.0,
        stop_grace_seconds: float = 30.0,
        retry_seconds: float = 300.0,
        group_id: str | None = None,
        kafka_security: dict | None = None,
    ):
        if not analyzer.worker:
            raise ValueError(f"{type(analyzer).__name__}.worker must name an analysis worker")
        if concurrency < 1 or heartbeat_seconds <= 0:
            raise ValueError("concurrency must be at least 1 and heartbeat_seconds more than 0")
        self.analyzer = analyzer
        self.worker = analyzer.worker
        self.bootstrap = bootstrap_servers
        self.kafka_security = kafka_security or {}
        self.site = site
        self.concurrency = concurrency
        self.heartbeat_seconds = heartbeat_seconds
        self.stop_grace_seconds = stop_grace_seconds
        self.group_id = group_id or self.worker
        self.instance = f"{self.worker} on {socket.gethostname()} pid {os.getpid()} #{uuid.uuid4().hex[:8]}"
        self.claim_message = f"Claimed by analyzer {self.instance}"
        self._stopping = threading.Event()
        self.client = Client(
            api_url,
            api_key,
            retry_seconds=retry_seconds,
            stopping=self._stopping,
            user_agent=f"sampledb-jobs-analyzer/{self.worker}",
        )
        self.joined = threading.Event()  # set once the group gave this instance its partitions
        self.counts: collections.Counter = collections.Counter()
        self.error: Exception | None = None
        self._lock = threading.Lock()
        self._claims: dict[str, _Claim] = {}
        self._work: queue.Queue = queue.Queue()
        self._finished: queue.SimpleQueue = queue.SimpleQueue()
        self._tracker = OffsetTracker()
        self._consumer: KafkaConsumer | None = None

    # -- control ----------------------------------------------------------------------------

    def stop(self) -> None:
        """End the run: no new job is taken, running analyses are stopped and reported. Thread-safe."""
        self._stopping.set()

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def run(self) -> int:
        """Consume and analyse until stopped; 0 after a clean stop, 1 if the API refused the key."""
        client_id = f"sampledb-analyzer-{self.worker}"
        follower = AbortFollower(self.bootstrap, abort_topic(self.site), self._on_abort, client_id, self.kafka_security)
        consumer = self._consumer = group_consumer(
            self.bootstrap, job_topic(self.site), self.group_id, _Rebalance(self), client_id, self.kafka_security
        )
        threads = [
            threading.Thread(target=self._analyse_records, name=f"analyse-{self.worker}-{n}", daemon=True)
            for n in range(self.concurrency)
        ]
        heartbeat = threading.Thread(target=self._heartbeats, name=f"heartbeat-{self.worker}", daemon=True)
        for thread in [follower, heartbeat, *threads]:
            thread.start()
        log.info("analyzer %s: reading %s in group %s", self.instance, job_topic(self.site), self.group_id)
        try:
            while not self._stopping.is_set():
                self._commit()
                free = self.concurrency - self._tracker.in_flight()
                # Paused rather than not polled: polling keeps this instance a live member of the group.
                if free <= 0:
                    consumer.pause(*consumer.assignment())
                elif consumer.paused():
                    consumer.resume(*consumer.paused())
                batches = consumer.poll(timeout_ms=200, max_records=max(free, 1))
                for tp, records in batches.items():
                    for record in records:
                        self._dispatch(tp, record)
        finally:
            self._shut_down(threads)
            follower.stop()
            follower.join(5)
        return 1 if self.error else 0

    # -- records ----------------------------------------------------------------------------

    def _dispatch(self, tp: TopicPartition, record) -> None:
        token = self._tracker.started(tp, record.offset)
        try:
            announcement = json.loads(record.value)
            tasks = [t for t in announcement.get("tasks") or [] if t.get("worker") == self.worker]
            job_id = str(announcement["jobID"])
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("ignoring an unreadable job announcement at %s:%s", tp.partition, record.offset)
            tasks = []
        if not tasks:
            self._tracker.finished(tp, record.offset, token)
            return
        self._work.put(((tp, record.offset, token), job_id, announcement, tasks))

    def _analyse_records(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            record, job_id, announcement, tasks = item
            if self._stopping.is_set():
                continue  # never started: left uncommitted, so it comes again after a restart
            try:
                for task in tasks:
                    self._analyse_until_done(record, job_id, str(task["id"]), announcement)
            except _Left:
                continue  # not claimed: the record stays uncommitted and comes again after a restart
            except NotAllowed as err:
                # The key is wrong or too weak: every job would fail alike. Stop, and commit nothing of it.
                log.error("the API refused the analyzer's key: %s", err)
                self.error = err
                self._stopping.set()
                continue
            except Exception:
                log.exception("job %s: unexpected error", job_id)
            self._finished.put(record)

    def _analyse_until_done(self, record: tuple, job_id: str, task_id: str, announcement: dict) -> None:
        """_analyse_task, again while the API is away (the client already backed off for retry_seconds)."""
        while True:
            try:
                return self._analyse_task(record, job_id, task_id, announcement)
            except ApiUnavailable as err:
                if self._stopping.is_set():
                    raise _Left() from None
                log.error("job %s: the API is unreachable (%s); trying again", job_id, err)

    def _analyse_task(self, record: tuple, job_id: str, task_id: str, announcement: dict) -> None:
        claim = _Claim(Job(data={}, task_id=task_id, announcement=announcement), record)
        with self._lock:
            # Registered before the first GET: an abort request read from now on reaches this analysis,
            # and one made earlier shows as the job's ABORT_REQUESTED flag.
            self._claims[task_id] = claim
        try:
            try:
                self._claim(claim, job_id, task_id)
            except _Skip as skip:
                self._count("skipped")
                log.info("job %s task %s skipped: %s", job_id, task_id, skip)
                return
            if self._stopping.is_set():
                claim.halt("failed", STOPPED_MESSAGE)  # claimed as the stop came: report it at once
            state, message, analyses = self._outcome(claim)
            if state is not None:
                self._report(claim, state, message, analyses)
        finally:
            self._forget(task_id)

    def _claim(self, claim: _Claim, job_id: str, task_id: str) -> None:
        try:
            claim.job.data = self.client.get_job(job_id)
        except ApiError as err:
            raise _Skip(f"job not readable ({err})") from None
        task = next((t for t in claim.job.data.get("tasks", []) if t.get("id") == task_id), None)
        if task is None:
            raise _Skip("the job has no such task")
        if task["state"] != "enqueued":
            raise _Skip(f"task already {task['state']}")
        if ABORT_FLAG in claim.job.data.get("flags", []) or claim.job.stop.is_set():
            self._report(claim, "cancelled", "Abort requested before the analysis started")
            raise _Skip("abort requested before the analysis started")
        if self._stopping.is_set():
            raise _Left()
        try:
            self.client.update_task(job_id, task_id, "executing", message=self.claim_message)
        except ApiError as err:
            raise _Skip(f"claim refused ({err})") from None
        history = self.client.job_history(job_id)
        move = next((h for h in history if h.get("taskID") == task_id and h.get("toState") == "executing"), None)
        if move is None or move.get("message") != self.claim_message:
            raise _Skip(f"claimed by another analyzer ({move and move.get('message')})")
        claim.claimed = True
        self._count("claimed")
        log.info("job %s task %s: claimed", job_id, task_id)

    def _outcome(self, claim: _Claim) -> tuple[str | None, str | None, tuple]:
        job = claim.job
        try:
            result = self.analyzer.analyse(job) or Result()
            outcome = (result.state, result.message, result.analyses)
        except AnalysisFailed as err:
            outcome = ("failed", str(err) or "analysis failed", ())
        except Exception as err:
            log.exception("job %s: %s.analyse raised", job.id, type(self.analyzer).__name__)
            outcome = ("failed", f"{type(err).__name__}: {err}", ())
        if job.stop.is_set():
            return claim.stop_state, job.stop_reason, ()
        return outcome

    def _report(self, claim: _Claim, state: str, message: str | None, analyses=()) -> None:
        """The task's final report, made once whoever gets here first (analysis or stop)."""
        with claim.lock:
            if claim.reported:
                return
            claim.reported = True
        job = claim.job
        if message is None:
            message = f"{state} (analyzer {self.instance})"  # else the task would keep showing the claim
        try:
            self.client.update_task(job.id, job.task_id, state, message=message, analyses=list(analyses))
            self._count(state)
            log.info("job %s task %s: %s: %s", job.id, job.task_id, state, message)
        except ApiError as err:
            # Typically 409: the job went final meanwhile (timed out, aborted by the sweep).
            log.warning("job %s task %s: report %s refused: %s", job.id, job.task_id, state, err)
            self._count("refused")
        except ApiUnavailable as err:
            log.error(
                "job %s task %s: report %s not delivered (%s); it stays executing until the "
                "service's execution timeout",
                job.id,
                job.task_id,
                state,
                err,
            )
            self._count("undelivered")

    def _forget(self, task_id: str) -> None:
        with self._lock:
            self._claims.pop(task_id, None)

    # -- heartbeats and aborts ---------------------------------------------------------------

    def _running(self) -> list[_Claim]:
        with self._lock:
            return [c for c in self._claims.values() if c.claimed and not c.reported]

    def _heartbeats(self) -> None:
        while not self._stopping.wait(self.heartbeat_seconds):
            for claim in self._running():
                job = claim.job
                try:
                    # Retried for at most one interval: the next heartbeat is due by then.
                    self.client.update_task(job.id, job.task_id, "executing", retry_seconds=self.heartbeat_seconds)
                    self._count("heartbeats")
                except ApiError as err:
                    if not claim.reported:
                        # The task went final elsewhere (timed out, job aborted or failed): nothing to report.
                        claim.halt(None, f"the task is no longer executing: {err}")
                except ApiUnavailable as err:
                    log.warning("job %s task %s: heartbeat not delivered: %s", job.id, job.task_id, err)

    def _on_abort(self, job_id: str, reason: str | None) -> None:
        with self._lock:
            claims = [c for c in self._claims.values() if c.job.announcement.get("jobID") == job_id]
        for claim in claims:
            log.info("job %s: abort requested, stopping its analysis", job_id)
            claim.halt("cancelled", f"Abort requested: {reason}" if reason else "Abort requested")

    # -- offsets and shutdown -----------------------------------------------------------------

    def _commit(self, partitions=None) -> None:
        while True:
            try:
                self._tracker.finished(*self._finished.get_nowait())
            except queue.Empty:
                break
        consumer = self._consumer
        assert consumer is not None  # set by run() before anything commits
        assigned = consumer.assignment()
        offsets = self._tracker.to_commit([tp for tp in partitions or assigned if tp in assigned])
        if not offsets:
            return
        try:
            consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()})
            self._tracker.committed(offsets)
        except Exception as err:  # a rebalance under way: whoever gets the partition starts from the last commit
            log.warning("offset commit failed: %s", err)

    def _shut_down(self, threads: list[threading.Thread]) -> None:
        """Stop every analysis, report each claimed task, commit what is final, leave the group."""
        self._stopping.set()
        for claim in self._running():
            claim.halt("failed", STOPPED_MESSAGE)
        for _ in threads:
            self._work.put(None)
        deadline = time.monotonic() + self.stop_grace_seconds
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        # An analysis that ignores job.stop past the grace period is reported for it: no task stays claimed.
        for claim in self._running():
            self._report(claim, "failed", STOPPED_MESSAGE)
            self._finished.put(claim.record)
        try:
            self._commit()
        finally:
            _close_without_leaving(self._consumer)


def _close_without_leaving(consumer) -> None:
    """Close the consumer but let the group notice the departure by the session timeout (6 s).

    A LeaveGroup would hand the partitions over at once, but Tansu, the dev stack's broker,
    wedges a group for good when two members leave at the same moment (every later member
    joins and is never given partitions), which is what stopping a worker's analyzers
    together does. Members that simply go silent expire cleanly on Tansu and on Kafka alike.
    kafka-python (3.0) has no setting for it: its coordinator's leave step is skipped here.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is not None and hasattr(coordinator, "maybe_leave_group"):
        coordinator.maybe_leave_group = lambda *args, **kwargs: None
    consumer.close()


class _Rebalance(ConsumerRebalanceListener):
    """Commit what is final before partitions move; forget their unfinished records."""

    def __init__(self, runner: Runner):
        self.runner = runner

    def on_partitions_revoked(self, revoked):
        self.runner._commit(list(revoked))
        self.runner._tracker.forget(revoked)

    def on_partitions_assigned(self, assigned):
        log.info("analyzer %s: partitions %s", self.runner.instance, sorted(tp.partition for tp in assigned))
        self.runner.joined.set()


def serve(runner: Runner) -> int:
    """Run in the main thread until SIGTERM or SIGINT, which stop it cleanly."""

    def handle(signum, _frame):
        log.info("analyzer %s: %s, stopping", runner.instance, signal.Signals(signum).name)
        runner.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handle)
    return runner.run()
