"""Registry routes: models, versions with their gate status, lineage, card, aliases,
archive and tags. Changes call the store and registry functions the CLI calls."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from modelyard.admin._auth import Acting
from modelyard.admin._encode import jsonable, version_json
from modelyard.admin._params import MAX_PAGE, page_after, page_limit
from modelyard.errors import ConfigError
from modelyard.registry import LineageNode, lineage_chain, set_tags, version_card

router = APIRouter(tags=["registry"])

ModelName = Path(description="The registered model's name.", max_length=200)
VersionNumber = Path(description="The version number (1, 2, ...).", ge=1, le=2**31 - 1)
AliasName = Path(description="The alias, e.g. champion.", max_length=200)
MAX_VERSIONS_PAGE = MAX_PAGE
"""The most versions one ``GET /models/{model}/versions`` answers (``limit``)."""


class AliasBody(BaseModel):
    """Where to put the alias; a protected alias (champion) needs role approver."""

    model_config = ConfigDict(extra="forbid", strict=True)
    version: int = Field(ge=1, le=2**31 - 1, description="The version the alias moves to.")
    override_gates_reason: str | None = Field(
        default=None,
        min_length=1,
        max_length=2000,
        description="Approver only: why a version whose gates failed or never ran may take "
        "a protected alias (audited).",
    )


class TagsBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    set: dict[str, str] = Field(default_factory=dict, description="Tags to set, KEY: VALUE.")
    remove: list[str] = Field(default_factory=list, description="Tag keys to delete.")


def _lineage(node: LineageNode) -> dict[str, Any]:
    return {
        "version": version_json(node.version),
        "run": jsonable(node.run),
        "parent": _lineage(node.parent) if node.parent is not None else None,
        "missing_parent": node.missing_parent,
    }


@router.get("/models", summary="List registered models with their latest version's gates")
def list_models(
    caller: Acting,
    tenant: str | None = Query(None, max_length=200),
    limit: int = page_limit("models"),
    after: str | None = page_after("models", "name"),
) -> list[dict[str, Any]]:
    """The first ``limit`` models by name (named after ``after``), each with
    ``latest_gates``: the gate status of its latest version (null: no version yet)."""
    found = caller.store.list_models_with_latest(tenant, limit=limit, after=after)
    return [
        {**jsonable(m), "latest_gates": None if v is None else jsonable(v.gates)} for m, v in found
    ]


@router.get("/models/{model}", summary="Show a registered model")
def show_model(caller: Acting, model: str = ModelName) -> dict[str, Any]:
    return jsonable(caller.store.get_registered_model(model))  # type: ignore[no-any-return]


@router.get("/models/{model}/versions", summary="List a model's versions with gate status")
def list_versions(
    caller: Acting,
    model: str = ModelName,
    limit: int = Query(
        100, ge=1, le=MAX_VERSIONS_PAGE, description="At most this many: the newest ones."
    ),
    before: int | None = Query(
        None,
        ge=1,
        le=2**31 - 1,
        description="Only versions numbered below this: the next page back is before= the "
        "first version of a page.",
    ),
) -> list[dict[str, Any]]:
    """The newest ``limit`` versions (below ``before``), in ascending order."""
    found = caller.store.list_model_versions(model, limit=limit, before=before)
    return [version_json(v) for v in found]


@router.get("/models/{model}/versions/{version}", summary="Show a version with gate status")
def show_version(
    caller: Acting, model: str = ModelName, version: int = VersionNumber
) -> dict[str, Any]:
    return version_json(caller.store.get_model_version(model, version))


@router.get("/models/{model}/versions/{version}/lineage", summary="A version's lineage")
def lineage(caller: Acting, model: str = ModelName, version: int = VersionNumber) -> dict[str, Any]:
    found = caller.store.get_model_version(model, version)
    return _lineage(lineage_chain(caller.store, found))


@router.get("/models/{model}/versions/{version}/card", summary="A version's model card")
def card(caller: Acting, model: str = ModelName, version: int = VersionNumber) -> dict[str, Any]:
    found, text = version_card(caller.store, f"{model}:{version}")
    return {"ref": found.ref, "card": text}


@router.put("/models/{model}/aliases/{alias}", summary="Set an alias (audited)")
def set_alias(
    body: AliasBody, caller: Acting, model: str = ModelName, alias: str = AliasName
) -> dict[str, Any]:
    moved = caller.store.set_alias(
        model, alias, body.version, override_gates=body.override_gates_reason
    )
    return version_json(moved)


@router.delete("/models/{model}/aliases/{alias}", summary="Delete an alias (audited)")
def delete_alias(caller: Acting, model: str = ModelName, alias: str = AliasName) -> dict[str, Any]:
    return version_json(caller.store.delete_alias(model, alias))


@router.post("/models/{model}/versions/{version}/archive", summary="Archive a version")
def archive(caller: Acting, model: str = ModelName, version: int = VersionNumber) -> dict[str, Any]:
    return version_json(caller.store.archive_model_version(model, version))


@router.patch("/models/{model}/versions/{version}/tags", summary="Set and remove tags")
def tags(
    body: TagsBody, caller: Acting, model: str = ModelName, version: int = VersionNumber
) -> dict[str, Any]:
    if not body.set and not body.remove:
        raise ConfigError("no tags given", hint='Send {"set": {"KEY": "VALUE"}} and/or "remove".')
    return version_json(set_tags(caller.store, f"{model}:{version}", body.set, body.remove))


__all__ = ["router"]
