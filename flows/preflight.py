"""Checks the CLI makes before a flow starts, so a mistake is answered in well under a second.

A flow finds the same mistakes, but only after the Prefect server is up (about 10 s for the embedded one) and
with two engine tracebacks around them. Nothing here imports Prefect or torch: catalog listings, the registry's
`resolve` and recipe parsing are enough. A wrong name comes back with the names that exist.
"""

from __future__ import annotations

from pixelmill.tasks.core import storage
from pixelmill.tasks.core.catalog import Catalog
from pixelmill.tasks.core.errors import ConfigError, PixelmillError
from pixelmill.tasks.core.settings import workspace_url
from pixelmill.tasks.core.tables import DATA_TABLES, TABLES, DataRef, parse_data_ref

WORKSPACE_HINT = ("pass --workspace or set PIXELMILL_WORKSPACE (after `make demo`: "
                  "export PIXELMILL_WORKSPACE=./pixelmill-demo/workspace)")
SPLITS = ("train", "valid", "test")


def workspace_root(workspace: str | None) -> str:
    return storage.normalize_url(workspace_url(workspace))


def require_workspace(workspace: str | None) -> str:
    """The workspace's canonical URL; an error when nothing is there yet."""
    root = workspace_root(workspace)
    if not storage.exists(root):
        raise ConfigError(f"no workspace at {root}", WORKSPACE_HINT)
    return root


def require_group(workspace: str | None, table: str, name: str, what: str, make: str) -> None:
    """`name` is a group of `table` (a data set, a paired set); else say which ones there are."""
    catalog = Catalog(workspace_root(workspace))
    groups = catalog.groups(table)
    if name in groups:
        return
    require_workspace(workspace)
    raise ConfigError(f"unknown {what} {name!r} in {catalog.workspace}",
                      f"{what}s there: {', '.join(groups)}" if groups else f"there are none yet: {make}")


def require_table_group(workspace: str | None, table: str, name: str) -> None:
    """`name` is a group of `table`, in the words the table's declaration uses (tasks/core/tables.py)."""
    decl = TABLES[table]
    require_group(workspace, table, name, decl.group, decl.make)


def require_dataset(workspace: str | None, name: str) -> None:
    require_table_group(workspace, "images", name)


def require_pairs(workspace: str | None, name: str) -> None:
    require_table_group(workspace, "pairs", name)


def require_data(workspace: str | None, text: str, allowed: tuple[str, ...] = DATA_TABLES) -> DataRef:
    """A typed data reference (`images:NAME`, `pairs:NAME`) of a kind in `allowed`, naming a group that exists."""
    ref = parse_data_ref(text, allowed)
    require_table_group(workspace, ref.table, ref.name)
    return ref


def require_model(workspace: str | None, ref: str):
    """The model card `ref` names (the registry lists the models, versions and aliases there when it is wrong)."""
    from pixelmill.tasks.core import registry

    return registry.resolve(workspace_root(workspace), ref)


def require_recipe(recipe: str) -> None:
    from pixelmill.tasks.prep.recipes import get_recipe

    try:
        get_recipe(recipe)
    except ValueError as exc:  # RecipeError names the bad field or the shipped recipes
        raise ConfigError(str(exc), "`pixelmill recipes` lists the shipped recipes") from None


def require_source(source: str) -> None:
    """A folder, bucket prefix or archive that exists (listing its first entry, never the whole tree)."""
    next(iter(storage.iter_files(source)), None)


def require_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")


def parse_split_fractions(text: str) -> tuple[float, float, float]:
    try:
        fractions = tuple(float(x) for x in text.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(f"--split-fractions {text}: give three fractions train,valid,test, each >= 0, that sum "
                          "to 1", "e.g. --split-fractions 0.8,0.1,0.1 (or 0.8,0.2,0 for no test split)")
    return fractions


def require_checkpoint(workspace: str | None, name: str) -> None:
    from pixelmill.tasks.core.layout import Layout

    checkpoint = Layout.of(workspace).checkpoint(name)
    if not storage.exists(checkpoint):
        raise PixelmillError(f"no checkpoint to resume for model {name!r} at {checkpoint}", "run without --resume")
