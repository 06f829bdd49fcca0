"""``GET /openapi.json`` against a live worker: schemathesis generates requests for every
operation from the document and fails on any 5xx, undocumented status code, wrong content
type, answer that breaks its schema, or schema-violating request that is accepted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.fixtures.kafka import KafkaCluster, produce
from tests.fixtures.procs import SERVICE, ProcessFactory, wait_for
from tests.integration.test_preorders import LOC, order, stock, worker_env

pytestmark = pytest.mark.e2e

CHECKS = ",".join((
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_schema_conformance", "negative_data_rejection",
))


def test_every_endpoint_keeps_to_the_openapi_document(
    kafka: KafkaCluster, processes: ProcessFactory, tmp_path: Path
) -> None:
    prefix = f"oas-{uuid.uuid4().hex[:6]}"
    worker = processes.start("worker", processes.env(worker_env(kafka, prefix)))
    worker.wait_ready(90)
    produce(kafka.bootstrap, f"{prefix}-inventory-changes", [stock("OAS-1", 5)])
    wait_for(lambda: worker.get(f"/inventory/OAS-1/{LOC}")[0] == 200, 30, 0.2, "stock applied")
    status, placed = worker.post("/pre-orders", order("OAS-O1", "OAS-1"))
    assert status == 200, placed

    status, document = worker.get("/openapi.json", headers={})
    assert status == 200 and document["openapi"].startswith("3.")
    assert {"/pre-orders", "/atp/{sku}/{location}", "/admin/release", "/check-atp"} <= set(document["paths"])

    cli = shutil.which("schemathesis", path=os.path.dirname(sys.executable))
    assert cli, "schemathesis is installed with the dev extra"
    run = subprocess.run(
        [cli, "run", f"{worker.url}/openapi.json", "--checks", CHECKS,
         "--header", f"X-API-Key: {SERVICE['X-API-Key']}", "--max-examples", "15",
         "--seed", "20261204", "--request-timeout", "10", "--no-color",
         "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    assert " generated, " in out, out[-2000:]
    assert SERVICE["X-API-Key"] not in out  # schemathesis filters it; so do we in the log
    assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
