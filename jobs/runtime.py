"""What a stage needs, built lazily from one Config: store, dbt project, manifest, contracts, warehouse."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from jobs.config import Config
from jobs.contracts import Contract
from jobs.dbt import Dbt
from jobs.errors import ConfigError, WarehouseError
from jobs.git import Git


class Runtime:
    """One process's view of a Cairn deployment; shared state lives in the store, never here."""

    def __init__(self, config: Config):
        self.config = config

    @cached_property
    def store(self):  # -> jobs.store.Store
        from jobs.store import Store

        return Store.open(self.config.store_url)

    @cached_property
    def dbt(self) -> Dbt:
        # Cairn's own parse goes to its own target path: the production `target/` is the deploy's.
        return Dbt(self.config.project_dir, self.config.profiles_dir, self.config.settings.target,
                   target_path=self.config.root / ".cairn" / "target")

    @cached_property
    def git(self) -> Git:
        return Git(self.config.repo_dir)

    @cached_property
    def manifest(self) -> dict[str, Any]:
        return self.dbt.parse()

    @cached_property
    def contracts(self) -> list[Contract]:
        """cairn.yml's contracts plus those declared beside models in dbt YAML; ids are unique."""
        from jobs.relations import contracts_from_manifest

        contracts = list(self.config.settings.contracts) + contracts_from_manifest(self.manifest)
        seen: dict[str, str] = {}
        for contract in contracts:
            where = contract.declared_in or str(self.config.path)
            if contract.id in seen:
                raise ConfigError(f"{where}: contracts: id {contract.id!r} is also declared in {seen[contract.id]}")
            seen[contract.id] = where
        return contracts

    def contract(self, contract_id: str) -> Contract:
        for contract in self.contracts:
            if contract.id == contract_id:
                return contract
        known = ", ".join(c.id for c in self.contracts) or "none"
        raise ConfigError(f"no contract {contract_id!r}; known contracts: {known}")

    @cached_property
    def warehouse(self):  # -> jobs.warehouse.Warehouse
        credentials = self.dbt.credentials()
        if credentials.type == "duckdb":
            from jobs.warehouse.duckdb import DuckDBWarehouse

            # dbt resolves a relative path against where it runs; teams run it in the project dir.
            path = credentials.path
            if path != ":memory:" and not Path(path).is_absolute():
                path = str(self.config.project_dir / path)
            return DuckDBWarehouse(path, read_only=True)
        raise WarehouseError(f"dbt adapter {credentials.type!r} is not supported yet (duckdb is)")

    def deployed_sha(self) -> str:
        return self.git.head_sha(self.config.settings.branch)

    def close(self) -> None:
        """Release the warehouse file lock and the store's connections."""
        if "warehouse" in self.__dict__:
            self.__dict__.pop("warehouse").close()
        if "store" in self.__dict__:
            self.__dict__.pop("store").close()
