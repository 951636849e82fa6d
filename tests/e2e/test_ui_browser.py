"""The web UI in a real browser (Debian's chromium driven by Playwright) against
``modelreg serve``: log in, click through each page, approve as a second person, and check
that a scoped reader cannot see another model. Screenshots of each page are saved under
``$MODELREG_TEST_ARTIFACTS/ui`` (or pytest's temporary directory) for people to look at.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support.registry_server import RegistryServer, registry_server
from tests.support.ui_registry import UiRegistry, populate

CHROMIUM = "/usr/bin/chromium"  # Debian's package; .ci/run installs it when missing


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir) as running:
        yield running


@pytest.fixture(scope="module")
def content(server: RegistryServer) -> UiRegistry:
    with httpx.Client(base_url=server.url, timeout=30.0) as http:
        return populate(http, server.admin_token)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("MODELREG_TEST_ARTIFACTS")
    folder = Path(root) / "ui" if root else tmp_path_factory.mktemp("ui-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium: Browser, server: RegistryServer) -> Iterator[Page]:
    context = chromium.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


def log_in(page: Page, token: str) -> None:
    page.goto("/ui/login")
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).not_to_have_text("Log in to modelreg")


def test_an_admin_clicks_through_models_model_version_and_compare(
    page: Page, server: RegistryServer, content: UiRegistry, shots: Path
) -> None:
    # given the admin logged in through the form
    log_in(page, server.admin_token)

    # when it searches the models and opens one
    expect(page.get_by_role("heading", name="Models")).to_be_visible()
    page.get_by_label("Name").fill(content.tag)
    page.keyboard.press("Enter")
    expect(page.get_by_role("link", name=content.model)).to_be_visible()
    page.screenshot(path=str(shots / "models.png"), full_page=True)
    page.get_by_role("link", name=content.model).click()

    # then the model page shows its versions with key metrics, its timeline and its policy
    expect(page.get_by_role("heading", name=content.model, level=1)).to_be_visible()
    expect(page.get_by_role("columnheader", name="auc [holdout]")).to_be_visible()
    expect(page.get_by_text("staging → production: needs 1 approval")).to_be_visible()
    page.screenshot(path=str(shots / "model.png"), full_page=True)

    # when it opens version 3: charts of each metric's history are drawn
    page.get_by_role("link", name="v3", exact=True).click()
    expect(page.get_by_role("img", name="auc [holdout]")).to_be_visible()
    expect(page.get_by_role("img", name="loss [holdout]")).to_be_visible()
    expect(page.get_by_role("rowheader", name="depth")).to_be_visible()
    # with its lineage: the data, the code, the run, as recorded at registration
    lineage = page.get_by_role("list", name="Lineage, from data to this version")
    expect(lineage).to_contain_text("train: transactions-2026q1")
    expect(lineage).to_contain_text("run-42")
    expect(page.get_by_role("rowheader", name="holdout-2026q1")).to_be_visible()
    expect(page.get_by_role("link", name="run-42")).to_have_attribute(
        "href", "https://mlflow.example.com/#/runs/run-42"
    )
    page.screenshot(path=str(shots / "version.png"), full_page=True)

    # when it goes back and compares versions 1 and 3 with the keyboard-usable checkboxes
    page.go_back()
    page.get_by_label("Compare version 1").check()
    page.get_by_label("Compare version 3").check()
    page.get_by_role("button", name="Compare selected versions").click()

    # then the best value of each metric is marked, and the differing parameter listed
    expect(page.get_by_role("heading", name=f"Compare versions of {content.model}")).to_be_visible()
    auc = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name="auc [holdout]"))
    expect(auc.locator("td.best")).to_have_count(1)
    expect(auc.locator("td.best")).to_contain_text("0.85")  # v3's, the higher auc
    expect(page.get_by_role("rowheader", name="depth")).to_be_visible()
    page.screenshot(path=str(shots / "compare.png"), full_page=True)


def test_a_second_person_approves_in_the_inbox_which_the_requester_cannot(
    page: Page, content: UiRegistry, shots: Path
) -> None:
    # given the requester, who may not approve its own request
    log_in(page, content.requester)
    page.get_by_role("link", name="Approvals").click()
    expect(
        page.get_by_text("You may not decide this request: you asked for it").first
    ).to_be_visible()
    expect(page.get_by_role("note").first).to_contain_text(
        "Separation of duties: a promotion needs 1 approval from someone other than"
    )
    page.screenshot(path=str(shots / "approvals-requester.png"), full_page=True)
    page.get_by_role("button", name="Log out").click()

    # when the approver opens its inbox and approves with a comment
    log_in(page, content.approver)
    page.get_by_role("link", name="Approvals").click()
    expect(page.get_by_role("button", name="Approve").first).to_be_visible()
    # and weighs the gate check and what changes against production before deciding
    request = page.get_by_role("article").filter(has_text=content.request_id)
    expect(request).to_contain_text("Passes: staging → production, needs 1 approval.")
    gate = request.get_by_role("row").filter(
        has=page.get_by_role("rowheader", name="auc >= production on holdout")
    )
    expect(gate).to_contain_text("passes")
    expect(request.get_by_role("columnheader", name="v1 (production)").first).to_be_visible()
    depth = request.get_by_role("row").filter(has=page.get_by_role("rowheader", name="depth"))
    expect(depth).to_contain_text("7")
    page.screenshot(path=str(shots / "approvals.png"), full_page=True)
    page.get_by_label("Comment").first.fill("four eyes")
    page.get_by_role("button", name="Approve").first.click()

    # then nothing waits any more, and the model shows version 3 in production
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    page.goto(f"/ui/models/{content.model}")
    expect(page.locator(".facts")).to_contain_text("v3")
    expect(page.get_by_role("row", name="v3")).to_contain_text("production")


def test_a_scoped_reader_cannot_see_a_model_outside_its_scope(
    page: Page, content: UiRegistry, shots: Path
) -> None:
    # given a reader whose token covers fraud-* only
    log_in(page, content.scoped_reader)

    # when it lists the models
    expect(page.get_by_role("link", name=content.model)).to_be_visible()

    # then the other model is not listed
    expect(page.get_by_role("link", name=content.hidden)).to_have_count(0)

    # and when it opens the other model by its address, the page answers as if it did not exist
    answer = page.goto(f"/ui/models/{content.hidden}")
    assert answer is not None and answer.status == 404
    expect(page.get_by_role("heading", level=1)).to_contain_text("404")
    page.screenshot(path=str(shots / "not-found.png"), full_page=True)


def test_the_audit_feed_shows_a_models_events_as_of_a_past_position_and_verifies(
    page: Page, server: RegistryServer, content: UiRegistry, shots: Path
) -> None:
    # given the admin on the audit page
    log_in(page, server.admin_token)
    page.get_by_role("link", name="Audit").click()

    # when it asks for the model's history as the registry stood before the promotion request
    page.get_by_label("Model").fill(content.model)
    page.get_by_label("As of").fill(str(content.position - 1))
    page.get_by_role("button", name="Show").click()

    # then the feed ends before the request, and the chains verify on demand
    feed = page.get_by_role("table")
    expect(feed).to_contain_text("model.registered")
    expect(feed).not_to_contain_text("model.promotion_requested")
    page.get_by_role("button", name="Verify the hash chains").click()
    expect(page.get_by_role("status")).to_contain_text("Both hash chains verify")
    page.screenshot(path=str(shots / "audit.png"), full_page=True)

    # when it bounds the time as well: from a date long past, then up to the next day too
    page.get_by_label("From (UTC)").fill("2000-01-01")
    page.get_by_role("button", name="Show").click()

    # then the time filter works with as_of: still no promotion request, the rest shown
    expect(feed).to_contain_text("model.registered")
    expect(feed).not_to_contain_text("model.promotion_requested")
    page.get_by_label("To (UTC)").fill("2000-01-02")
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_role("table")).to_contain_text("0 events, newest first, from 2000-01-01")
    page.screenshot(path=str(shots / "audit-time.png"), full_page=True)


def test_the_model_page_shows_a_new_version_without_a_reload_and_a_past_state_on_request(
    page: Page, server: RegistryServer, content: UiRegistry
) -> None:
    # given the admin on the model page
    log_in(page, server.admin_token)
    page.goto(f"/ui/models/{content.model}")
    expect(page.get_by_role("link", name="v3", exact=True)).to_be_visible()

    # when a version is registered through the API meanwhile
    with httpx.Client(base_url=server.url, timeout=30.0) as http:
        http.post(
            f"/api/v1/models/{content.model}/versions",
            headers={"Authorization": f"Bearer {content.requester}"},
            json={
                "artifacts": [
                    {
                        "path": "m.pkl",
                        "external": True,
                        "uri": "s3://m/4",
                        "sha256": "cd" * 32,
                        "size": 1,
                    }
                ],
                "params": {},
            },
        ).raise_for_status()

    # then the page shows it by itself (it polls the log's position every 5 s)
    expect(page.get_by_role("link", name="v4", exact=True)).to_be_visible(timeout=20_000)

    # and asked for the model as it stood before the promotion request, it shows three versions
    page.get_by_label("As of").fill(str(content.position - 1))
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("as of")
    expect(page.get_by_role("link", name="v4", exact=True)).to_have_count(0)
    expect(page.get_by_role("link", name="v3", exact=True)).to_be_visible()
