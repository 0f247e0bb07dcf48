"""One Kafka producer per worker process, made after the fork on first use.

kafka-python's producer runs an I/O thread and holds sockets: it must never cross a
fork, so the prefork parent makes none and each child makes its own when it first
relays. Values are sent as bytes (UTF-8 JSON) with the job id as key; durability
comes from acks="all" and the idempotent producer. A producer that failed a send is
discarded: after a broker restart its producer id is unknown to the broker, and a
fresh producer is the reliable way back.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable

from kafka import KafkaProducer

log = logging.getLogger(__name__)

# Bounded waits: a relay must give up on a broker that is down, not hang the worker process.
BOOTSTRAP_TIMEOUT_MS = 3000
MAX_BLOCK_MS = 3000
REQUEST_TIMEOUT_MS = 5000
DELIVERY_TIMEOUT_MS = 10000
DEFAULT_MAX_REQUEST_SIZE = 1048576  # kafka-python's default

_lock = threading.Lock()
_producer: KafkaProducer | None = None
_config: tuple | None = None  # (bootstrap servers, max request size) the producer was made with
_owner_pid: int | None = None


def producer(
    bootstrap_servers: str,
    topics: Iterable[str] = (),
    *,
    max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
    security: dict[str, str] | None = None,
) -> KafkaProducer:
    """This process's producer, made on first use (raises if the broker cannot be reached).

    `topics` are the topics it will send to: they are tracked from the start (see _track).
    `max_request_size`: a larger record is refused by send() (MessageSizeTooLargeError).
    `security`: TLS and SASL arguments (Settings.kafka_client_options).
    """
    global _producer, _config, _owner_pid
    with _lock:
        config = (bootstrap_servers, max_request_size, tuple(sorted((security or {}).items())))
        if _producer is not None and (_owner_pid != os.getpid() or _config != config):
            _forget()
        if _producer is None:
            _producer = KafkaProducer(
                bootstrap_servers=bootstrap_servers.split(","),
                client_id=f"sampledb-relay-{os.getpid()}",
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                key_serializer=None,
                value_serializer=None,
                bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
                max_block_ms=MAX_BLOCK_MS,
                request_timeout_ms=REQUEST_TIMEOUT_MS,
                delivery_timeout_ms=DELIVERY_TIMEOUT_MS,
                max_request_size=max_request_size,
                **(security or {}),
            )
            _config, _owner_pid = config, os.getpid()
            try:
                _track(_producer, topics)
            except Exception:
                _producer.close(timeout=0)
                _forget()
                raise
        return _producer


def _track(new_producer: KafkaProducer, topics: Iterable[str]) -> None:
    """Make the producer keep metadata for every topic it will use, and fetch it now.

    kafka-python 3.0.12 asks for metadata of the topics it tracks only and replaces all it
    knew with the answer; topics it learned at bootstrap are not tracked. So the first send
    to a topic created later (the first abort request) made it forget the other topics, and
    records already queued for them waited for a leader until they expired.
    """
    topics = tuple(topics)
    for topic in topics:
        new_producer._sender.add_topic(topic)
    for topic in topics:
        new_producer.partitions_for(topic)  # waits (max_block_ms) for the metadata; creates the topic


def discard_producer() -> None:
    """Drop a producer that failed; the next relay makes a fresh one."""
    global _producer
    with _lock:
        if _producer is not None and _owner_pid == os.getpid():
            try:
                _producer.close(timeout=0)
            except Exception:  # closing a broken producer may fail too; it is dropped either way
                log.debug("closing a failed Kafka producer", exc_info=True)
        _producer = None


def close_producer(timeout: float = 10) -> None:
    """Flush and close this process's producer (worker process shutdown)."""
    global _producer
    with _lock:
        if _producer is None or _owner_pid != os.getpid():
            _forget()
            return
        try:
            _producer.flush(timeout=timeout)
        except Exception:  # unsent records stay unsent in the outbox and are relayed later
            log.warning("Kafka producer did not flush within %ss", timeout, exc_info=True)
        finally:
            try:
                _producer.close(timeout=timeout)
            finally:
                _producer = None


def forget_inherited() -> None:
    """After a fork: never use (or close) a producer the parent made."""
    with _lock:
        _forget()


def _forget() -> None:
    global _producer, _config, _owner_pid
    _producer, _config, _owner_pid = None, None, None
