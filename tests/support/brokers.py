"""Celery's broker as the tests see it: Redis lists, or the quorum queues of a RabbitMQ virtual host.

`SAMPLEDB_CELERY_BROKER_URL=amqp://user:password@host:port/` in the test environment runs the
Celery tests on that RabbitMQ: the session makes a virtual host of its own there (app.dev.rabbitmq)
and deletes it at the end. Without it Celery's broker is the session's Redis.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import redis

from app.dev.rabbitmq import RabbitVhost, rabbitmqctl
from app.task_names import QueueNames

__all__ = ["BrokerQueues", "RabbitVhost", "is_amqp"]

# kombu's Redis transport keeps messages of priority 3, 6 and 9 in lists of their own.
_REDIS_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def is_amqp(url: str) -> bool:
    return url.startswith(("amqp://", "amqps://", "pyamqp://"))


# RabbitMQ's counts of unacknowledged messages (rabbitmqctl list_queues) are its statistics, refreshed every
# 5 s (collect_statistics_interval); the ready counts come from a passive queue declaration, which is exact.
RABBITMQ_STATISTICS_SECONDS = 5.5
# Celery's native delayed delivery keeps a countdown's message in one of these until it is due.
_DELAYED_QUEUES = tuple(f"celery_delayed_{level}" for level in range(28))


class BrokerQueues:
    """Counts of the messages in Celery's broker: waiting in a queue, and taken but not acknowledged.

    `settle_seconds`: how long the broker must look idle before it is (RabbitMQ's unacknowledged counts may
    be that old)."""

    def __init__(self, broker_url: str):
        self.url = broker_url
        self.amqp = is_amqp(broker_url)
        self.settle_seconds = RABBITMQ_STATISTICS_SECONDS if self.amqp else 0.0
        self._redis = None if self.amqp else redis.Redis.from_url(broker_url)
        self._connection = None

    def _ready(self) -> int:
        import amqp.exceptions
        import kombu

        if self._connection is None:
            self._connection = kombu.Connection(self.url, connect_timeout=5)
        total, channel = 0, self._connection.channel()
        for queue in (*QueueNames.all(), *_DELAYED_QUEUES):
            try:
                total += channel.queue_declare(queue=queue, passive=True).message_count
            except amqp.exceptions.NotFound:  # not declared (yet): nothing in it; RabbitMQ closed the channel
                channel = self._connection.channel()
        channel.close()
        return total

    def counts(self) -> tuple[int, int]:
        """(waiting, unacknowledged) over every queue: the service's, and on RabbitMQ Celery's delayed-delivery
        queues too (a countdown task waits there, where on Redis the worker holds it unacknowledged)."""
        if self._redis is not None:
            keys = [name + suffix for name in QueueNames.all() for suffix in _REDIS_PRIORITY_SUFFIXES]
            return sum(self._redis.llen(key) for key in keys), self._redis.hlen("unacked")
        return self._ready(), self.unacked()

    def unacked(self) -> int:
        if self._redis is not None:
            return self._redis.hlen("unacked")
        vhost = urlsplit(self.url).path.lstrip("/") or "/"
        rows = rabbitmqctl("list_queues", "-p", vhost, "-q", "--no-table-headers", "messages_unacknowledged")
        return sum(int(line) for line in rows.split() if line.strip())

    def idle(self) -> bool:
        """No message waiting (any priority, or due later) and none taken but unacknowledged."""
        return self.counts() == (0, 0)

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
        if self._connection is not None:
            self._connection.release()
