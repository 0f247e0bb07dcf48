"""Kafka for an analyzer: the job topic in a consumer group, the abort topic read by every instance."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

log = logging.getLogger(__name__)

# Group membership timings. Kafka's defaults (10 s session, 3 s heartbeat, 300 s rebalance
# timeout) make a join or rebalance wait several heartbeat rounds: on Tansu, the Kafka-protocol
# broker of the dev stack, that is 5 s and more per join, and a dead member holds its
# partitions for the whole session timeout. Heartbeats come from kafka-python's background
# thread and the runner polls continuously (pausing its partitions while busy), so short
# values are safe: a member is declared dead after 6 s, rebalances finish within a second or two.
GROUP_TIMINGS = dict(session_timeout_ms=6000, heartbeat_interval_ms=500, max_poll_interval_ms=30000)


def job_topic(site: str) -> str:
    return f"Sample.Analysis.Job.{site}"


def abort_topic(site: str) -> str:
    return f"Sample.Analysis.Job.Abort.{site}"


def group_consumer(
    bootstrap: str, topic: str, group_id: str, listener, client_id: str, security: dict | None = None
) -> KafkaConsumer:
    """The job topic in the worker's consumer group; offsets committed by hand, after the final report.
    `security`: kafka-python's TLS and SASL arguments, as the service's settings give them."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        **(security or {}),
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        # A new group starts at the beginning: jobs announced before the first analyzer ran are analysed too.
        auto_offset_reset="earliest",
        **GROUP_TIMINGS,
    )
    consumer.subscribe([topic], listener=listener)
    return consumer


class OffsetTracker:
    """Per partition, the offset that is safe to commit: the lowest record not yet finished.

    Records run concurrently and finish in any order; committing past an unfinished one would
    lose it on a restart, so a partition's commit stops at its lowest unfinished record.
    """

    def __init__(self):
        # Per partition, the unfinished records' offsets and the token each was started with: a record
        # redelivered after its partition came back is a new start, which a late finish of the old one
        # must not end.
        self._pending: dict[TopicPartition, dict[int, object]] = {}
        self._next: dict[TopicPartition, int] = {}  # one past the highest record seen
        self._committed: dict[TopicPartition, int] = {}

    def started(self, tp: TopicPartition, offset: int) -> object:
        token = object()
        self._pending.setdefault(tp, {})[offset] = token
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)
        return token

    def finished(self, tp: TopicPartition, offset: int, token: object) -> None:
        pending = self._pending.get(tp)
        if pending is not None and pending.get(offset) is token:
            del pending[offset]

    def in_flight(self) -> int:
        return sum(len(p) for p in self._pending.values())

    def to_commit(self, partitions=None) -> dict[TopicPartition, int]:
        """Partitions whose safe offset moved since the last commit, with that offset."""
        result = {}
        for tp in list(self._next) if partitions is None else partitions:
            if tp not in self._next:
                continue
            pending = self._pending.get(tp)
            offset = min(pending) if pending else self._next[tp]
            if offset > self._committed.get(tp, -1):
                result[tp] = offset
        return result

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)

    def forget(self, partitions) -> None:
        """The group took these partitions away: whoever gets them next starts from the last commit."""
        for tp in partitions:
            self._pending.pop(tp, None)
            self._next.pop(tp, None)
            self._committed.pop(tp, None)


class AbortFollower(threading.Thread):
    """Reads the abort topic outside any group (every analyzer instance must see every abort
    request, whatever partitions of the job topic it holds), from its end, and calls
    `on_abort(job_id, reason)` for each request."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        on_abort: Callable[[str, str | None], None],
        client_id: str,
        security: dict | None = None,
    ):
        super().__init__(name="abort-follower", daemon=True)
        self.on_abort = on_abort
        self.stop_event = threading.Event()
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap.split(","),
            group_id=None,
            client_id=client_id,
            enable_auto_commit=False,
            fetch_max_wait_ms=200,
            **(security or {}),
        )
        partitions = _partitions(self.consumer, bootstrap, topic, security)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        self.consumer.assign(assigned)
        self.consumer.seek_to_end(*assigned)
        for tp in assigned:
            # Resolve the end now: an abort requested after start-up is never missed by a late lookup.
            self.consumer.position(tp)

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                for records in self.consumer.poll(timeout_ms=200).values():
                    for record in records:
                        try:
                            request = json.loads(record.value)
                            job_id, reason = str(request["jobID"]), request.get("reason")
                        except (ValueError, TypeError, KeyError):
                            log.warning(
                                "ignoring an unreadable abort request at %s:%s", record.partition, record.offset
                            )
                            continue
                        self.on_abort(job_id, reason)
        finally:
            self.consumer.close()

    def stop(self) -> None:
        self.stop_event.set()


def _partitions(consumer: KafkaConsumer, bootstrap: str, topic: str, security: dict | None) -> set[int]:
    """The topic's partitions, creating the topic if it does not exist yet (no abort requested so far)."""
    partitions = consumer.partitions_for_topic(topic)
    if partitions:
        return partitions
    # A consumer's metadata request never creates a topic; a producer's does (auto-creation).
    producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), max_block_ms=30000, **(security or {}))
    try:
        return producer.partitions_for(topic)
    finally:
        producer.close()
