"""The web UI over real HTTP against ``modelreg serve``, without a browser: status codes,
the session cookie's flags, CSRF refusals, and that a scoped reader's pages show only its
models. One registry for the module; the browser suite (test_ui_browser.py) clicks through.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.ui.session import COOKIE
from tests.support.registry_server import RegistryServer, registry_server
from tests.support.ui_registry import API, LINEAGE, UiRegistry, csrf_of, log_in, populate


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir) as running:
        yield running


@pytest.fixture(scope="module")
def content(server: RegistryServer) -> UiRegistry:
    with httpx.Client(base_url=server.url, timeout=30.0) as http:
        return populate(http, server.admin_token)


@pytest.fixture
def browser(server: RegistryServer) -> Iterator[httpx.Client]:
    """A client that keeps cookies, like a browser, and does not follow redirects."""
    with httpx.Client(base_url=server.url, timeout=30.0) as http:
        yield http


def test_a_page_without_a_session_redirects_to_the_login_form(
    browser: httpx.Client, content: UiRegistry
) -> None:
    # when someone not logged in opens a model page
    answer = browser.get(f"/ui/models/{content.model}")

    # then they are sent to the login form, which comes back to the page afterwards
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/ui/login?next_page=%2Fui%2Fmodels%2F{content.model}"
    assert browser.get("/ui/login").status_code == 200


def test_logging_in_sets_an_httponly_strict_session_cookie_that_opens_the_pages(
    browser: httpx.Client, server: RegistryServer, content: UiRegistry
) -> None:
    # given the login form
    form = browser.get("/ui/login")

    # when the admin logs in with its token
    answer = browser.post(
        "/ui/login", data={"token": server.admin_token, "_csrf_token": csrf_of(form)}
    )

    # then the session cookie is HttpOnly, SameSite=Strict, expiring, and holds no token
    assert answer.status_code == 303
    cookie = next(h for h in answer.headers.get_list("set-cookie") if h.startswith(f"{COOKIE}="))
    flags = cookie.lower()
    assert "httponly" in flags and "samesite=strict" in flags and "max-age=28800" in flags
    assert server.admin_token not in cookie
    # and the pages answer, showing the registry's models
    models = browser.get("/ui/")
    assert models.status_code == 200
    assert content.model in models.text and content.hidden in models.text
    for path in (
        f"/ui/models/{content.model}",
        f"/ui/models/{content.model}/versions/2",
        f"/ui/models/{content.model}/compare?versions=1,2,3",
        "/ui/approvals",
        f"/ui/audit?model={content.model}&as_of={content.position}",
        "/ui/audit?verify=true",
    ):
        assert browser.get(path).status_code == 200, path


def test_a_wrong_token_does_not_log_in(browser: httpx.Client) -> None:
    form = browser.get("/ui/login")
    answer = browser.post("/ui/login", data={"token": "nope", "_csrf_token": csrf_of(form)})
    assert answer.status_code == 401
    assert COOKIE not in answer.headers.get("set-cookie", "")


def test_a_form_post_without_its_csrf_token_is_refused_and_changes_nothing(
    browser: httpx.Client, content: UiRegistry
) -> None:
    # given the approver logged in
    log_in(browser, content.approver)

    # when forms are posted without the CSRF token (as a forged cross-site form would be)
    approve = browser.post(
        f"/ui/approvals/{content.request_id}", data={"decision": "approve", "comment": "x"}
    )
    logout = browser.post("/ui/logout", data={})

    # then both are refused, and the session still stands
    assert approve.status_code == 403 and logout.status_code == 403
    assert browser.get("/ui/").status_code == 200


def test_the_json_api_with_a_bearer_token_needs_no_csrf_token(
    browser: httpx.Client, server: RegistryServer
) -> None:
    # when an API client writes with its bearer token (no cookie, no CSRF token)
    answer = browser.post(
        f"{API}/models",
        headers={"Authorization": f"Bearer {server.admin_token}"},
        json={"name": "api-unchanged-" + server.schema},
    )

    # then the API answers as it always did
    assert answer.status_code == 201


def test_a_scoped_reader_sees_only_its_models_and_an_out_of_scope_model_is_not_found(
    browser: httpx.Client, content: UiRegistry
) -> None:
    # given a reader whose token covers fraud-* only
    log_in(browser, content.scoped_reader)

    # when it lists, searches, and opens the other model directly
    listed = browser.get("/ui/")
    searched = browser.get("/ui/", params={"q": content.hidden})
    direct = browser.get(f"/ui/models/{content.hidden}")
    audit = browser.get("/ui/audit", params={"model": content.hidden})
    version = browser.get(f"/ui/models/{content.hidden}/versions/1")

    # then the other model is nowhere, and its pages answer 404 like a model that does not exist
    assert content.model in listed.text
    assert content.hidden not in listed.text
    assert content.hidden not in searched.text.replace(f'value="{content.hidden}"', "")
    assert direct.status_code == 404 and version.status_code == 404
    assert audit.status_code == 404
    assert browser.get("/ui/models/no-such-model").status_code == 404


def test_a_bad_filter_answers_400_naming_the_field(
    browser: httpx.Client, server: RegistryServer
) -> None:
    log_in(browser, server.admin_token)
    answer = browser.get("/ui/", params={"metric": "auc>>"})
    assert answer.status_code == 400
    assert "metric" in answer.text


def test_the_requester_is_told_it_may_not_approve_its_own_request(
    browser: httpx.Client, content: UiRegistry
) -> None:
    log_in(browser, content.requester)
    inbox = browser.get("/ui/approvals")
    assert "You may not decide this request: you asked for it" in inbox.text


def test_the_requester_is_shown_why_separation_of_duties_keeps_it_from_deciding(
    browser: httpx.Client, content: UiRegistry
) -> None:
    # given the person who asked for v3's promotion, logged in
    log_in(browser, content.requester)

    # when it opens its inbox
    inbox = browser.get("/ui/approvals")

    # then its own request has no decision form, and the page says why
    request = _request_article(inbox.text, content.request_id)
    assert "<form" not in request
    assert "Separation of duties: a promotion needs 1 approval from someone other than" in request


def test_the_inbox_shows_the_gate_check_and_the_diff_against_production(
    browser: httpx.Client, server: RegistryServer, content: UiRegistry
) -> None:
    # given the approver, and what the API's dry run says about v3 going to production
    log_in(browser, content.approver)
    dry_run = browser.get(
        f"{API}/models/{content.model}/versions/3/gate",
        params={"to": "production"},
        headers={"Authorization": f"Bearer {server.admin_token}"},
    ).json()

    # when it opens its inbox
    inbox = browser.get("/ui/approvals")

    # then the request shows the same verdict and gate, with v3's and production's values
    request = _request_article(inbox.text, content.request_id)
    assert dry_run["passes"] and dry_run["outcome"] == "needs_approval"
    assert "<strong>Passes</strong>: staging → production, needs 1 approval." in request
    gate = re.search(r"<tr>\s*<th scope=\"row\"><code>(.*?)</code></th>(.*?)</tr>", request, re.S)
    assert gate is not None, request
    assert gate.group(1) == "auc &gt;= production on holdout"
    assert [g["passed"] for g in dry_run["gates"]] == [True]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", gate.group(2))
    assert cells == ["0.85", "0.81", "passes"]
    # and the parameters that differ from production v1, then the metrics side by side
    assert '<th scope="col">v1 (production)</th>' in request
    depth = re.search(r'<th scope="row">depth</th>(.*?)</tr>', request, re.S)
    assert depth is not None and re.findall(r"<code>(.*?)</code>", depth.group(1)) == ["7", "5"]
    assert '<th scope="row">lr</th>' not in request  # the same in both: not a difference
    auc = re.search(r'<th scope="row">auc \[holdout\]</th>(.*?)</tr>', request, re.S)
    assert auc is not None and re.findall(r">([0-9.]+)</td>", auc.group(1)) == ["0.85", "0.81"]


def _request_article(page: str, request_id: str) -> str:
    """The part of the approvals page about one request."""
    found = re.search(
        rf'<article class="request" aria-labelledby="request-{re.escape(request_id)}">(.*?)</article>',
        page,
        re.S,
    )
    assert found is not None, page
    return found.group(1)


def test_a_second_person_approves_through_the_form_and_the_version_goes_to_production(
    browser: httpx.Client, server: RegistryServer, content: UiRegistry
) -> None:
    # given the approver on its inbox
    log_in(browser, content.approver)
    inbox = browser.get("/ui/approvals")
    assert content.request_id in inbox.text

    # when it approves with a comment
    answer = browser.post(
        f"/ui/approvals/{content.request_id}",
        data={"decision": "approve", "comment": "four eyes", "_csrf_token": csrf_of(inbox)},
    )

    # then the promotion executed through the same command as the API
    assert answer.status_code == 303
    position = answer.headers["location"].rsplit("position=", 1)[1]
    version = browser.get(
        f"{API}/models/{content.model}/versions/3",
        params={"min_position": position},
        headers={"Authorization": f"Bearer {server.admin_token}"},
    )
    assert version.json()["stage"] == "production"
    # and "beside production" puts the production version next to the one asked for
    beside = browser.get(
        f"/ui/models/{content.model}/compare", params={"versions": "1", "with_production": "true"}
    )
    assert '<th scope="col">v1</th><th scope="col">v3</th>' in beside.text


def test_the_model_page_shows_desired_against_live_and_highlights_drift(
    browser: httpx.Client, server: RegistryServer, content: UiRegistry
) -> None:
    # given v2 live in prod/eu-1, which follows staging, while v2 itself is in development
    log_in(browser, server.admin_token)

    # when the model page is read as the registry stood then
    page = browser.get(f"/ui/models/{content.model}", params={"as_of": content.deployed_at})

    # then the place shows what it follows against live v2, marked as drift with its reason
    row = re.search(r'<tr class="drift">(.*?)</tr>', page.text, re.S)
    assert row is not None, page.text
    assert "prod" in row.group(1) and "eu-1" in row.group(1)
    assert "stage:staging" in row.group(1) and "<td>v2</td>" in row.group(1)
    assert "<strong>Drift</strong>: deployed v2 is in development, not staging" in row.group(1)


def test_logging_out_ends_the_session(browser: httpx.Client, server: RegistryServer) -> None:
    log_in(browser, server.admin_token)
    page = browser.get("/ui/")
    answer = browser.post("/ui/logout", data={"_csrf_token": csrf_of(page)})
    assert answer.status_code == 303
    assert browser.get("/ui/").status_code == 303


def test_revoking_the_token_ends_its_sessions_at_once(
    browser: httpx.Client, server: RegistryServer
) -> None:
    # given a reader logged in with a token of its own
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    issued = browser.post(
        f"{API}/tokens", headers=admin, json={"principal": "short-lived", "roles": ["reader"]}
    ).json()
    log_in(browser, issued["secret"])
    assert browser.get("/ui/").status_code == 200

    # when an admin revokes the token
    revoked = browser.delete(f"{API}/tokens/{issued['token_id']}", headers=admin)
    assert revoked.status_code == 200

    # then the session's next page is the login form
    assert browser.get("/ui/").status_code == 303


def test_the_session_cookie_is_secure_when_served_over_https(
    browser: httpx.Client, server: RegistryServer
) -> None:
    # when the login comes through a TLS-terminating proxy that says so
    form = browser.get("/ui/login")
    answer = browser.post(
        "/ui/login",
        data={"token": server.admin_token, "_csrf_token": csrf_of(form)},
        headers={"X-Forwarded-Proto": "https"},
    )

    # then the cookie is only ever sent back over https
    cookie = next(h for h in answer.headers.get_list("set-cookie") if h.startswith(f"{COOKIE}="))
    assert "secure" in cookie.lower().split("; ")


def test_a_nul_in_a_form_value_is_refused_and_names_the_field(
    browser: httpx.Client, content: UiRegistry
) -> None:
    # given the approver on its inbox
    log_in(browser, content.approver)
    inbox = browser.get("/ui/approvals")

    # when a comment holds a NUL character
    answer = browser.post(
        f"/ui/approvals/{content.request_id}",
        data={"decision": "reject", "comment": "a\x00b", "_csrf_token": csrf_of(inbox)},
    )

    # then it is refused before any command runs, naming the field and the rule
    assert answer.status_code == 422
    assert "comment" in answer.text and "NUL" in answer.text


def test_a_login_link_never_leads_off_the_ui(browser: httpx.Client, server: RegistryServer) -> None:
    form = browser.get("/ui/login", params={"next_page": "https://evil.example/"})
    assert 'value="/ui/"' in form.text
    answer = browser.post(
        "/ui/login",
        data={"token": server.admin_token, "next": "//evil.example/", "_csrf_token": csrf_of(form)},
    )
    assert answer.headers["location"] == "/ui/"


def test_the_model_page_shows_100_versions_then_links_to_the_older_ones(
    browser: httpx.Client, server: RegistryServer
) -> None:
    # given a model with 101 versions
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    name = "paged-" + server.schema
    browser.post(f"{API}/models", headers=admin, json={"name": name}).raise_for_status()
    for n in range(101):
        artifact = {
            "path": "m",
            "external": True,
            "uri": "s3://m",
            "sha256": f"{n:064x}",
            "size": 1,
        }
        browser.post(
            f"{API}/models/{name}/versions", headers=admin, json={"artifacts": [artifact]}
        ).raise_for_status()
    log_in(browser, server.admin_token)

    # when the model page is opened, and its link to older versions followed
    first = browser.get(f"/ui/models/{name}")
    older = re.search(r'href="(\?as_of=&cursor=[^"]+)"', first.text)
    assert older is not None
    second = browser.get(f"/ui/models/{name}" + older.group(1))

    # then the first page holds versions 101 to 2, the second version 1 alone
    assert ">v101</a>" in first.text and ">v2</a>" in first.text and ">v1</a>" not in first.text
    assert ">v1</a>" in second.text and ">v2</a>" not in second.text


def test_the_audit_feed_filters_by_time_with_as_of_and_by_actor(
    browser: httpx.Client, server: RegistryServer, content: UiRegistry
) -> None:
    # given when the promotion request happened, as the API tells it
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    asked = browser.get(
        f"{API}/models/{content.model}/history",
        params={"type": "model.promotion_requested"},
        headers=admin,
    ).json()["items"][0]
    at = asked["occurred_at"]
    log_in(browser, server.admin_token)

    # when the model's feed is asked for from that time, before it, and from it as of before it
    since = browser.get("/ui/audit", params={"model": content.model, "since": at})
    until = browser.get("/ui/audit", params={"model": content.model, "until": at})
    past = browser.get(
        "/ui/audit",
        params={"model": content.model, "since": at, "as_of": str(content.position - 1)},
    )

    # then each shows what happened in its window, as the registry stood then
    assert "model.promotion_requested" in since.text and "model.registered" not in since.text
    assert "model.registered" in until.text and "model.promotion_requested" not in until.text
    assert past.status_code == 200 and "<code>model.promotion_requested</code>" not in past.text
    assert "0 events, newest first, from" in past.text

    # and the requester's own feed narrows by type and time the same way
    requester = asked["actor"]
    mine = browser.get(
        "/ui/audit", params={"actor": requester, "type": "model.promotion_requested", "since": at}
    )
    before = browser.get(
        "/ui/audit", params={"actor": requester, "type": "model.promotion_requested", "until": at}
    )
    assert mine.text.count("<code>model.promotion_requested</code>") == 1
    assert "<code>model.promotion_requested</code>" not in before.text


def test_a_bad_time_filter_answers_4xx_naming_the_field(
    browser: httpx.Client, server: RegistryServer, content: UiRegistry
) -> None:
    log_in(browser, server.admin_token)
    garbled = browser.get("/ui/audit", params={"model": content.model, "since": "yesterday"})
    backwards = browser.get(
        "/ui/audit", params={"model": content.model, "since": "2026-03-04", "until": "2026-03-03"}
    )
    assert garbled.status_code in (400, 422) and "since" in garbled.text
    assert (
        backwards.status_code in (400, 422) and "until must be later than since" in backwards.text
    )


def test_the_audit_page_shows_the_verify_result_with_the_head_hash(
    browser: httpx.Client, server: RegistryServer
) -> None:
    log_in(browser, server.admin_token)
    checked = browser.get("/ui/audit", params={"verify": "true"})
    report = browser.get(
        f"{API}/audit/verify", headers={"Authorization": f"Bearer {server.admin_token}"}
    ).json()
    assert "<strong>Both hash chains verify</strong>" in checked.text
    assert report["ok"] and f"position {report['head_position']}" in checked.text


def test_the_version_page_shows_its_lineage_and_links_only_web_addresses(
    browser: httpx.Client, server: RegistryServer, content: UiRegistry
) -> None:
    # given v3, registered with its datasets, code commit, run and Python version
    log_in(browser, server.admin_token)

    # when its page is opened
    page = browser.get(f"/ui/models/{content.model}/versions/3")

    # then the lineage names each of them, as recorded
    lineage = page.text[page.text.index('id="lineage"') :]
    code, run = LINEAGE["code"], LINEAGE["run"]
    assert f"at commit <code>{code['commit']}</code>, path <code>train.py</code>" in lineage
    assert f'<a href="{run["url"]}" rel="noopener noreferrer">run-42</a> (mlflow)' in lineage
    for dataset in LINEAGE["datasets"]:
        row = f'<th scope="row">{dataset["name"]}</th><td>{dataset["role"]}</td>'
        assert row in lineage and dataset["digest"] in lineage
    assert "3.11.9" in lineage
    # and a version without any says so rather than showing nothing
    bare = browser.get(f"/ui/models/{content.model}/versions/1")
    assert "<dt>Code</dt><dd>not recorded</dd>" in bare.text


def test_a_recorded_uri_that_is_not_a_web_address_is_never_a_link(
    browser: httpx.Client, server: RegistryServer, content: UiRegistry
) -> None:
    # given a version whose run URL is a script URI (a URI with a scheme, so it is accepted)
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    artifact = {"path": "m", "external": True, "uri": "s3://m", "sha256": "ef" * 32, "size": 1}
    made = browser.post(
        f"{API}/models/{content.hidden}/versions",
        headers=admin,
        json={"artifacts": [artifact], "run": {"run_id": "r1", "url": "javascript:alert(1)"}},
    )
    assert made.status_code == 201, made.text
    number = made.json()["version"]
    shown = browser.get(
        f"{API}/models/{content.hidden}/versions/{number}",
        params={"min_position": made.json()["position"]},
        headers=admin,
    )
    assert shown.status_code == 200  # the views have it
    log_in(browser, server.admin_token)

    # when its page is shown
    page = browser.get(f"/ui/models/{content.hidden}/versions/{number}")

    # then the URI is shown as text, not as something to click
    assert page.status_code == 200
    assert 'href="javascript:' not in page.text
    assert "<code>r1</code>" in page.text
