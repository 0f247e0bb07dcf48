"""A RabbitMQ virtual host of a run's own (the tests, the benchmarks), made and removed with `rabbitmqctl`.

RabbitMQ has no embedded form: these runs use a given server, and its command-line tool must run
on the broker's host (it talks to the node with the Erlang cookie of the user running it).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from urllib.parse import quote, urlsplit, urlunsplit


def rabbitmqctl(*args: str) -> str:
    # Debian installs it in /usr/sbin, which is not on every user's PATH.
    tool = shutil.which("rabbitmqctl") or shutil.which("rabbitmqctl", path="/usr/sbin")
    if tool is None:
        raise RuntimeError("a RabbitMQ URL is given, and rabbitmqctl (RabbitMQ's own tool) is not installed here")
    return subprocess.run([tool, *args], capture_output=True, text=True, check=True, timeout=60).stdout


class RabbitVhost:
    """A virtual host named `<prefix>_<random>` on the RabbitMQ of `server_url`, for that URL's user; `url` is the
    server URL with this virtual host."""

    def __init__(self, server_url: str, prefix: str):
        parts = urlsplit(server_url)
        self.name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, parts.username or "guest", ".*", ".*", ".*")
        self.url = urlunsplit((parts.scheme, parts.netloc, "/" + quote(self.name, safe=""), "", ""))

    def delete(self) -> None:
        rabbitmqctl("delete_vhost", self.name)
