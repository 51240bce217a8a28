"""The files under deploy/ agree with the code: entrypoints import, parameters bind, schedules parse, the compose
services wire up. No server, no Docker: `prefect deploy` and `docker compose up` themselves are not run here."""

from __future__ import annotations

import re
import shlex
import sys
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
POOL = "pixelmill-cpu"


def load_yaml(name: str) -> dict:
    data = yaml.safe_load((DEPLOY / name).read_text())
    assert isinstance(data, dict), f"deploy/{name} is not a mapping"
    return data


PROJECT = load_yaml("prefect.yaml")
DEPLOYMENTS = PROJECT.get("deployments") or []
COMPOSE = load_yaml("compose.yaml")
SERVICES = COMPOSE.get("services") or {}


def by_name(deployments: list[dict]) -> list:
    return [pytest.param(d, id=d.get("name", "?")) for d in deployments]


WORKSPACE = PROJECT["definitions"]["workspace"]


@cache
def load_flow(entrypoint: str):
    """Import `package.module:flow_name` the way `prefect deploy` and a worker do."""
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)


# ---------------------------------------------------------------- prefect.yaml


def prefect_yaml_model():
    """The pydantic model `prefect deploy` validates prefect.yaml with. Importing it normally costs ~5 s (it loads
    the whole CLI package first), so load its module file alone; fall back to the import if that ever fails."""
    import importlib.util

    import prefect

    try:
        path = Path(prefect.__file__).parent / "cli" / "deploy" / "_models.py"
        spec = importlib.util.spec_from_file_location("_pixelmill_prefect_yaml_models", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # pydantic resolves the models' forward references through it
        spec.loader.exec_module(module)
        return module.PrefectYamlModel
    except Exception:
        from prefect.cli.deploy._models import PrefectYamlModel

        return PrefectYamlModel


def test_project_file_matches_prefects_own_schema():
    model = prefect_yaml_model().model_validate(PROJECT)
    assert len(model.deployments) == len(DEPLOYMENTS) >= 3
    names = [d.name for d in model.deployments]
    assert len(names) == len(set(names)), f"duplicate deployment names: {names}"
    assert {"ingest-nightly", "ingest-camvid", "demo"} <= set(names)


@pytest.mark.parametrize("dep", by_name(DEPLOYMENTS))
def test_entrypoint_is_a_prefect_flow(dep):
    from prefect import Flow

    entrypoint = dep["entrypoint"]
    assert re.fullmatch(r"pixelmill\.flows\.\w+:\w+", entrypoint), f"{entrypoint!r} is not a module of the package"
    assert isinstance(load_flow(entrypoint), Flow)


@pytest.mark.parametrize("dep", by_name(DEPLOYMENTS))
def test_parameters_bind_to_the_flow(dep):
    """What the worker does: Flow.validate_parameters (pydantic models such as IngestConfig come in as dicts)."""
    flow = load_flow(dep["entrypoint"])
    params = dep.get("parameters") or {}
    bound = flow.validate_parameters(params)
    assert set(params) <= set(bound)


@pytest.mark.parametrize("dep", by_name(DEPLOYMENTS))
def test_parameters_pass_the_servers_schema_check(dep):
    """What the server does when the deployment is created (enforce_parameter_schema is on by default)."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    schema = parameter_schema(load_flow(dep["entrypoint"])).model_dump_for_openapi()
    validate(dep.get("parameters") or {}, schema, raise_on_error=True, ignore_required=True)


def test_ingest_configs_are_real_ingest_configs():
    """A typo inside `config` must fail here, not at 02:30: IngestConfig forbids unknown keys."""
    from pixelmill.tasks.prep.ingest import IngestConfig

    configs = [d["parameters"]["config"] for d in DEPLOYMENTS
               if "config" in (d.get("parameters") or {}) and d["entrypoint"] == "pixelmill.flows.ingest:ingest"]
    assert configs, "no deployment passes an IngestConfig"
    for cfg in configs:
        IngestConfig.model_validate(cfg)
    flow = load_flow("pixelmill.flows.ingest:ingest")
    with pytest.raises(Exception, match="masx"):
        flow.validate_parameters({"source": "s3://x/y", "config": {"masx": None}})


@pytest.mark.parametrize("dep", by_name(DEPLOYMENTS))
def test_schedules_parse(dep):
    """Cron strings and time zones as the server parses them (Prefect 3.9 uses cronsim; croniter is not installed)."""
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule, RRuleSchedule

    for item in dep.get("schedules") or []:
        kinds = [k for k in ("cron", "interval", "rrule") if item.get(k) is not None]
        assert len(kinds) == 1, f"{item}: exactly one of cron, interval, rrule"
        if "cron" in kinds:
            CronSchedule(cron=item["cron"], timezone=item.get("timezone"))
        elif "interval" in kinds:
            IntervalSchedule(interval=item["interval"], timezone=item.get("timezone"))
        else:
            RRuleSchedule(rrule=item["rrule"], timezone=item.get("timezone"))


def test_a_bad_cron_would_be_caught():
    from prefect.client.schemas.schedules import CronSchedule

    with pytest.raises(ValueError):
        CronSchedule(cron="30 25 * * *", timezone="Europe/Berlin")


def test_nightly_is_scheduled_and_the_rest_are_not():
    schedules = {d["name"]: d.get("schedules") or [] for d in DEPLOYMENTS}
    assert any(s.get("cron") for s in schedules["ingest-nightly"])
    assert not schedules["ingest-camvid"] and not schedules["demo"]


@pytest.mark.parametrize("dep", by_name(DEPLOYMENTS))
def test_every_deployment_uses_the_pool_the_worker_serves(dep):
    assert dep["work_pool"]["name"] == POOL
    assert isinstance(dep["work_pool"].get("job_variables", {}), dict)


def test_no_pull_step_and_entrypoints_load_from_any_directory(monkeypatch, tmp_path):
    """`pull: []`: a worker needs the installed package, not a checkout at a path (an omitted pull would make
    `prefect deploy` add a step that changes into the deploying machine's directory)."""
    assert PROJECT["pull"] == []
    monkeypatch.chdir(tmp_path)
    from prefect.flows import load_flow_from_entrypoint

    for dep in DEPLOYMENTS:
        module, name = dep["entrypoint"].split(":")
        assert load_flow_from_entrypoint(dep["entrypoint"], use_placeholder_flow=False).fn.__module__ == module, name


def test_the_workspace_is_written_once():
    """Every run gets PIXELMILL_WORKSPACE from its pool's job variables, and no deployment names another one."""
    text = (DEPLOY / "prefect.yaml").read_text()
    assert len(re.findall(r"s3://pixelmill/workspace", text)) == 1, "the workspace URL is written more than once"
    for dep in DEPLOYMENTS:
        assert dep["work_pool"]["job_variables"]["env"]["PIXELMILL_WORKSPACE"] == WORKSPACE, dep["name"]
        assert "workspace" not in (dep.get("parameters") or {}), dep["name"]


def test_apply_nightly_runs_one_at_a_time_and_queues_the_next():
    """What the server gets from `prefect deploy` for the limit: one slot, the next run waits (not cancelled)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    (dep,) = [d for d in DEPLOYMENTS if d["name"] == "apply-nightly"]
    limit = ConcurrencyLimitConfig.model_validate(dep["concurrency_limit"])
    assert limit.limit == 1 and limit.collision_strategy.value == "ENQUEUE"
    assert not dep.get("schedules"), "apply follows ingest by its event, not by a clock"


# ---------------------------------------------------------------- compose.yaml


def command_args(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def option(args: list[str], name: str) -> str | None:
    """The value of `--name value`, `--name=value` or `-name=value` in a command line."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def env(service: dict) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: str(v) for k, v in raw.items()}


def test_compose_has_the_services():
    assert {"postgres", "prefect-server", "seaweedfs", "create-bucket", "worker"} <= set(SERVICES)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_depends_on_names_existing_services(name):
    deps = SERVICES[name].get("depends_on") or {}
    conditions = {d: "service_started" for d in deps} if isinstance(deps, list) else \
                 {d: (spec or {}).get("condition", "service_started") for d, spec in deps.items()}
    for dep, condition in conditions.items():
        assert dep in SERVICES, f"{name} depends on unknown service {dep!r}"
        assert dep != name
        assert condition in {"service_started", "service_healthy", "service_completed_successfully"}
        if condition == "service_healthy":
            assert "healthcheck" in SERVICES[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"


def test_worker_talks_to_the_prefect_server():
    server, worker = SERVICES["prefect-server"], SERVICES["worker"]
    args = command_args(server)
    assert args[:3] == ["prefect", "server", "start"] and option(args, "--host") == "0.0.0.0"
    port = int(option(args, "--port") or 4200)

    url = urlsplit(env(worker)["PREFECT_API_URL"])
    assert (url.scheme, url.hostname, url.port or 80, url.path.rstrip("/")) == ("http", "prefect-server", port, "/api")
    assert any(str(p).split(":")[-1] == str(port) for p in server.get("ports", [])), "UI port not published"
    assert "prefect-server" in (worker.get("depends_on") or {})


def test_worker_serves_the_deployments_pool():
    args = command_args(SERVICES["worker"])
    assert args[:3] == ["prefect", "worker", "start"]
    assert option(args, "--pool") == POOL
    # no source tree to point at (module entrypoints); shards go to the compose file's Dask scheduler
    assert "PIXELMILL_ROOT" not in (DEPLOY / "Dockerfile").read_text() + (DEPLOY / "compose.yaml").read_text()
    runner = urlsplit(env(SERVICES["worker"])["PIXELMILL_RUNNER"])
    scheduler = command_args(SERVICES[runner.hostname])
    assert scheduler[:2] == ["dask", "scheduler"] and option(scheduler, "--port") == str(runner.port)
    assert command_args(SERVICES["dask-worker"])[2] == f"{runner.scheme}://{runner.hostname}:{runner.port}"
    assert env(SERVICES["dask-worker"])["AWS_ENDPOINT_URL"] == env(SERVICES["worker"])["AWS_ENDPOINT_URL"]


def test_server_database_is_the_postgres_service():
    from sqlalchemy.engine import make_url

    url = make_url(env(SERVICES["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"])
    pg = env(SERVICES["postgres"])
    assert url.drivername == "postgresql+asyncpg" and url.host == "postgres"
    assert (url.username, url.password, url.database) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"],
                                                          pg["POSTGRES_DB"])
    import asyncpg  # noqa: F401  (the server runs from the pixelmill image: the driver must come with Prefect)


def test_s3_settings_point_at_seaweedfs():
    weed = command_args(SERVICES["seaweedfs"])
    assert "server" in weed and "-s3" in weed
    s3_port = int(option(weed, "-s3.port") or 8333)
    for name in ("worker", "create-bucket"):
        e = env(SERVICES[name])
        url = urlsplit(e["AWS_ENDPOINT_URL"])
        assert (url.hostname, url.port) == ("seaweedfs", s3_port), name
        assert e.get("AWS_ACCESS_KEY_ID") and e.get("AWS_SECRET_ACCESS_KEY"), name
    workspace = env(SERVICES["worker"])["PIXELMILL_WORKSPACE"]
    assert workspace == "s3://pixelmill/workspace"
    assert "pixelmill" in str(SERVICES["create-bucket"]["command"]), "create-bucket must create the workspace bucket"


def test_built_services_use_the_dockerfile():
    for name, service in SERVICES.items():
        build = service.get("build")
        if build is None:
            continue
        context = (DEPLOY / (build if isinstance(build, str) else build.get("context", "."))).resolve()
        dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
        assert dockerfile == DEPLOY / "Dockerfile", name
        assert (context / "pyproject.toml").is_file(), f"{name}: build context is not the repository root"


# ---------------------------------------------------------------- Dockerfile, dask.yaml


def test_dockerfile_copies_what_exists_and_runs_as_a_worker():
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [ln.strip() for ln in re.sub(r"\\\n", " ", text).splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    for ln in lines:
        if ln.startswith("COPY ") and "--from" not in ln:
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), f"COPY source {src} is not in the repository"
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    cmd = [ln for ln in lines if ln.startswith("CMD ")][-1]
    assert "worker" in cmd and f'"{POOL}"' in cmd


DASK = load_yaml("dask.yaml")


def test_dask_default_profile_exists():
    assert DASK["default"] in DASK


@pytest.mark.parametrize("profile", sorted(k for k in DASK if k != "default"))
def test_dask_profiles_build_a_task_runner(profile):
    """DaskTaskRunner checks address-xor-cluster and imports cluster_class; no cluster is started here."""
    from prefect_dask import DaskTaskRunner

    runner = DaskTaskRunner(**DASK[profile])
    assert runner.address or runner.resolved_cluster_class is not None


# ---------------------------------------------------------------- automations.yaml

AUTOMATION = load_yaml("automations.yaml")


def unknown_keys(data, model) -> list[str]:
    """Keys that pydantic would drop: AutomationCore ignores extra fields, so a typo would vanish silently."""
    dumped = model.model_dump(mode="json", by_alias=True)
    missing = [k for k in data if k not in dumped]
    for key in ("trigger",):
        missing += [f"{key}.{k}" for k in data.get(key, {}) if k not in dumped[key]]
    for i, action in enumerate(data.get("actions", [])):
        missing += [f"actions.{i}.{k}" for k in action if k not in dumped["actions"][i]]
    return missing


def test_automation_is_what_prefect_automation_create_accepts():
    """`prefect automation create --from-file` validates each automation with AutomationCore."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    automation = AutomationCore.model_validate(AUTOMATION)
    assert unknown_keys(AUTOMATION, automation) == []
    trigger = automation.trigger
    assert isinstance(trigger, EventTrigger) and trigger.posture == Posture.Proactive
    assert trigger.after == {"prefect.flow-run.heartbeat"} and trigger.expect == {"prefect.flow-run.*"}
    assert trigger.for_each == {"prefect.resource.id"} and trigger.threshold == 1
    (action,) = automation.actions
    assert isinstance(action, ChangeFlowRunState) and action.state == StateType.CRASHED


def heartbeat_seconds() -> list[int]:
    """The heartbeat every deployment's runs and the compose worker's runs send."""
    values = [d["work_pool"]["job_variables"]["env"].get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY") for d in DEPLOYMENTS]
    values.append(env(SERVICES["worker"]).get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY"))
    assert None not in values, "every deployment and the worker must set PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
    return [int(v) for v in values]


def test_automation_waits_three_heartbeats_of_the_runs_it_watches():
    from prefect.events.schemas.automations import AutomationCore
    from prefect.settings.models.flows import FlowsSettings

    within = AutomationCore.model_validate(AUTOMATION).trigger.within.total_seconds()
    beats = heartbeat_seconds()
    field = FlowsSettings.model_fields["heartbeat_frequency"]
    assert min(beats) >= next(m.ge for m in field.metadata if hasattr(m, "ge"))  # Prefect's minimum
    assert within >= 3 * max(beats), f"{within} s window, heartbeats every {max(beats)} s"
    # Runs it does not watch beat at Prefect's default: this window would crash them while they work.
    assert within < field.default


def test_automation_watches_every_deployment_and_no_cli_run():
    """The server's own matching (covers_resources) on the related resources a heartbeat event carries."""
    from prefect.events.related import tags_as_related_resources
    from prefect.events.schemas.events import Resource
    from prefect.server.events.schemas.automations import AutomationCore as ServerAutomation

    trigger = ServerAutomation.model_validate(AUTOMATION).trigger
    run = Resource.model_validate({"prefect.resource.id": "prefect.flow-run.00000000-0000-0000-0000-000000000000"})
    for dep in DEPLOYMENTS:
        assert trigger.covers_resources(run, tags_as_related_resources(set(dep["tags"]))), dep["name"]
    assert not trigger.covers_resources(run, [])  # a CLI run: no tags (the next run marks those)
    assert not trigger.covers_resources(run, tags_as_related_resources({"other-team"}))


# ---------------------------------------------------------------- promotion trigger (prefect.yaml)


def promotion_triggers() -> list[tuple[dict, dict]]:
    return [(dep, t) for dep in DEPLOYMENTS for t in dep.get("triggers") or []
            if "pixelmill.model.promoted" in t.get("expect", [])]


def promoted_event(name: str, version: str, alias: str, workspace: str):
    """The event flows/events.py sends, as the server receives it."""
    from uuid import uuid4

    from prefect.server.events.schemas.events import ReceivedEvent

    from pixelmill.flows.events import PROMOTED, promoted_resource
    from pixelmill.tasks.core.cards import ModelCard

    card = ModelCard(name=name, version=version, uri=f"{workspace}/models/{name}/{version}", task="restoration",
                     arch="unet-plain")
    return ReceivedEvent(event=PROMOTED, resource=promoted_resource(card, alias, workspace),
                         occurred="2024-06-01T00:00:00Z", id=uuid4())


def test_promotion_trigger_runs_apply_on_the_archive():
    """What `prefect deploy` builds from the trigger (DeploymentTriggerAdapter, then the automation it creates),
    matched by the server's own code against promotion events, and the parameters the run would get."""
    from uuid import uuid4

    from prefect.cli.deploy._triggers import _initialize_deployment_triggers
    from prefect.events.actions import RunDeployment
    from prefect.server.events.schemas.automations import AutomationCore as ServerAutomation
    from prefect.server.utilities.user_templates import render_user_template_sync

    (dep, spec), = promotion_triggers()
    assert dep["entrypoint"] == "pixelmill.flows.apply:apply" and dep["parameters"]["model"] == "sr@production"
    (trigger,) = _initialize_deployment_triggers(dep["name"], [dict(spec)])
    deployment_id = uuid4()
    trigger.set_deployment_id(deployment_id)
    automation = trigger.as_automation()
    (action,) = automation.actions
    assert isinstance(action, RunDeployment) and action.deployment_id == deployment_id
    server_trigger = ServerAutomation.model_validate(automation.model_dump(mode="json")).trigger

    workspace = WORKSPACE
    assert server_trigger.covers(promoted_event("sr", "v7", "production", workspace))
    assert not server_trigger.covers(promoted_event("sr", "v7", "staging", workspace))
    assert not server_trigger.covers(promoted_event("sr", "v7", "production", "s3://elsewhere/workspace"))
    assert not server_trigger.covers(promoted_event("seg", "v7", "production", workspace))

    event = promoted_event("sr", "v7", "production", workspace)
    rendered = {k: render_user_template_sync(v, {"event": event}) if isinstance(v, str) else v
                for k, v in action.parameters.items()}
    assert rendered == {"model": "sr@production"}
    params = dep["parameters"] | rendered  # the server merges the action's parameters over the deployment's
    load_flow(dep["entrypoint"]).validate_parameters(params)


def test_gpu_pool_examples_match_the_cpu_pool():
    """The GPU pools are examples no deployment uses yet; moving a deployment to one must keep the workspace and
    the heartbeat that deploy/automations.yaml relies on, and ask for the GPUs in each worker type's own terms."""
    pools = PROJECT["definitions"]["work_pools"]
    cpu_env = pools["pixelmill_cpu"]["job_variables"]["env"]
    docker, k8s = pools["pixelmill_gpu_docker"], pools["pixelmill_gpu_kubernetes"]
    for pool in (docker, k8s):
        assert pool["job_variables"]["env"] == cpu_env, pool["name"]
        assert pool["name"] != POOL and pool["job_variables"]["image"]
    (request,) = docker["job_variables"]["container_create_kwargs"]["device_requests"]
    assert request == {"Driver": "nvidia", "Count": -1, "Capabilities": [["gpu"]]}  # `docker run --gpus all`
    assert k8s["job_variables"]["gpu_count"] >= 1
    text = (DEPLOY / "prefect.yaml").read_text()
    assert '"nvidia.com/gpu": "{{ gpu_count }}"' in text  # the template change that gives gpu_count a meaning
    assert not [d["name"] for d in DEPLOYMENTS if d["work_pool"]["name"] != POOL]


def test_ingest_finishing_runs_apply_on_what_it_ingested():
    """The event ingest sends when it ends (flows/events.py), matched by the server's own code against the
    apply-nightly trigger, and the input the run would get: the source that ingest read."""
    from uuid import uuid4

    from prefect.cli.deploy._triggers import _initialize_deployment_triggers
    from prefect.server.events.schemas.automations import AutomationCore as ServerAutomation
    from prefect.server.events.schemas.events import ReceivedEvent
    from prefect.server.utilities.user_templates import render_user_template_sync

    from pixelmill.flows.events import INGESTED

    (dep, spec), = [(d, t) for d in DEPLOYMENTS for t in d.get("triggers") or [] if INGESTED in t.get("expect", [])]
    (ingest,) = [d for d in DEPLOYMENTS if d["name"] == "ingest-nightly"]
    (trigger,) = _initialize_deployment_triggers(dep["name"], [dict(spec)])
    trigger.set_deployment_id(uuid4())
    automation = trigger.as_automation()
    server_trigger = ServerAutomation.model_validate(automation.model_dump(mode="json")).trigger

    def ingested(dataset: str, source: str, workspace: str) -> ReceivedEvent:
        resource = {"prefect.resource.id": f"pixelmill.dataset.{dataset}", "pixelmill.dataset": dataset,
                    "pixelmill.source": source, "pixelmill.workspace": workspace}
        return ReceivedEvent(event=INGESTED, resource=resource, occurred="2024-06-01T00:00:00Z", id=uuid4())

    nightly = ingested(ingest["parameters"]["dataset"], "s3://archive/incoming/2024-06-01", WORKSPACE)
    assert server_trigger.covers(nightly)
    assert not server_trigger.covers(ingested("camvid-train", "s3://pixelmill/datasets/camvid/train", WORKSPACE))
    assert not server_trigger.covers(ingested(ingest["parameters"]["dataset"], "s3://archive/incoming",
                                              "s3://elsewhere/workspace"))
    (action,) = automation.actions
    rendered = {k: render_user_template_sync(v, {"event": nightly}) for k, v in action.parameters.items()}
    assert rendered == {"input": "s3://archive/incoming/2024-06-01"}
    load_flow(dep["entrypoint"]).validate_parameters(dep["parameters"] | rendered)
