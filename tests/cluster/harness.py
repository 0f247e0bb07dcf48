"""Several hosts on one machine: Linux network namespaces joined by veth pairs on a bridge (SPEC 13, 14).

One namespace per host, each with one address of 10.213.0.0/24 on its `eth` end of a veth pair whose
other end is a port of the bridge in a "switch" namespace of its own, so nothing is added to the
machine's own network. The servers (PostgreSQL, Redis, the Kafka-protocol broker) run on the "servers"
host; each API host runs gunicorn as the Procfile does, each worker host a Celery worker with its relay
and a beat. The test itself works from the "client" host (`Cluster.inside("client")`: the calling
thread enters the namespace, so every socket it and its new threads open is that host's).

Cutting a host off unplugs its port from the bridge: its packets go nowhere and nobody is told, as
when a cable or a switch port fails; its TCP connections live on and carry on once it is plugged back.
Every process is a child of this one, in a session of its own, and `close()` (also at exit) stops them
and removes the namespaces.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import queue
import socket as socket_module
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from app.dev import commands
from app.dev.processes import Child

ROOT = Path(__file__).resolve().parents[2]
SUBNET = "10.213.0"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _ip(*arguments: str) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True, text=True)


def _enter(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    processes: list[Child] = field(default_factory=list)

    @property
    def port(self) -> str:
        """Its port on the switch."""
        return f"sw-{self.name}"[:15]


class Cluster:
    def __init__(self, hosts: list[str], directory: Path | None = None):
        self.prefix = f"sdb{os.getpid() % 100000}"
        self.switch = f"{self.prefix}-switch"
        self.directory = directory or Path(tempfile.mkdtemp(prefix="sampledb-cluster-"))
        self.hosts = {
            name: Host(name, f"{self.prefix}-{name}", f"{SUBNET}.{number}")
            for number, name in enumerate(hosts, start=10)
        }
        self._built: list[str] = []
        atexit.register(self.close)

    def build(self) -> Cluster:
        _ip("netns", "add", self.switch)
        self._built.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for host in self.hosts.values():
            _ip("netns", "add", host.namespace)
            self._built.append(host.namespace)
            _ip(
                "link", "add", "eth", "netns", host.namespace, "type", "veth",
                "peer", "name", host.port, "netns", self.switch,
            )  # fmt: skip
            _ip("-n", self.switch, "link", "set", host.port, "master", "br0", "up")
            _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth")
            _ip("-n", host.namespace, "link", "set", "eth", "up")
            _ip("-n", host.namespace, "link", "set", "lo", "up")
        return self

    def address(self, host: str) -> str:
        return self.hosts[host].address

    @contextlib.contextmanager
    def inside(self, host: str) -> Iterator[None]:
        """The calling thread works from `host`'s network for the block (and the processes it starts, for good)."""
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            _enter(f"/run/netns/{self.hosts[host].namespace}")
            yield
        finally:
            if _libc.setns(original, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "could not return to this process's own network")
            os.close(original)

    def start(self, host: str, name: str, argv: list[str], env: dict) -> Child:
        """Start a project command on `host`, its log in the cluster's directory."""
        child = Child(f"{name}@{host}", self.directory / f"{host}-{name}.log")
        with self.inside(host):
            child.start(argv, env=env, cwd=ROOT)
        self.hosts[host].processes.append(child)
        return child

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) used so far by each process this cluster started, with everything it
        started (pool processes, gunicorn workers, PostgreSQL's backends, those that ended included), by
        "<host>/<name>"."""
        used = {}
        for host in self.hosts.values():
            for child in host.processes:
                if child.pid is None or not psutil.pid_exists(child.pid):
                    continue
                try:
                    root = psutil.Process(child.pid)
                    tree = [root, *root.children(recursive=True)]
                except psutil.NoSuchProcess:
                    continue
                total = 0.0
                for process in tree:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        times = process.cpu_times()
                        total += times.user + times.system + times.children_user + times.children_system
                used[f"{host.name}/{child.name.split('@')[0]}"] = total
        return used

    def cut(self, host: str) -> None:
        """Unplug `host` from the switch: what it sends is lost, nothing tells it."""
        _ip("-n", self.switch, "link", "set", self.hosts[host].port, "nomaster")

    def plug(self, host: str) -> None:
        _ip("-n", self.switch, "link", "set", self.hosts[host].port, "master", "br0")

    def kill(self, host: str) -> None:
        """SIGKILL every process of `host`: the host dies."""
        for child in self.hosts[host].processes:
            child.kill()

    def close(self) -> None:
        for host in reversed(self.hosts.values()):  # the servers (the first host) last
            for child in reversed(host.processes):
                with contextlib.suppress(Exception):
                    child.stop(timeout=10)
            host.processes.clear()
        for namespace in reversed(self._built):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        self._built.clear()


def gunicorn(address: str, port: int = 8000) -> list[str]:
    return commands.gunicorn("wsgi:app", f"{address}:{port}", "--workers", "2")


def worker(name: str) -> list[str]:
    return commands.celery_worker("--pool", "prefork", "-E", "-l", "info", "-n", f"sampledb-{name}@%h")


def beat(directory: Path, host: str) -> list[str]:
    return commands.celery("beat", "-l", "info", "--schedule", str(directory / f"{host}-celerybeat-schedule"))


class SlowLink:
    """A TCP forwarder that delays what crosses it, for a link with latency and loss (the kernel here has no
    netem). While `slow`, each chunk waits `delay` ± `jitter` seconds in each direction, in order; a share
    `loss` of them waits a further `retransmit` seconds, as a segment TCP lost and sent again does (TCP turns
    loss into delay; no byte is dropped). It listens on `listen` (an address of the host it runs on) and
    forwards to `target`; start it inside the host whose network it belongs to."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], *, delay: float, jitter: float,
                 loss: float, retransmit: float = 0.2, seed: int = 0):  # fmt: skip
        import random

        self.target, self.delay, self.jitter, self.loss, self.retransmit = target, delay, jitter, loss, retransmit
        self.random = random.Random(seed)
        self.server = socket_module.create_server(listen)
        self.slow = False  # until a test turns it on: a plain forwarder
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket_module.create_connection(self.target)
            for source, sink in ((client, upstream), (upstream, client)):
                line: queue.Queue = queue.Queue()
                threading.Thread(target=self._read, args=(source, line), daemon=True).start()
                threading.Thread(target=self._write, args=(line, sink), daemon=True).start()

    def _read(self, source, line: queue.Queue) -> None:
        while True:
            try:
                chunk = source.recv(65536)
            except OSError:
                chunk = b""
            wait = 0.0
            if self.slow:
                wait = max(0.0, self.random.gauss(self.delay, self.jitter / 2))
                if self.random.random() < self.loss:
                    wait += self.retransmit
            line.put((time.monotonic() + wait, chunk))
            if not chunk:
                return

    def _write(self, line: queue.Queue, sink) -> None:
        due_before = 0.0
        while True:
            due, chunk = line.get()
            due = max(due, due_before)  # in order, as TCP delivers
            due_before = due
            time.sleep(max(0.0, due - time.monotonic()))
            if not chunk:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket_module.SHUT_WR)
                return
            try:
                sink.sendall(chunk)
            except OSError:
                return

    def close(self) -> None:
        self._closed = True
        self.server.close()
