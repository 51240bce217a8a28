"""Events pixelmill sends to Prefect, for deployment triggers (deploy/prefect.yaml) to act on.

`pixelmill.model.promoted`: an alias now points at another model version. Its resource is the model,
`pixelmill.model.{name}`, labelled with the version, the alias and the workspace, so that a trigger can match
"production of sr in this workspace" and template the run's parameters from the labels.

`pixelmill.ingest.completed`: an ingest run finished. Its resource is the data set, `pixelmill.dataset.{name}`,
labelled with the source it read and the workspace, so that apply-nightly (deploy/prefect.yaml) runs over what
was ingested as soon as ingest ends, instead of at a clock time that guesses when it will have ended. Sent on
every completed run, also one with nothing new: an apply that an earlier crash left unfinished then catches up.

`pixelmill.apply.flagged`: an apply run wrote outputs that its checks flagged (colour drift, clipping, NIQE worse
than the input's). Same resource; the payload has the counts by reason and the run id, so an automation can alert
a person, who runs `pixelmill review RUN_ID`.
"""

from __future__ import annotations

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.cards import ModelCard

PROMOTED = "pixelmill.model.promoted"
INGESTED = "pixelmill.ingest.completed"
FLAGGED = "pixelmill.apply.flagged"
DRAIN_SECONDS = 10.0


def promoted_resource(card: ModelCard, alias: str, workspace: str) -> dict[str, str]:
    return {"prefect.resource.id": f"pixelmill.model.{card.name}", "prefect.resource.name": card.name,
            "pixelmill.model": card.name, "pixelmill.version": card.version, "pixelmill.alias": alias,
            "pixelmill.workspace": workspace}


def emit_promoted(card: ModelCard, alias: str, workspace: str, previous: str | None = None):
    """Tell the Prefect server that `alias` of `card.name` now serves `card.version`; returns the event, or None
    when no server can hear it (a command without PREFECT_API_URL: an embedded server would start for ~10 s
    only to drop the event with the process)."""
    from prefect.context import FlowRunContext
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL

    in_flow = FlowRunContext.get() is not None
    if not in_flow and not PREFECT_API_URL.value():
        return None
    related = [{"prefect.resource.id": f"pixelmill.model-version.{card.ref}", "prefect.resource.role": "model-version",
                "pixelmill.uri": card.uri}]
    resource = promoted_resource(card, alias, storage.normalize_url(workspace))
    event = emit_event(PROMOTED, resource=resource, related=related,
                       payload={"version": card.version, "previous": previous, "uri": card.uri})
    if not in_flow:  # events go out from a background thread; a command exits right after this
        EventsWorker.drain_all(timeout=DRAIN_SECONDS)
    return event


def emit_flagged(card: ModelCard, summary: dict, workspace: str):
    """Inside the apply flow: its run flagged `summary["flagged"]` outputs (> 0). Returns the event."""
    from prefect.events import emit_event

    resource = {"prefect.resource.id": f"pixelmill.model.{card.name}", "prefect.resource.name": card.name,
                "pixelmill.model": card.name, "pixelmill.version": card.version,
                "pixelmill.workspace": storage.normalize_url(workspace)}
    return emit_event(FLAGGED, resource=resource, payload={
        "run_id": summary["run_id"], "flagged": summary["flagged"], "processed": summary["processed"],
        "reasons": summary["flag_reasons"], "output": summary["output"],
        "review": f"pixelmill review {summary['run_id']}"})


def emit_ingested(summary: dict, source: str):
    """Inside the ingest flow, once its catalog is final. Returns the event."""
    from prefect.events import emit_event

    dataset = summary["dataset"]
    resource = {"prefect.resource.id": f"pixelmill.dataset.{dataset}", "prefect.resource.name": dataset,
                "pixelmill.dataset": dataset, "pixelmill.source": storage.normalize_url(source, archives=False),
                "pixelmill.workspace": storage.normalize_url(summary["workspace"])}
    return emit_event(INGESTED, resource=resource, payload={
        "new_or_changed": summary["new_or_changed"], "unchanged": summary["unchanged"], "files": summary["files"],
        "status": summary["status"]})
