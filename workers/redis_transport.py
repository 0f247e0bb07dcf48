"""kombu's Redis transport, with a message taken from its queue and recorded as unacknowledged in one step.

kombu's Redis transport takes a message with BRPOP and only then, in a second round trip, writes it to the
`unacked` hash that the visibility timeout restores from. A worker whose link to Redis fails while a BRPOP
reply is on its way (a cut cable, a host cut off, a Redis failover) has the message removed from the queue
and never recorded: it is gone (celery/kombu#305 and the like; the cluster test's worker host cut off
mid-burst lost one submission in three runs). Here a Lua script pops the message and records it in
`unacked` and `unacked_index` atomically, in the format kombu's own QoS.append writes, so a reply that never
arrives leaves the message to the visibility timeout like any other unacknowledged one: at least once.

A script cannot block, so a worker that found every queue empty waits with `BLMOVE q q RIGHT RIGHT` (moving
a list's tail onto its own tail leaves the list as it was) on one of its queues in turn, for at most
WAIT_SECONDS, and pops again: a message on the queue it waits on is taken at once, one on another queue within
WAIT_SECONDS. A busy worker never waits. Queues consumed without acknowledgements (none of the service's)
keep kombu's BRPOP.

Installed for redis://, rediss:// and sentinel:// by `install()` (workers.celery_app calls it): kombu
resolves a URL's scheme through kombu.transport.TRANSPORT_ALIASES.
"""

from __future__ import annotations

from queue import Empty
from time import monotonic

from kombu.transport import TRANSPORT_ALIASES, redis, virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis import exceptions as redis_errors

# How long an idle worker waits on one queue before it looks at all of them again.
WAIT_SECONDS = 0.05

# KEYS: the queues' lists in the order BRPOP would try them, then the unacked hash and the unacked index;
# ARGV[1]: how many of KEYS are queues. The unacked entry is kombu's QoS.append format:
# [message, exchange, routing_key] as JSON, under the message's delivery tag, scored with Redis' clock.
# It returns the queue's key, the message, and 1 if it recorded it (0: no delivery tag to record it under).
POP_AND_RECORD = """
local queues = tonumber(ARGV[1])
for i = 1, queues do
    local item = redis.call('RPOP', KEYS[i])
    if item then
        local ok, message = pcall(cjson.decode, item)
        local properties = ok and type(message) == 'table' and message['properties']
        local tag = type(properties) == 'table' and properties['delivery_tag']
        local info = type(properties) == 'table' and properties['delivery_info']
        if type(tag) == 'string' and type(info) == 'table' then
            local now = redis.call('TIME')
            redis.call('ZADD', KEYS[queues + 2], tonumber(now[1]) + tonumber(now[2]) / 1000000, tag)
            redis.call('HSET', KEYS[queues + 1], tag, '[' .. item .. ',' .. cjson.encode(info['exchange'] or '')
                .. ',' .. cjson.encode(info['routing_key'] or '') .. ']')
            return {KEYS[i], item, 1}
        end
        return {KEYS[i], item, 0}
    end
end
return false
"""

_POP, _WAIT = "pop", "wait"


class QoS(redis.QoS):
    """kombu's Redis QoS, which does not write again what the pop recorded (one round trip per message)."""

    def append(self, message, delivery_tag):
        recorded = self.channel._recorded
        if delivery_tag in recorded:
            recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)  # this channel's own list of unacknowledged ones
        else:
            super().append(message, delivery_tag)


class Channel(redis.Channel):
    """kombu's Redis Channel with its BRPOP replaced by POP_AND_RECORD (and a BLMOVE wait when idle)."""

    _outstanding: str | None = None  # _POP or _WAIT while its reply is awaited; None: kombu's own BRPOP
    _found_nothing = False
    _wait_turn = 0
    _pop_sha: str | None = None
    QoS = QoS

    def __init__(self, *args, **kwargs):
        self._recorded: set[str] = set()  # delivery tags the pop recorded in `unacked`, until QoS.append
        self._no_ack_queues: set[str] = set()  # consumed without acknowledgements: kombu's BRPOP for them
        super().__init__(*args, **kwargs)

    def basic_consume(self, queue, no_ack, callback, consumer_tag, **kwargs):
        if no_ack:
            self._no_ack_queues.add(queue)
        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def _recorded_pop(self) -> bool:
        return self.ack_emulation and self._no_ack_queues.isdisjoint(self.active_queues)

    def _prefixed(self, key: str) -> str:
        return self.global_keyprefix + key if self.global_keyprefix else key

    def _script_sha(self) -> str:
        if self._pop_sha is None:
            with self.conn_or_acquire() as client:
                self._pop_sha = client.script_load(POP_AND_RECORD)
        return self._pop_sha

    def _brpop_start(self, timeout=None):
        if not self._recorded_pop():
            self._outstanding = None
            return super()._brpop_start(timeout)
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        if self._found_nothing:
            queue = self._prefixed(queues[self._wait_turn % len(queues)])
            self._wait_turn += 1
            command = ["BLMOVE", queue, queue, "RIGHT", "RIGHT", WAIT_SECONDS]
            self._outstanding = _WAIT
        else:
            keys = [self._prefixed(self._q_for_pri(q, pri)) for pri in self.priority_steps for q in queues]
            keys += [self._prefixed(self.unacked_key), self._prefixed(self.unacked_index_key)]
            command = ["EVALSHA", self._script_sha(), len(keys), *keys, len(keys) - 2]
            self._outstanding = _POP
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        self.client.connection.send_command(*command)

    def _brpop_read(self, **options):
        outstanding, self._outstanding = self._outstanding, None
        if outstanding is None:
            return super()._brpop_read(**options)
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "EVALSHA", **options)
            except self.connection_errors:
                self.client.connection.disconnect()  # the next poll reconnects, as kombu's BRPOP does
                raise
            except redis_errors.NoScriptError:
                self._pop_sha = None  # Redis restarted or failed over: the script is loaded again
                raise Empty() from None
            if outstanding == _WAIT:
                self._found_nothing = False
                raise Empty()
            if not reply:
                self._found_nothing = True
                raise Empty()
            key, item, recorded = reply
            dest = bytes_to_str(key)[len(self.global_keyprefix or "") :].rsplit(self.sep, 1)[0]
            message = loads(bytes_to_str(item))
            if recorded:
                self._recorded.add(message["properties"]["delivery_tag"])
            self._queue_cycle.rotate(dest)
            self.connection._deliver(message, dest)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()


class SentinelChannel(Channel, redis.SentinelChannel):
    """The same, on a master found through Redis Sentinel."""


class Transport(redis.Transport):
    Channel = Channel


class SentinelTransport(redis.SentinelTransport):
    Channel = SentinelChannel


def install() -> None:
    """Make redis://, rediss:// and sentinel:// broker URLs use this transport in this process."""
    TRANSPORT_ALIASES.update(
        redis=f"{__name__}:Transport", rediss=f"{__name__}:Transport", sentinel=f"{__name__}:SentinelTransport"
    )
