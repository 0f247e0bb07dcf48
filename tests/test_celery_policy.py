"""§11.2 through a real Celery worker: rules decide the tasks and options the Kafka creation message carries."""

from __future__ import annotations

import json

import pytest

from app.intake.ingest import job_id_for
from celeryconfig import TaskNames
from tests.support.payloads import submission_payload
from tests.test_api_analysis_workers import worker_body
from tests.test_celery_intake import JOB_TOPIC, records_of

pytestmark = pytest.mark.celery

OFFLINE = {"key": "meta.sampledb.allowInternetAccess", "value": "false"}
ALL_DEFAULT = [
    "document-analyzer",
    "sandbox-android",
    "sandbox-linux",
    "sandbox-macos",
    "sandbox-windows",
    "static-analyzer",
    "document-sandbox",
]


def test_rules_reach_the_creation_message(worker, live_api, make_key, task_sender, wait_idle, kafka_broker):
    analyzer = make_key("ANALYZER", customer="acme", all_customers=True)
    make_key("VIEWER", customer="initech")  # the customers the rules name exist
    live_api.post(
        "/worker", 201, headers=analyzer, json=worker_body("document-sandbox", accepts={"superType": ["document"]})
    )
    live_api.put(
        "/policy/default",
        headers=analyzer,
        json={
            "workers": [w for w in ALL_DEFAULT if w != "document-sandbox"],
            "options": [{"key": "timeout", "value": "300"}],
        },
    )
    for rule in (
        {
            "match": {"customer": {"customerOrGroup": ["acme"]}},
            "action": {"workers": {"add": ["document-sandbox"]}, "options": {"add": [OFFLINE]}},
        },
        {
            "match": {"submission": {"metaDataKey": ["source"], "metaDataValue": ["honeypot"]}},
            "action": {"workers": {"remove": ["sandbox-windows"]}, "options": {"remove": ["timeout"]}},
        },
        {
            "match": {"classification": {"type": ["ELF"]}},
            "action": {"workers": {"set": ["sandbox-linux"]}, "options": {"set": [{"key": "depth", "value": "2"}]}},
        },
        {"match": {"customer": {"customerOrGroup": ["initech"]}}, "action": {"workers": {"remove": ALL_DEFAULT}}},
    ):
        live_api.post("/policy/default/rule", 201, headers=analyzer, json={"name": "r", "description": "", **rule})

    acme_document = submission_payload("acme", super_type="document", file_type="DOCX")
    honeypot = submission_payload("globex")
    honeypot["submission"]["metaData"] = {"source": "honeypot"}
    elf = submission_payload("globex", platform="linux", file_type="ELF")
    initech = submission_payload("initech")
    expected = {
        "acme document": (
            acme_document,
            ["document-analyzer", "document-sandbox", "sandbox-windows", "static-analyzer"],
            [{"key": "timeout", "value": "300"}, OFFLINE],
        ),
        "honeypot metadata": (honeypot, ["static-analyzer"], []),
        "ELF": (elf, ["sandbox-linux"], [{"key": "depth", "value": "2"}]),
        "every worker removed": (initech, ["static-analyzer"], [{"key": "timeout", "value": "300"}]),
    }
    for payload, _, _ in expected.values():
        task_sender.send(TaskNames.INGEST_SUBMISSION, payload)
    wait_idle()

    keys = {str(job_id_for(p["submission"]["id"])): name for name, (p, _, _) in expected.items()}
    messages = {
        keys[r.key.decode()]: json.loads(r.value)
        for r in records_of(kafka_broker.url, JOB_TOPIC, set(keys), expect=len(keys))
    }
    for name, (_, tasks, options) in expected.items():
        assert sorted(t["worker"] for t in messages[name]["tasks"]) == tasks, name
        assert messages[name]["options"] == options, name
        assert messages[name]["reanalysis"] is False
        job = live_api.get(f"/job/{messages[name]['jobID']}", headers=analyzer)["data"]
        assert job["options"] == options and [t["worker"] for t in job["tasks"]] == tasks
