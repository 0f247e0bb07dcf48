"""`sampledb-jobs demo`: synthetic submissions through a running service, followed to Kafka."""

from __future__ import annotations

import collections
import json
import random
import statistics
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from analyzer.client import ApiUnavailable
from app.dev.kafka import TopicReader
from app.dev.synthetic import random_submission


class TopicFollower(threading.Thread):
    """Reads the job topic from its current end and notes when each job first arrives and how many times."""

    def __init__(self, bootstrap: str, topic: str, security: dict | None = None):
        super().__init__(daemon=True)
        self.seen: dict[str, float] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self.stop_event = threading.Event()
        # The topic is made now, so that no message of the run is missed by a late assignment.
        self.reader = TopicReader(
            bootstrap, topic, from_end=True, wait=5, create=True, client_id="sampledb-jobs-demo", security=security
        )

    def run(self) -> None:
        while not self.stop_event.is_set():
            for message in self.reader.poll(0.2):
                try:
                    job_id = json.loads(message.value)["jobID"]
                except (ValueError, KeyError, TypeError):
                    continue
                self.seen.setdefault(job_id, time.monotonic())
                self.counts[job_id] += 1
        self.reader.close()


def _demo_submission(rng: random.Random) -> tuple[str, dict]:
    payload = random_submission(rng, meta_data={"source": "sampledb-jobs demo"}, user_agent="sampledb-jobs-demo")
    return payload["submission"]["sample"]["id"], payload


def _post(api_url: str, key: str, sha256: str, payload: dict) -> tuple[str | None, float]:
    request = urllib.request.Request(
        f"{api_url}/sampledb/v2/sample/{sha256}/submission",
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Argus-API-Key": key},
    )
    sent = time.monotonic()
    for attempt in range(5):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())["data"]["jobID"], sent
        except urllib.error.HTTPError as err:
            if err.code < 500:
                raise click.ClickException(f"the API refused a submission: {err.code} {err.read()[:300]!r}") from None
        except OSError:
            pass
        time.sleep(0.2 * 2**attempt)
    return None, sent


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run(
    *,
    submissions: int,
    api_url: str,
    key: str,
    bootstrap: str,
    topic: str,
    concurrency: int,
    wait_seconds: float,
    seed: int | None,
    analyze: bool = False,
    site: str = "OSL",
    kafka_security: dict | None = None,
) -> int:
    console = Console()
    rng = random.Random(seed)
    simulation = None
    if analyze:
        from analyzer.simulate import Simulation

        simulation = Simulation(api_url, key, bootstrap, site, seed=seed, kafka_security=kafka_security)
    follower = TopicFollower(bootstrap, topic, kafka_security)
    follower.start()
    sent_at: dict[str, float] = {}
    failures = 0
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    started = time.monotonic()
    with Progress(*columns, console=console) as progress:
        submitting = progress.add_task("submissions", total=submissions)
        announced = progress.add_task("on Kafka", total=submissions)
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            futures = [pool.submit(_post, api_url, key, *_demo_submission(rng)) for _ in range(submissions)]
            for future in futures:
                job_id, sent = future.result()
                if job_id is None:
                    failures += 1
                else:
                    sent_at[job_id] = sent
                    if simulation:
                        simulation.submitted(job_id)
                progress.advance(submitting)
                progress.update(announced, completed=sum(1 for j in sent_at if j in follower.seen))
        submit_seconds = time.monotonic() - started
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            done = sum(1 for j in sent_at if j in follower.seen)
            progress.update(announced, completed=done)
            if done == len(sent_at):
                break
            time.sleep(0.2)
    total_seconds = time.monotonic() - started
    follower.stop_event.set()
    follower.join(5)

    created = _count_jobs(api_url, key, list(sent_at))
    latencies = [(follower.seen[j] - sent_at[j]) * 1000 for j in sent_at if j in follower.seen]
    table = Table(title="sampledb-jobs demo")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("submissions sent", str(submissions))
    table.add_row("submissions refused or failed", str(failures))
    table.add_row("jobs created (found over the API)", str(created))
    table.add_row(f"creation messages seen on {topic}", str(len(latencies)))
    table.add_row("submissions/s (intake)", f"{len(sent_at) / submit_seconds:.0f}")
    table.add_row("jobs/s announced (end to end)", f"{len(latencies) / total_seconds:.0f}")
    for q in (50, 95, 99):
        table.add_row(f"submission → Kafka p{q}", f"{_percentile(latencies, q):.0f} ms")
    analysed = True
    if simulation:
        with Progress(*columns, console=console) as progress:
            final = progress.add_task("jobs final", total=len(sent_at))
            try:
                rows, analysed = simulation.finish(
                    list(sent_at), wait_seconds, lambda n: progress.update(final, completed=n)
                )
            except ApiUnavailable as err:  # a line of the summary, like every other way the demo falls short
                rows, analysed = [("jobs followed to their end", f"stopped: {err}")], False
        for row in rows:
            table.add_row(*row)
    console.print(table)
    return 0 if created == submissions and len(latencies) == submissions and analysed else 1


def _count_jobs(api_url: str, key: str, job_ids: list[str]) -> int:
    """How many of these jobs the API knows (fetched one by one, as an analyst would)."""

    def exists(job_id: str) -> bool:
        request = urllib.request.Request(f"{api_url}/sampledb/v2/job/{job_id}", headers={"Argus-API-Key": key})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status == 200
        except urllib.error.HTTPError:
            return False

    with ThreadPoolExecutor(max_workers=8) as pool:
        return sum(pool.map(exists, job_ids))
