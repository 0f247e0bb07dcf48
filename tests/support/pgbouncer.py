"""PgBouncer in transaction mode in front of the test session's PostgreSQL (Debian's `pgbouncer`).

With SAMPLEDB_DATABASE_POOLER=transaction in the test environment the session migrates its database
directly on the server, then starts a PgBouncer of its own (pool_mode = transaction, every database of
that server) and hands the tests and their workers its URL: every connection the service makes goes
through it. PgBouncer refuses to run as root; started by root it switches to `nobody`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import sqlalchemy as sa

from app.dev.processes import HOST
from app.dev.servers import Server, run_server

CONFIG = """\
[databases]
* = host={host} port={port}
[pgbouncer]
listen_addr = {listen}
listen_port = {listen_port}
unix_socket_dir =
pool_mode = transaction
auth_type = trust
auth_file = {auth_file}
max_client_conn = 2000
default_pool_size = 40
server_reset_query =
{user}
"""


def start_pgbouncer(server_url: str, directory: Path) -> Server:
    """A PgBouncer whose URL is server_url's with its own host and port (the same user and databases)."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.access(binary, os.X_OK):
        raise RuntimeError("SAMPLEDB_DATABASE_POOLER=transaction: the tests need pgbouncer (apt-get install pgbouncer)")
    server = sa.make_url(server_url)
    directory.mkdir(parents=True, exist_ok=True)
    auth_file = directory / "userlist.txt"
    auth_file.write_text(f'"{server.username or "postgres"}" ""\n')
    os.chmod(directory, 0o755)
    os.chmod(auth_file, 0o644)

    def argv(port: int) -> list[str]:
        config = directory / f"pgbouncer-{port}.ini"
        config.write_text(
            CONFIG.format(
                host=server.host or HOST,
                port=server.port or 5432,
                listen=HOST,
                listen_port=port,
                auth_file=auth_file,
                user="user = nobody" if os.geteuid() == 0 else "",
            )
        )
        os.chmod(config, 0o644)
        return [binary, str(config)]

    def probe(port: int, left: float) -> None:
        engine = sa.create_engine(
            server.set(host=HOST, port=port), poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 2}
        )
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        finally:
            engine.dispose()

    return run_server(
        "pgbouncer",
        argv,
        None,
        directory / "pgbouncer.log",
        probe,
        lambda port: server.set(host=HOST, port=port).render_as_string(hide_password=False),
    )
