"""The operations console at ``/`` in a real browser (Debian's Chromium driven by
Playwright; never a downloaded browser) against a live worker with a seeded campaign."""

from __future__ import annotations

import os
import re
import shutil
import uuid

import pytest

from tests.fixtures.kafka import KafkaCluster, produce
from tests.fixtures.procs import ProcessFactory, wait_for
from tests.integration.test_preorders import LOC, order, ship, stock, worker_env

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_an_operator_runs_the_campaign_from_the_console(
    kafka: KafkaCluster, processes: ProcessFactory
) -> None:
    from playwright.sync_api import expect, sync_playwright

    prefix = f"con-{uuid.uuid4().hex[:6]}"
    env = worker_env(kafka, prefix, STREAM_APP_FLUSH_INTERVAL_SECONDS="1")
    worker = processes.start("worker", processes.env(env))
    worker.wait_ready(90)
    sku = "LAUNCH-1"
    produce(kafka.bootstrap, f"{prefix}-inventory-changes", [stock(sku, 3)])
    wait_for(lambda: worker.get(f"/inventory/{sku}/{LOC}")[0] == 200, 30, 0.2, "stock applied")
    tiers = ["STANDARD", "STANDARD", "STANDARD", "VIP", "STANDARD", "VIP"]
    for i, tier in enumerate(tiers):  # limit floor(1.05 × 3) = 3: the VIPs bump STANDARDs
        status, body = worker.post("/pre-orders", order(f"C-{i}", sku, tier))
        assert status == 200, body
    produce(kafka.bootstrap, f"{prefix}-pre-orders", [b"not json at all"])
    wait_for(lambda: worker.metrics().get(
        f'stream_app_dead_letters_total{{topic="{prefix}-pre-orders"}}', 0) >= 1, 30, 0.2, "dead letter")

    # what an SRE scrapes, each series cheap to produce
    metrics = wait_for(lambda: (lambda m: m if any(k.startswith("stream_app_fluent_calls_total{")
                                                    for k in m) else None)(worker.metrics()),
                       30, 0.5, "a Fluent call counted (no Fluent here: connection errors)")
    assert metrics['stream_app_http_requests_total{route="/pre-orders",status="200"}'] == 6
    assert metrics['stream_app_decisions_total{outcome="RESERVED",tier="VIP"}'] == 2
    assert metrics["stream_app_decision_seconds_count"] == 6
    assert any(k.startswith(f'stream_app_consumer_lag{{partition="0",topic="{prefix}-pre-orders"')
               for k in metrics), sorted(k for k in metrics if "lag" in k)
    assert metrics["process_cpu_seconds_total"] > 0 and metrics["process_resident_memory_bytes"] > 0

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(worker.url + "/")
        expect(page.locator("#health")).to_contain_text("ready", timeout=15_000)

        page.get_by_label("SKU").fill(sku)
        page.get_by_label("location").fill(LOC)
        page.get_by_role("button", name="Show campaign").click()
        campaign = page.locator("#campaign")
        expect(campaign).to_contain_text(f"ship date {ship(30)}", timeout=10_000)
        expect(campaign).to_contain_text("overbooking limit 3")
        expect(campaign).to_contain_text("held 3 units")
        vip = campaign.locator("tr", has_text="VIP")
        expect(vip).to_contain_text("2")  # both VIPs reserved
        standard = campaign.locator("tr", has_text="STANDARD")
        expect(standard.locator("td").nth(1)).to_have_text("1")  # one STANDARD still reserved
        expect(standard.locator("td").nth(2)).to_have_text("3")  # three waitlisted...
        expect(standard.locator("td").nth(3)).to_have_text("2")  # ...two of them bumped

        page.get_by_role("button", name=re.compile(r"queue \(6\)")).click()
        queue = page.locator("#queue")
        expect(queue).to_contain_text("1–6 of 6", timeout=10_000)
        rows = queue.locator("tr")
        expect(rows).to_have_count(7)  # header + six entries in rank order
        expect(rows.nth(1)).to_contain_text("C-3")  # the first VIP heads the queue
        assert "@example.com" not in queue.inner_text()  # no customer data without a key

        expect(page.locator("#decisions")).to_contain_text("total 6", timeout=10_000)
        expect(page.locator("#shed")).to_contain_text("0 pre-orders answered “pending” at once")
        for chart in ("decisions per second", "decision latency p99"):  # after 3 refreshes
            expect(page.get_by_role("img", name=chart)).to_be_visible(timeout=15_000)
        expect(page.locator("#dead-letters")).to_contain_text(f"{prefix}-pre-orders")
        expect(page.locator("#dead-letters")).to_contain_text("not JSON")
        expect(page.locator("#workers")).to_contain_text(worker.url.split("//")[1])
        expect(page.locator("#lag")).to_contain_text(f"{prefix}-pre-orders")
        expect(page.locator("#releases")).to_contain_text("catch-up")  # the start-up run
        expect(page.locator("#sync")).to_contain_text("dirty keys")
        expect(page.locator("#updated")).to_contain_text("updated")
        if os.environ.get("CONSOLE_SCREENSHOT"):  # a look at it: CONSOLE_SCREENSHOT=path.png
            page.screenshot(path=os.environ["CONSOLE_SCREENSHOT"], full_page=True)

        worker.kill()  # the worker goes away: the page says so in words
        expect(page.locator("#health")).to_contain_text("Could not load health", timeout=15_000)
        browser.close()
    assert errors == [], errors
