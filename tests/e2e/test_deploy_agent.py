"""The reference deployment agent end to end: a ``modelreg serve`` process whose relay
publishes to its own stream, promotions through the HTTP API, the agent in process (its
Python API) and as ``modelreg deploy-agent --once``; the manifests it writes and what the
registry then says about desired against actual."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest
import yaml
from nats.aio.client import Client as NatsClient

from service.client import AsyncClient
from service.client.models import ArtifactEntry, Place
from service.consumers.deploy_agent import (
    AgentConfig,
    DeployAgent,
    deployment_id_for,
    resource_name,
    run_agent,
)
from service.consumers.kit import ConsumerStats, FileDedup, Subscription
from service.publication.jetstream import delete_stream_if_exists
from tests.support.nats_servers import connect
from tests.support.policies import PERMISSIVE_POLICY
from tests.support.registry_server import RegistryServer, registry_server

# The installed console script, next to this interpreter (the virtualenv's bin/).
MODELREG = str(Path(sys.executable).with_name("modelreg"))


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir) as running:
        yield running


def stream_of(server: RegistryServer) -> tuple[str, str]:
    """The stream and subject prefix the server's relay publishes to (registry_server sets them)."""
    return server.stream, server.subject_prefix


def test_the_agents_streams_and_subjects_are_this_runs_own(server: RegistryServer) -> None:
    # A stream another run left on a shared NATS must not overlap any this run creates:
    # the dead-letter subjects derive from the prefix without its last token.
    stream, prefix = stream_of(server)
    subscription = Subscription("agent-a", stream=stream, subject_prefix=prefix)
    for name in (stream, subscription.dlq_stream, subscription.dlq_subject):
        assert server.schema.upper() in name.upper(), name


@pytest.fixture
async def nc(nats_url: str, server: RegistryServer) -> AsyncIterator[NatsClient]:
    client = await connect(nats_url)
    try:
        yield client
    finally:
        await delete_stream_if_exists(client, f"{stream_of(server)[0]}_DLQ")
        await client.close()


def s3_manifest(model: str, version: int) -> list[ArtifactEntry]:
    root = f"s3://models/{model}/{version}"
    return [
        ArtifactEntry(
            path="model.joblib",
            external=True,
            uri=f"{root}/model.joblib",
            sha256="a" * 64,
            size=1024,
        ),
        ArtifactEntry(
            path="conf/settings.json",
            external=True,
            uri=f"{root}/conf/settings.json",
            sha256="b" * 64,
            size=20,
        ),
    ]


async def register(
    client: AsyncClient,
    model: str,
    manifest: list[ArtifactEntry] | None = None,
    artifacts_dir: Path | None = None,
    **tags: str,
) -> int:
    registered = await client.register_version(
        model,
        manifest=manifest,
        artifacts_dir=artifacts_dir,
        external=artifacts_dir is not None,  # the files stay local: file:// entries
        tags=tags,
        code=None,
        dependencies=None,
    )
    return registered.version


async def to_production(client: AsyncClient, model: str, version: int) -> int:
    # Deployment, not governance, is under test: production needs no approver here.
    await client.set_policy(PERMISSIVE_POLICY, comment="deploy tests promote directly")
    await client.transition(model, version, "staging")
    receipt = await client.transition(model, version, "production")
    assert receipt.executed and receipt.position is not None
    return receipt.position


async def published(
    nc: NatsClient, server: RegistryServer, position: int, timeout: float = 30.0
) -> None:
    """Wait until the relay put log position ``position`` on the stream (one message per position)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            info = await nc.jetstream(timeout=2).stream_info(stream_of(server)[0])
            if info.state.last_seq >= position:
                return
        except nats.js.errors.NotFoundError:
            pass  # the relay has not provisioned the stream yet
        assert loop.time() < deadline, f"log position {position} not published in {timeout} s"
        await asyncio.sleep(0.05)


async def run_once(
    nc: NatsClient, agent: DeployAgent, subscription: Subscription, state: Path
) -> ConsumerStats:
    dedup = FileDedup(state)
    try:
        return await run_agent(nc, agent, subscription, dedup, asyncio.Event(), once=True)
    finally:
        dedup.close()


def read_manifest(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def place(places: list[Place], target: str) -> Place:
    (found,) = [p for p in places if p.target == target]
    return found


async def test_the_agent_deploys_promotions_records_them_and_never_twice(
    server: RegistryServer, nc: NatsClient, tmp_path: Path
) -> None:
    out, state = tmp_path / "manifests", tmp_path / "seen"
    stream, prefix = stream_of(server)
    async with AsyncClient(server.url, server.admin_token) as client:
        # given version 1 of churn, stored in S3, promoted to production through the API
        await register(client, "churn", s3_manifest("churn", 1), model_format="sklearn")
        position = await to_production(client, "churn", 1)
        await published(nc, server, position)
        model_id = (await client.get_model("churn")).model_id
        row = await client.get_version("churn", 1)

        config = AgentConfig(
            out=out, environment="prod", target="k8s/serving", aliases=frozenset({"champion"})
        )

        def subscription(agent: DeployAgent, durable: str) -> Subscription:
            return agent.subscription(
                durable,
                stream=stream,
                subject_prefix=prefix,
                models=[model_id],
                pull_wait=0.2,
                ack_wait=5.0,
            )

        # when the agent runs
        agent = DeployAgent(client, config)
        await run_once(nc, agent, subscription(agent, "agent-a"), state)

        # then it rendered the InferenceService of version 1 ...
        (done,) = agent.outcomes
        assert (done.status, done.model, done.version, done.follows) == (
            "succeeded",
            "churn",
            1,
            "stage:production",
        )
        path = out / "churn-prod.yaml"
        assert done.path == path
        manifest = read_manifest(path)
        assert (manifest["apiVersion"], manifest["kind"]) == (
            "serving.kserve.io/v1beta1",
            "InferenceService",
        )
        assert manifest["metadata"]["name"] == "churn-prod"
        assert manifest["spec"] == {
            "predictor": {
                "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://models/churn/1"}
            }
        }
        notes = manifest["metadata"]["annotations"]
        assert notes["modelreg.io/model"] == "churn" and notes["modelreg.io/version"] == "1"
        assert notes["modelreg.io/content-digest"] == row.content_digest
        assert notes["modelreg.io/log-position"] == str(position)
        assert manifest["metadata"]["labels"]["modelreg.io/model-id"] == model_id
        assert not list(out.glob(".*.tmp")), "the temporary file was renamed away"

        # ... recorded the deployment as started, then succeeded, and the place is in sync
        (run,) = await client.deployment_runs("churn", environment="prod")
        assert (run.deployment_id, run.version, run.status, run.desired_stage) == (
            done.deployment_id,
            1,
            "succeeded",
            "production",
        )
        live = place(await client.deployments("churn", environment="prod"), "k8s/serving")
        assert (live.desired_version, live.live_version, live.drift, live.drift_code) == (
            1,
            1,
            False,
            "in_sync",
        )

        # a re-delivery never deploys twice: the same durable has nothing left ...
        written = path.stat().st_mtime_ns
        again = DeployAgent(client, config)
        assert (await run_once(nc, again, subscription(again, "agent-a"), state)).handled == 0
        # ... the durable re-created (the stream delivered again from the start) is stopped by
        # the de-duplication file (both stage events of churn: to staging, to production) ...
        await nc.jsm().delete_consumer(stream, "agent-a")
        replay = DeployAgent(client, config)
        stats = await run_once(nc, replay, subscription(replay, "agent-a"), state)
        assert (stats.handled, stats.duplicates, replay.outcomes) == (0, 2, [])
        # ... and a consumer without that record (another durable, a lost file) finds the
        # deployment in the registry, which refuses to start it twice
        amnesiac = DeployAgent(client, config)
        await run_once(nc, amnesiac, subscription(amnesiac, "agent-b"), tmp_path / "lost")
        assert [(o.status, o.detail) for o in amnesiac.outcomes] == [
            ("recorded", f"deployment {done.deployment_id} already succeeded")
        ]
        assert [
            r.deployment_id for r in await client.deployment_runs("churn", environment="prod")
        ] == [done.deployment_id]
        assert path.stat().st_mtime_ns == written

        # when a followed alias moves twice before the agent runs
        v2 = await register(client, "churn", s3_manifest("churn", 2), model_format="xgboost")
        await client.set_alias("churn", "champion", v2)
        moved = await client.set_alias("churn", "champion", 1)
        assert moved.position is not None
        await published(nc, server, moved.position)
        await run_once(nc, agent, subscription(agent, "agent-a"), state)

        # then the move that no longer holds is skipped and the latest one deployed to its own place
        assert [(o.status, o.version, o.follows) for o in agent.outcomes[1:]] == [
            ("skipped", 2, "alias:champion"),
            ("succeeded", 1, "alias:champion"),
        ]
        champion = read_manifest(out / "churn-champion-prod.yaml")
        assert champion["metadata"]["annotations"]["modelreg.io/follows"] == "alias:champion"
        assert champion["spec"]["predictor"]["model"]["storageUri"] == "s3://models/churn/1"
        follower = place(
            await client.deployments("churn", environment="prod"), "k8s/serving/champion"
        )
        assert (follower.follows, follower.live_version, follower.drift) == (
            "alias:champion",
            1,
            False,
        )

        # when a version registered from a local directory (file:// artifacts) reaches production
        (tmp_path / "local").mkdir()
        (tmp_path / "local" / "model.joblib").write_bytes(b"weights")
        v3 = await register(
            client, "churn", artifacts_dir=tmp_path / "local", model_format="sklearn"
        )
        position = await to_production(client, "churn", v3)
        await published(nc, server, position)
        await run_once(nc, agent, subscription(agent, "agent-a"), state)

        # then no manifest is written for it and the deployment is recorded as failed, with the reason
        failed = agent.outcomes[-1]
        assert (failed.status, failed.version) == ("failed", v3)
        assert "file" in failed.detail and "cannot pull" in failed.detail
        assert read_manifest(path)["metadata"]["annotations"]["modelreg.io/version"] == "1"
        (run,) = [
            r for r in await client.deployment_runs("churn", environment="prod") if r.version == v3
        ]
        assert (run.deployment_id, run.status, run.reason) == (
            failed.deployment_id,
            "failed",
            failed.detail,
        )
        # and the registry shows the drift: version 3 is wanted, version 1 still serves
        drifted = place(await client.deployments("churn", environment="prod"), "k8s/serving")
        assert (drifted.desired_version, drifted.live_version, drifted.drift) == (v3, 1, True)


async def test_the_deploy_agent_command_once(
    server: RegistryServer, nc: NatsClient, nats_url: str, tmp_path: Path
) -> None:
    stream, prefix = stream_of(server)
    async with AsyncClient(server.url, server.admin_token) as client:
        await register(client, "fraud.Detector", s3_manifest("fraud", 1))
        position = await to_production(client, "fraud.Detector", 1)
        await published(nc, server, position)

        def agent(*args: str) -> subprocess.CompletedProcess[str]:
            env = server.env(
                MODELREG_NATS_URL=nats_url,
                MODELREG_NATS_STREAM=stream,
                MODELREG_NATS_SUBJECT_PREFIX=prefix,
            )
            command = [
                MODELREG,
                "deploy-agent",
                "--once",
                "--out",
                str(tmp_path),
                "--environment",
                "staging-eu",
                "--target",
                "k8s/eu",
                "--model",
                "fraud.Detector",
                "--model-format",
                "lightgbm",
                "--namespace",
                "ml-serving",
                *args,
            ]
            return subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=90, check=False
            )

        done = await asyncio.to_thread(agent)
        assert done.returncode == 0, done.stderr
        # a name Kubernetes would refuse is made safe, with a hash of the original
        name = resource_name("fraud.Detector", "staging-eu")
        assert (
            name.startswith("fraud-detector-staging-eu-")
            and len(name) == len("fraud-detector-staging-eu-") + 8
        )
        path = tmp_path / f"{name}.yaml"
        assert done.stdout.splitlines() == [
            f"succeeded fraud.Detector v1 (stage:production) -> {path}"
        ]
        assert done.stderr == (
            "deploy-agent: 2 new events: 1 deployed, 0 failed, 0 superseded, 0 already recorded, "
            "1 not for this agent; 0 duplicates, 0 dead-lettered\n"
        )
        manifest = read_manifest(path)
        assert manifest["metadata"]["namespace"] == "ml-serving"
        assert manifest["spec"]["predictor"]["model"]["modelFormat"] == {"name": "lightgbm"}
        live = place(await client.deployments("fraud.Detector", environment="staging-eu"), "k8s/eu")
        assert (live.desired_version, live.live_version, live.drift) == (1, 1, False)

        # run again: already handled, nothing new recorded
        again = await asyncio.to_thread(agent)
        assert again.returncode == 0 and again.stdout == ""
        runs = await client.deployment_runs("fraud.Detector", environment="staging-eu")
        assert [r.status for r in runs] == ["succeeded"]
        event_id = manifest["metadata"]["annotations"]["modelreg.io/event-id"]
        assert runs[0].deployment_id == deployment_id_for(
            uuid.UUID(event_id), "staging-eu", "k8s/eu"
        )
