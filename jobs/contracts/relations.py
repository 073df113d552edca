"""Contracts meet the dbt manifest: the node each contract reads, and contracts declared in dbt YAML."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from jobs.contracts.spec import Contract
from jobs.core.errors import ConfigError, ContractError


def _models(manifest: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    return (n for n in manifest.get("nodes", {}).values() if n.get("resource_type") == "model")


def _source_key(node: Mapping[str, Any]) -> str:
    return f"{node['source_name']}.{node['name']}"


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def resolve(contract: Contract, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest node (model) or source the contract reads; never a guess."""
    if contract.source:
        sources = {_source_key(s): s for s in manifest.get("sources", {}).values()}
        if contract.source in sources:
            return sources[contract.source]
        raise ContractError(
            f"contract {contract.id!r} reads source {contract.source!r}, which the dbt manifest "
            f"does not declare.{_suggest(contract.source, sorted(sources))}"
        )
    matches = [n for n in _models(manifest) if n["name"] == contract.model]
    versions = {n.get("version") for n in matches}
    if len(matches) > 1 and len(versions) == len(matches):
        # A versioned model: `model: name` means what ref('name') means, the latest version.
        matches = [n for n in matches if n.get("version") == n.get("latest_version")]
    if len(matches) == 1:
        return matches[0]
    if matches:
        ids = ", ".join(sorted(n["unique_id"] for n in matches))
        raise ContractError(
            f"contract {contract.id!r}: model {contract.model!r} is ambiguous in the dbt manifest "
            f"({ids}); rename one of them."
        )
    disabled = [
        n for nodes in manifest.get("disabled", {}).values() for n in nodes
        if n.get("resource_type") == "model" and n.get("name") == contract.model
    ]
    if disabled:
        raise ContractError(
            f"contract {contract.id!r} reads model {contract.model!r}, which is disabled in dbt; "
            "enable it or remove the contract."
        )
    names = sorted({n["name"] for n in _models(manifest)})
    raise ContractError(
        f"contract {contract.id!r} reads model {contract.model!r}, which the dbt manifest does "
        f"not have.{_suggest(contract.model or '', names)}"
    )


def _declared_in(node: Mapping[str, Any]) -> str:
    """The YAML file that patches the node (where `meta` is written), else its own file."""
    patch = node.get("patch_path")  # 'project_name://models/schema.yml'
    return patch.split("://", 1)[-1] if patch else node.get("original_file_path", node["unique_id"])


def _cairn_meta(node: Mapping[str, Any]) -> tuple[str, Any]:
    """`config.meta.cairn` (dbt 1.10+), else the top-level `meta.cairn`; with its path for messages."""
    for path, meta in (("config.meta", (node.get("config") or {}).get("meta")), ("meta", node.get("meta"))):
        if isinstance(meta, Mapping) and "cairn" in meta:
            return f"{path}.cairn", meta["cairn"]
    return "", None


def _field(loc: tuple[Any, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def contracts_from_manifest(manifest: Mapping[str, Any]) -> list[Contract]:
    """Contracts declared beside models and sources in dbt YAML (`meta: {cairn: {contracts: [...]}}`)."""
    owners = [(n, "model") for n in _models(manifest)]
    owners += [(s, "source") for s in manifest.get("sources", {}).values()]
    contracts: list[Contract] = []
    seen: dict[str, str] = {}
    for node, field in owners:
        path, cairn = _cairn_meta(node)
        if cairn is None:
            continue
        file = _declared_in(node)
        name = node["name"] if field == "model" else _source_key(node)
        where = f"{file}: {field} {name!r}: {path}.contracts"
        declared = cairn.get("contracts") if isinstance(cairn, Mapping) else None
        if not isinstance(declared, list) or not all(isinstance(d, Mapping) for d in declared):
            raise ConfigError(f"{where}: expected a list of contracts, got {_short(declared)}")
        for i, declaration in enumerate(declared):
            named = declaration.get(field)
            if named not in (None, name) or declaration.get("model" if field == "source" else "source"):
                raise ConfigError(
                    f"{where}[{i}]: a contract declared on {field} {name!r} must read it; "
                    "declare it beside the model it reads, or in cairn.yml."
                )
            try:
                contract = Contract.model_validate({**declaration, field: name, "declared_in": file})
            except ValidationError as error:
                problems = "; ".join(
                    f"{where}[{i}]{_field(e['loc'])}: {e['msg']} (got {_short(e['input'])})"
                    for e in error.errors()
                )
                raise ConfigError(problems) from None
            if contract.id in seen:
                raise ConfigError(
                    f"{where}[{i}].id: contract id {contract.id!r} is also declared in "
                    f"{seen[contract.id]}; ids must be unique."
                )
            seen[contract.id] = file
            contracts.append(contract)
    return contracts
