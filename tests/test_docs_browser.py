"""Swagger UI at /sampledb/v2/docs renders the job operations in a real headless Chromium, offline."""

from __future__ import annotations

import shutil
import subprocess
import threading

import pytest
from werkzeug.serving import make_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.committing,  # the server answers from threads of its own, on connections of their own
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium on this machine: the Swagger UI browser test did not "
        "run (CI installs Debian's chromium; `apt-get install chromium`)",
    ),
]


@pytest.fixture
def live_server(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_swagger_ui_renders_job_operations_without_network(live_server, tmp_path):
    # --dump-dom prints the page after its scripts ran; the closed-network flags keep Chromium from phoning out,
    # so the page can only render from the assets the service itself serves.
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            f"{live_server}/sampledb/v2/docs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = result.stdout
    assert "swagger-ui" in dom, result.stderr[-2000:]
    # Operations are rendered as opblocks with their method and path.
    assert 'class="opblock opblock-get' in dom
    for path in ("/sampledb/v2/job/search", "/sampledb/v2/job/{job_id}", "/sampledb/v2/job/{job_id}/task/{task_id}"):
        assert f'data-path="{path}"' in dom, path
    assert "opblock-delete" in dom and "opblock-put" in dom
