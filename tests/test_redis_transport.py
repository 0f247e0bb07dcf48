"""The worker's Redis transport (workers.redis_transport) on a real Redis: a message taken from its queue is
recorded as unacknowledged in the same step, so a worker whose link fails while the reply is on its way
loses nothing (the message comes back after the visibility timeout); kombu's own BRPOP loses it."""

from __future__ import annotations

import json
import time
import uuid

import kombu
import pytest
import redis

STOCK = "kombu.transport.redis:Transport"
RECORDED = "workers.redis_transport:Transport"
VISIBILITY_SECONDS = 1


def _consumer(url: str, transport: str, queues: list[kombu.Queue], received: list):
    connection = kombu.Connection(
        url, transport=transport, transport_options={"visibility_timeout": VISIBILITY_SECONDS}
    )
    channel = connection.channel()
    consumer = kombu.Consumer(channel, queues, callbacks=[lambda body, message: received.append((body, message))])
    consumer.consume()
    return connection, channel


def _queue(name: str) -> kombu.Queue:
    return kombu.Queue(name, kombu.Exchange(name, type="direct"), routing_key=name)


def _publish(url: str, queue: kombu.Queue, body: dict) -> None:
    with kombu.Connection(url) as connection:
        connection.Producer().publish(body, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue])


def _unacked_bodies(client: redis.Redis) -> list[dict]:
    import base64

    bodies = []
    for raw in client.hvals("unacked"):
        message = json.loads(raw)[0]
        bodies.append(json.loads(base64.b64decode(message["body"])) if message.get("properties", {}).get(
            "body_encoding") == "base64" else json.loads(message["body"]))  # fmt: skip
    return bodies


@pytest.mark.parametrize(("transport", "kept"), [(RECORDED, True), (STOCK, False)], ids=["recorded", "kombu BRPOP"])
def test_a_link_that_fails_while_the_popped_message_is_on_its_way_loses_nothing(redis_url, transport, kept):
    """Fault: the worker's connection is dropped right after its pop was sent, before the reply was read (a
    host cut off with the reply in flight). With the recorded pop the message is in `unacked` and comes back
    to its queue after the visibility timeout; kombu's BRPOP (the second case) leaves it nowhere."""
    queue = _queue(f"transport-test-{uuid.uuid4().hex[:8]}")
    marker = {"submission": str(uuid.uuid4())}
    client = redis.Redis.from_url(redis_url)
    received: list = []
    connection, channel = _consumer(redis_url, transport, [queue], received)
    try:
        _publish(redis_url, queue, marker)
        assert client.llen(queue.name) == 1
        channel.connection.cycle._register_BRPOP(channel)  # the pop goes out, as the worker's poll sends it ...
        time.sleep(0.2)  # ... Redis runs it ...
        channel.client.connection.disconnect()  # ... and the link fails before the reply is read
        channel._in_poll = None
        assert client.llen(queue.name) == 0, "the pop took the message off its queue"
        assert (marker in _unacked_bodies(client)) is kept

        time.sleep(VISIBILITY_SECONDS + 0.2)
        restorer, restoring = _consumer(redis_url, transport, [_queue(f"other-{uuid.uuid4().hex[:8]}")], [])
        restoring.qos.restore_visible(num=100, interval=1)
        restorer.release()
        assert client.llen(queue.name) == (1 if kept else 0)
        if kept:
            again: list = []
            consumer_connection, _ = _consumer(redis_url, transport, [queue], again)
            try:
                consumer_connection.drain_events(timeout=5)
                body, message = again[0]
                assert body == marker and message.delivery_info.get("redelivered")
                message.ack()
            finally:
                consumer_connection.release()
        assert received == []
    finally:
        connection.release()
        client.delete(queue.name)
        client.close()


def test_messages_on_every_queue_are_delivered_and_stay_unacknowledged_until_acked(redis_url):
    """The recorded pop in normal work: messages on two queues reach the consumer (the idle wait watches one
    queue at a time), each is in `unacked` until acknowledged, and nothing is left behind after."""
    first, second = _queue(f"transport-a-{uuid.uuid4().hex[:8]}"), _queue(f"transport-b-{uuid.uuid4().hex[:8]}")
    client = redis.Redis.from_url(redis_url)
    received: list = []
    connection, _channel = _consumer(redis_url, RECORDED, [first, second], received)
    try:
        bodies = [{"n": n} for n in range(6)]
        for n, body in enumerate(bodies):
            _publish(redis_url, (first, second)[n % 2], body)
        deadline = time.monotonic() + 10
        while len(received) < len(bodies) and time.monotonic() < deadline:
            try:
                connection.drain_events(timeout=1)
            except TimeoutError:
                continue
        assert sorted(body["n"] for body, _ in received) == list(range(6))
        assert all(body in _unacked_bodies(client) for body in bodies)
        for _, message in received:
            message.ack()
        assert not any(body in _unacked_bodies(client) for body in bodies)
        # Idle: the next message, on the queue not watched first, still arrives.
        _publish(redis_url, second, {"n": "late"})
        connection.drain_events(timeout=5)
        assert received[-1][0] == {"n": "late"}
        received[-1][1].ack()
    finally:
        connection.release()
        client.delete(first.name, second.name)
        client.close()
