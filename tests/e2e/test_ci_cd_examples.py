"""docs/ci-cd.md's examples run as written against a real ``modelreg serve``.

Every bash and yaml block in the page carries a marker: ``<!-- ci-cd-test: run -->`` blocks
run in bash as the admin, in order; the GitHub Actions workflow (``github``) runs its steps
in order in one working directory, as a runner would, with ``$GITHUB_ENV`` carried from step
to step; the GitLab CI pipeline (``gitlab``) runs its jobs in stage order with its dotenv
report (``build.env``) carried from job to job. Both use the pipeline's token the setup
block issued. Steps that install modelreg (``pip install``) and ``uses:`` actions are not
run: the test runs the checkout's own ``modelreg``. While a pipeline waits for its approval,
the test approves the request as a person would, with an approver's token.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.client import Client
from service.client.errors import NotFound
from tests.support.registry_server import RegistryServer, registry_server
from tests.support.waiting import eventually_sync

DOC = Path(__file__).resolve().parents[2] / "docs" / "ci-cd.md"
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!-- ci-cd-test: (run|github|gitlab) -->$")
INSTALL = re.compile(r"\bpip install\b")


def marked_blocks() -> list[tuple[str, str, str]]:
    """(marker, language, text) of every fenced block; a bash or yaml block must be marked."""
    lines = DOC.read_text().splitlines()
    found = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None or not opening.group(1):
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = MARKER.match(lines[i - 1]) if i > 0 else None
        language = opening.group(1)
        if language in ("bash", "yaml"):
            assert marker, f"docs/ci-cd.md line {i + 1}: a {language} block without a marker"
            found.append((marker.group(1), language, "\n".join(lines[i + 1 : end])))
        i = end + 1
    return found


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir) as running:
        yield running


def _env(server: RegistryServer, token: str, **extra: str) -> dict[str, str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return server.env(MODELREG_TOKEN=token, PATH=path, COLUMNS="200", **extra)


def github_script(workflow: dict[str, Any]) -> str:
    steps = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            if "run" not in step or INSTALL.search(step["run"]):
                continue
            # Each step is a shell of its own that sees what earlier steps put in GITHUB_ENV.
            steps.append(
                'set -a; [ -f "$GITHUB_ENV" ] && . "$GITHUB_ENV"; set +a\n'
                f"bash -eo pipefail <<'STEP'\n{step['run']}\nSTEP"
            )
    return "set -e\n" + "\n".join(steps)


def gitlab_script(pipeline: dict[str, Any]) -> str:
    jobs = [
        (name, job) for name, job in pipeline.items() if isinstance(job, dict) and "stage" in job
    ]
    order = {stage: n for n, stage in enumerate(pipeline["stages"])}
    parts = []
    for _, job in sorted(jobs, key=lambda item: order[item[1]["stage"]]):
        body = "\n".join(job["script"])
        parts.append(
            "set -a; [ -f build.env ] && . ./build.env; set +a\n"
            f"bash -eo pipefail <<'JOB'\n{body}\nJOB"
        )
    return "set -e\n" + "\n".join(parts)


def run_approving(
    server: RegistryServer, script: str, env: dict[str, str], cwd: Path, approver: str
) -> subprocess.CompletedProcess[str]:
    """Run a pipeline; approve its promotion request when it appears, as a person would."""
    proc = subprocess.Popen(
        ["bash", "-c", script], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        with Client(server.url, approver) as client:

            def approved_or_ended() -> bool:
                if proc.poll() is not None:
                    return True
                try:
                    requests = client.list_promotions("open", model="churn")
                except NotFound:
                    return False  # the pipeline has not registered the model yet
                for request in requests:
                    client.approve(request.request_id, "reviewed the offline evaluation")
                return bool(requests)

            eventually_sync(approved_or_ended, what="the pipeline's promotion request")
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_the_ci_cd_examples_run_as_written(server: RegistryServer, tmp_path: Path) -> None:
    blocks = marked_blocks()
    assert {m for m, _, _ in blocks} == {"run", "github", "gitlab"}
    with Client(server.url, server.admin_token) as admin:
        approver = admin.create_token("alice", ["approver"]).secret
    assert approver is not None

    # given the setup block run by the admin, which issues the pipeline's token
    setup = next(text for m, _, text in blocks if m == "run")
    done = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", f"{setup}\necho \"$MODELREG_CI_TOKEN\""],
        cwd=tmp_path, env=_env(server, server.admin_token), text=True, capture_output=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    ci_token = done.stdout.strip().splitlines()[-1]
    assert ci_token.startswith("mr_")

    # when the GitHub workflow runs, approved by a person while it waits
    workflow = yaml.safe_load(next(text for m, _, text in blocks if m == "github"))
    github = tmp_path / "github"
    github.mkdir()
    env = _env(server, ci_token, GITHUB_ENV=str(github / "env"), GITHUB_RUN_ID="41")
    ran = run_approving(server, github_script(workflow), env, github, approver)
    # then it ends with churn v1 in production, deployed from its listed files
    assert ran.returncode == 0, f"{ran.stdout}\n{ran.stderr}"
    assert re.search(r"^[0-9a-f]{64}$", ran.stdout, re.MULTILINE)

    # when the GitLab pipeline runs the same way
    pipeline = yaml.safe_load(next(text for m, _, text in blocks if m == "gitlab"))
    gitlab = tmp_path / "gitlab"
    gitlab.mkdir()
    env = _env(server, ci_token, CI_PIPELINE_ID="7")
    ran = run_approving(server, gitlab_script(pipeline), env, gitlab, approver)
    assert ran.returncode == 0, f"{ran.stdout}\n{ran.stderr}"
    # then v2 is in production, and the gate check said so on the way
    assert '"outcome": "needs_approval"' in ran.stdout
    with Client(server.url, server.admin_token) as admin:
        assert admin.get_version("churn", 2).stage == "production"

    # and the other blocks (the webhook subscription) run as the admin
    for marker, _, text in blocks[1:]:
        if marker == "run":
            done = subprocess.run(
                ["bash", "-eo", "pipefail", "-c", text], cwd=tmp_path,
                env=_env(server, server.admin_token), text=True, capture_output=True, timeout=120,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr


def test_a_refused_gate_fails_the_step_with_the_reason(
    server: RegistryServer, tmp_path: Path
) -> None:
    # given a version below the policy's gate (the setup block's policy, set by the test above
    # or here)
    setup = next(text for m, _, text in marked_blocks() if m == "run")
    env = _env(server, server.admin_token)
    subprocess.run(["bash", "-eo", "pipefail", "-c", setup], cwd=tmp_path, env=env, check=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.bin").write_text("weak")
    script = (
        "modelreg versions register churn-weak out/ --metric auc=0.5 --dataset holdout --json"
        " | jq -r .version"
    )
    version = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, text=True, capture_output=True, check=True
    ).stdout.strip()
    subprocess.run(
        ["modelreg", "stage", "churn-weak", version, "staging"], env=env, check=True, cwd=tmp_path
    )
    # when the pipeline checks the gate into production
    checked = subprocess.run(
        ["modelreg", "gate", "check", "churn-weak", version, "--to", "production"],
        env=env, text=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    # then the step fails (exit 1) and says which gate refused it
    assert checked.returncode == 1, checked.stderr
    assert "auc" in checked.stderr and "refused" in checked.stderr
    # and waiting for a move that nobody requested times out with exit 4
    waited = subprocess.run(
        ["modelreg", "wait", "churn-weak", version, "--for", "stage=production",
         "--timeout", "1s", "--interval", "0.2s"],
        env=env, text=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    assert waited.returncode == 4, waited.stderr
    assert "did not hold within 1s" in waited.stderr


def test_waiting_for_a_rejected_promotion_fails_with_the_decision(
    server: RegistryServer, tmp_path: Path
) -> None:
    # given a version whose promotion to production was requested and then rejected
    env = _env(server, server.admin_token)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.bin").write_text("good")
    with Client(server.url, server.admin_token) as admin:
        admin.set_policy(
            {
                "transitions": [
                    {"from_stage": "development", "to_stage": "staging"},
                    {"from_stage": "staging", "to_stage": "production", "approvals": 1},
                ]
            },
            comment="production needs an approver",
        )
        approver = admin.create_token("rita", ["approver"]).secret
    script = "modelreg versions register churn-rej out/ --json | jq -r .version"
    version = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, text=True, capture_output=True, check=True
    ).stdout.strip()
    for stage in ("staging", "production"):
        subprocess.run(
            ["modelreg", "stage", "churn-rej", version, stage, "-m", "try"],
            env=env, check=True, cwd=tmp_path, capture_output=True,
        )  # fmt: skip
    waiting = subprocess.Popen(
        ["modelreg", "wait", "churn-rej", version, "--for", "stage=production",
         "--timeout", "5m", "--interval", "0.2s"],
        env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    try:
        with Client(server.url, approver) as client:
            request = client.list_promotions("open", model="churn-rej")[0]
            client.reject(request.request_id, "the holdout report is missing")
        # when the pipeline waits for it, then it fails with the decision (exit 1)
        _, err = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
    assert waiting.returncode == 1, err
    assert "rejected" in err and "the holdout report is missing" in err
