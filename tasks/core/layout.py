"""The workspace layout: the one place that knows where everything lives under a workspace URL.

    {workspace}/catalog/{table}/{group}/part-{shard}.parquet    Parquet tables (tasks/core/catalog.py)
    {workspace}/datasets/{set}/{split}/{hr,lr,mask}/...          generated paired sets (crappify)
    {workspace}/models/{name}/{version}/                         registry versions (tasks/core/registry.py)
    {workspace}/models/{name}/aliases.json
    {workspace}/models/{name}/promotions/{at}-{alias}-{version}.json   one file per alias change, never rewritten
    {workspace}/models/{name}/checkpoints/last.pt                the training checkpoint that --resume reads
    {workspace}/reports/{kind}/{run}/...                         files behind Prefect reports (gallery images)
    {workspace}/runs/{stage}/{group}/{flow_run_id}.json          leases of running flow runs (tasks/core/runs.py)

Flows, the CLI and printouts ask a `Layout` for paths instead of spelling them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.settings import workspace_url


@dataclass(frozen=True)
class Layout:
    root: str  # the canonical workspace URL (file://..., s3://..., memory:///...)

    @classmethod
    def of(cls, workspace: str | None = None) -> Layout:
        """The layout of `workspace`, else $PIXELMILL_WORKSPACE, else ./pixelmill-workspace."""
        return cls(storage.normalize_url(workspace_url(workspace)))

    @property
    def is_local(self) -> bool:
        return self.root.startswith("file://")

    # catalog
    @property
    def catalog(self) -> str:
        return storage.join(self.root, "catalog")

    def table(self, table: str) -> str:
        return storage.join(self.catalog, table)

    # generated data sets
    def paired_set(self, set_name: str) -> str:
        return storage.join(self.root, "datasets", set_name)

    # registry
    @property
    def models(self) -> str:
        return storage.join(self.root, "models")

    def model(self, name: str) -> str:
        return storage.join(self.models, name)

    def model_version(self, name: str, version: str) -> str:
        return storage.join(self.models, name, version)

    def aliases(self, name: str) -> str:
        return storage.join(self.models, name, "aliases.json")

    def promotions(self, name: str) -> str:
        return storage.join(self.models, name, "promotions")

    def checkpoint(self, name: str) -> str:
        return storage.join(self.models, name, "checkpoints", "last.pt")

    # leases of running flow runs: one folder per stage and data set (or paired set)
    def runs(self, stage: str, group: str) -> str:
        return storage.join(self.root, "runs", stage, group)

    # reports
    def report(self, kind: str, run: str) -> str:
        return storage.join(self.root, "reports", kind, run)
