"""What the worker's Redis transport (workers.redis_transport: pop and record in one Lua script) costs against
kombu's own (BRPOP, then the unacked record in a second round trip): no-op Celery tasks through a `-c 2`
worker on one Redis, the two transports alternately in this one run, so the ratio compares like with like.

    python -m bench.redis_transport [--tasks 3000] [--rounds 2]

Writes bench/results/redis-transport-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path

from app.dev.redis import start_redis
from bench.ingest import CpuMeter, noop_rate, start_worker, wait_worker_ready
from bench.stack import bench_settings, settings_env

RESULTS = Path(__file__).parent / "results"
IDLE_SECONDS = 20


def idle_cpu(settings, env: dict, workdir: Path, redis_pid: int) -> dict:
    """Cores a `-c 2` no-op worker with nothing to do keeps busy (its main process polls) and Redis with it."""
    from bench import noop_worker

    worker = start_worker("bench.noop_worker", [noop_worker.NOOP_QUEUE], env, workdir / "celery-idle.log")
    try:
        wait_worker_ready(settings.celery_broker, worker)
        meter = CpuMeter({"worker main": (worker.pid, "self"), "redis": (redis_pid, "self")})
        meter.start()
        time.sleep(IDLE_SECONDS)
        return meter.stop()
    finally:
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sampledb-bench-transport-"))
    redis_server = start_redis(workdir / "redis")
    try:
        settings = bench_settings("postgresql+psycopg://unused@127.0.0.1:1/unused", SAMPLEDB_REDIS_URL=redis_server.url)
        pids = {"redis": redis_server.pid}
        envs = {
            name: {**settings_env(settings), "BENCH_KOMBU_REDIS_TRANSPORT": stock}
            for name, stock in (("kombu BRPOP", "1"), ("recorded pop", "0"))
        }
        figures: dict[str, list] = {name: [] for name in envs}
        for _ in range(args.rounds):
            for name, env in envs.items():
                figures[name].append(noop_rate(settings, env, workdir, args.tasks, pids))
        idle = {name: idle_cpu(settings, env, workdir, redis_server.pid) for name, env in envs.items()}
    finally:
        redis_server.stop()

    def per_task_ms(result: dict, role: str) -> float:
        return (
            sum(run["cpu_cores"].get(role, 0) * run["seconds"] for run in result["runs"])
            * 1000
            / sum(run["tasks"] for run in result["runs"])
        )

    summary = {}
    for name, results in figures.items():
        summary[name] = {
            "tasks_per_s": sorted(r["per_s"] for r in results),
            "worker_main_cpu_ms_per_task": round(sum(per_task_ms(r, "worker main") for r in results) / len(results), 3),
            "redis_cpu_ms_per_task": round(sum(per_task_ms(r, "redis") for r in results) / len(results), 3),
            "idle_worker_main_cores": idle[name].get("worker main", 0.0),
            "idle_redis_cores": idle[name].get("redis", 0.0),
        }
    ratio = {  # an idle figure of kombu's can be 0.00: its ratio is left out
        key: round(
            sum(summary["recorded pop"][key]) / sum(summary["kombu BRPOP"][key])
            if isinstance(summary["recorded pop"][key], list)
            else summary["recorded pop"][key] / summary["kombu BRPOP"][key],
            2,
        )
        for key in summary["kombu BRPOP"]
        if not key.startswith("idle_")
    }
    report = {
        "date": datetime.date.today().isoformat(),
        "tasks": args.tasks,
        "rounds": args.rounds,
        "idle_seconds": IDLE_SECONDS,
        "summary": summary,
        "recorded_over_kombu": ratio,
        "runs": figures,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"redis-transport-{report['date']}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"summary": summary, "recorded_over_kombu": ratio}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
