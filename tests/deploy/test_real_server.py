"""The apply deployment on a real `prefect server start`: served, run through the API over S3 (SeaweedFS), checked in
the bucket, the predictions table and the artifacts; then a promotion sent by `pixelmill models promote` fires the
deployment trigger of deploy/prefect.yaml and a second run re-applies the new version."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from pixelmill.tasks.core import registry, storage
from pixelmill.tasks.core.catalog import Catalog
from tests.deploy.test_deploy import DEPLOY
from tests.faults.driver import PIXELMILL, PrefectServer, kill_group
from tests.helpers import noise_png
from tests.tasks.inference.test_apply import register_tiny

pytestmark = [pytest.mark.slow, pytest.mark.s3]

DEPLOYMENT = "apply-archive"
IMAGES = 4

# The deployment as deploy/prefect.yaml defines it, with this test's workspace and buckets: the same flow and trigger.
SERVE = """
import json, sys
from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
from pydantic import TypeAdapter
from pixelmill.flows.apply import apply

spec = json.loads(sys.argv[1])
triggers = [TypeAdapter(DeploymentTriggerTypes).validate_python(t) for t in spec["triggers"]]
apply.serve(name=spec["name"], parameters=spec["parameters"], triggers=triggers, print_starting_message=False)
"""


def deployment_spec(workspace: str, bucket: str) -> dict:
    nightly = next(d for d in yaml.safe_load((DEPLOY / "prefect.yaml").read_text())["deployments"]
                   if d["name"] == "apply-nightly")
    (trigger,) = [t for t in nightly["triggers"] if "pixelmill.model.promoted" in t["expect"]]
    trigger["match"]["pixelmill.workspace"] = workspace
    parameters = nightly["parameters"] | {"input": f"s3://{bucket}/incoming", "output": f"s3://{bucket}/enhanced",
                                          "workspace": workspace}
    parameters["config"] |= {"format": "png", "tile": 64, "overlap": 8, "shard_size": 2}
    return {"name": DEPLOYMENT, "parameters": parameters, "triggers": [trigger]}


async def wait_for(what: str, fetch, timeout: float = 240, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(every)


async def final_state(client, flow_run_id, timeout: float = 300):
    async def done():
        run = await client.read_flow_run(flow_run_id)
        return run if run.state and run.state.is_final() else None

    return await wait_for(f"flow run {flow_run_id} to finish", done, timeout)


def predictions(workspace: str, run_id) -> list[dict]:
    return [r for r in Catalog(workspace).read("predictions", "sr").to_pylist() if r["run_id"] == str(run_id)]


@pytest.fixture
def server(prefect_api) -> PrefectServer:
    """The session's real Prefect server (tests/conftest.py): this test looks only at its own deployment, runs and
    events (those naming its workspace)."""
    return prefect_api


def test_served_apply_runs_over_s3_and_promotion_re_applies(server, s3_bucket, tmp_path):
    import s3fs

    workspace = storage.normalize_url(str(tmp_path / "ws"))
    register_tiny(workspace, name="sr", scale=2)
    registry.set_alias(workspace, registry.resolve(workspace, "sr:v1"), "production")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    for i in range(IMAGES):
        fs.pipe(f"{s3_bucket}/incoming/day{i % 2}/p{i}.png", noise_png(48 + 8 * i, 40, seed=i))

    env = server.env(**{k: v for k, v in os.environ.items() if k.startswith("AWS_")})
    spec = deployment_spec(workspace, s3_bucket)
    with open(tmp_path / "serve.log", "wb") as log:
        serve = subprocess.Popen([sys.executable, "-c", SERVE, json.dumps(spec)], env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        asyncio.run(check_runs(server, serve, env, spec, workspace, s3_bucket, tmp_path, fs))
    except BaseException:
        print((tmp_path / "serve.log").read_text(errors="replace")[-6000:])
        raise
    finally:
        kill_group(serve, timeout=30)


async def check_runs(server, serve, env, spec, workspace, bucket, tmp_path, fs):
    import httpx
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterId
    from prefect.exceptions import ObjectNotFound

    async with PrefectClient(api=server.url) as client:
        async def deployment():
            assert serve.poll() is None, f"`serve` exited with {serve.returncode} before registering the deployment"
            try:
                return await client.read_deployment_by_name(f"apply/{DEPLOYMENT}")
            except ObjectNotFound:  # not registered yet: `serve` is still importing torch (any other error fails)
                return None

        dep = await wait_for("the served deployment", deployment, timeout=180)
        (automation,) = await wait_for("the deployment's trigger", lambda: client.read_resource_related_automations(
            f"prefect.deployment.{dep.id}"), timeout=30)  # created just after the deployment
        assert automation.enabled and automation.trigger.expect == {"pixelmill.model.promoted"}

        # 1. A run through the API: outputs in the bucket, rows in the predictions table, artifacts on the server.
        run = await client.create_flow_run_from_deployment(dep.id, parameters=spec["parameters"])
        run = await final_state(client, run.id)
        assert run.state.is_completed(), run.state
        outputs = sorted(p.split("/enhanced/", 1)[1] for p in fs.find(f"{bucket}/enhanced"))
        assert outputs == sorted(f"day{i % 2}/p{i}.png" for i in range(IMAGES))  # names mirror the inputs
        rows = predictions(workspace, run.id)
        assert len(rows) == IMAGES and {(r["status"], r["model_version"]) for r in rows} == {("ok", "v1")}
        assert {r["output_uri"].removeprefix(f"s3://{bucket}/enhanced/") for r in rows} == set(outputs)
        written = {name: fs.info(f"{bucket}/enhanced/{name}")["LastModified"] for name in outputs}
        artifacts = {a.key: a for a in await client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))}
        assert f"{IMAGES} processed, 0 skipped" in artifacts["apply-sr"].data
        assert artifacts["apply-progress-sr"].data == 100.0

        # 2. Promotion: the CLI sends the event, the server's trigger runs the deployment with the alias.
        register_tiny(workspace, name="sr", scale=2, base=12)
        promote = subprocess.run([PIXELMILL, "models", "promote", "sr:v2", "production", "--workspace", workspace],
                                 env=env, capture_output=True, text=True, timeout=120)
        assert promote.returncode == 0, promote.stdout + promote.stderr
        assert "sent pixelmill.model.promoted" in promote.stdout

        async def event():
            response = await asyncio.to_thread(httpx.post, f"{server.url}/events/filter", timeout=10, json={
                "filter": {"event": {"name": ["pixelmill.model.promoted"]}}, "limit": 50})
            response.raise_for_status()
            return [e for e in response.json()["events"] if e["resource"].get("pixelmill.workspace") == workspace]

        (received,) = await wait_for("the promotion event on the server", event, timeout=60)
        assert received["resource"].items() >= {"prefect.resource.id": "pixelmill.model.sr", "pixelmill.version": "v2",
                                                 "pixelmill.alias": "production",
                                                 "pixelmill.workspace": workspace}.items()

        async def triggered():
            runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
            return [r for r in runs if r.id != run.id]

        (second,) = await wait_for("the run the promotion triggers", triggered, timeout=120)
        assert second.parameters["model"] == "sr@production"
        assert second.parameters["input"] == spec["parameters"]["input"]  # the rest from the deployment
        second = await final_state(client, second.id)
        assert second.state.is_completed(), second.state
        rows = predictions(workspace, second.id)
        assert len(rows) == IMAGES and {(r["status"], r["model_version"]) for r in rows} == {("ok", "v2")}
        assert {r["output_uri"].removeprefix(f"s3://{bucket}/enhanced/") for r in rows} == set(outputs)
        # rewritten, not only cataloged (both tiny models start as bicubic: the bytes may well be the same)
        fs.invalidate_cache()
        assert all(fs.info(f"{bucket}/enhanced/{name}")["LastModified"] > written[name] for name in outputs)
