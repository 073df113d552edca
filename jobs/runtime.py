"""What a stage needs, built lazily from one Config: store, dbt project, manifest, contracts, warehouse."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from jobs.config import Config
from jobs.contracts.spec import Contract
from jobs.core.clock import Clock
from jobs.core.errors import ConfigError, WarehouseError
from jobs.project.dbt import Dbt
from jobs.project.git import Git
from jobs.project.isolation import Isolation, resolve

log = logging.getLogger(__name__)


class Runtime:
    """One process's view of a Cairn deployment; shared state lives in the store, never here."""

    def __init__(self, config: Config, clock: Clock | None = None, *, parse: bool = True):
        self.config = config
        self.clock = clock or Clock()  # the check's time: every stage and store timestamp reads it
        # parse=False (card refreshes): the manifest the last parse left on disk; dbt runs only if there is none
        # yet (a worker whose disk never saw a check), and that parse leaves it for the next refresh.
        self.parse = parse

    @cached_property
    def store(self):  # -> jobs.store.store.Store
        from jobs.store.store import Store

        return Store.open(self.config.store_url, clock=self.clock)

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
        cached = self.dbt.target_path / "manifest.json"
        if not self.parse and cached.is_file():
            return json.loads(cached.read_text())
        from jobs.project.packages import ensure_installed

        if (done := ensure_installed(self.dbt)) is not None:  # a checkout that git-ignores dbt_packages/
            log.info("%s", done)
        return self.dbt.parse()

    @cached_property
    def contracts(self) -> list[Contract]:
        """cairn.yml's contracts plus those declared beside models in dbt YAML; ids are unique."""
        from jobs.contracts.relations import contracts_from_manifest

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
    def credentials(self) -> Any:
        return self.dbt.credentials()

    @property
    def dialect(self) -> str:
        return self.credentials.type

    @cached_property
    def production_db(self) -> Path:
        """The production DuckDB file (dbt resolves a relative path where it runs: the project dir)."""
        if self.credentials.type != "duckdb":
            raise WarehouseError(f"dbt adapter {self.credentials.type!r} has no database file")
        path = Path(self.credentials.path)
        return path if path.is_absolute() else self.config.project_dir / path

    @cached_property
    def warehouse(self):  # -> jobs.warehouse.Warehouse
        bigquery = self.config.settings.bigquery
        if bigquery is not None:
            from jobs.warehouse.bigquery import BigQueryWarehouse, client_for

            if self.credentials.type != "bigquery":
                raise ConfigError(f"{self.config.path}: bigquery: is set, but the dbt target is "
                                  f"{self.credentials.type!r}; point `target` at the BigQuery one.")
            # Reads only: the guard refuses any write on a connection without a sandbox.
            return BigQueryWarehouse(client_for(bigquery, self.config.root),
                                     maximum_bytes_billed=bigquery.budget_bytes,
                                     labels={"cairn-org": bigquery.org})
        snowflake = self.config.settings.snowflake
        if snowflake is not None:
            from jobs.warehouse.snowflake_sandbox import query_tag

            if self.credentials.type != "snowflake":
                raise ConfigError(f"{self.config.path}: snowflake: is set, but the dbt target is "
                                  f"{self.credentials.type!r}; point `target` at the Snowflake one.")
            # Reads only: the guard refuses any write on a session without a sandbox.
            return self.sandboxes().connection(query_tag(snowflake.org, "measure"))
        if self.credentials.type == "duckdb":
            from jobs.warehouse.duckdb import DuckDBWarehouse

            return DuckDBWarehouse(str(self.production_db), read_only=True)
        raise WarehouseError(f"dbt adapter {self.credentials.type!r} is not supported yet (duckdb is)")

    @property
    def project_subdir(self) -> str:
        """The dbt project's place inside the git repository ('' at its root)."""
        try:
            subdir = self.config.project_dir.relative_to(self.config.repo_dir)
        except ValueError:
            raise ConfigError(f"{self.config.path}: project {self.config.project_dir} is not inside "
                              f"repo {self.config.repo_dir}") from None
        return "" if str(subdir) == "." else subdir.as_posix()

    @property
    def state_dir(self) -> Path:
        """Production artifacts for --defer --state: Cairn's own parse of the deployed project."""
        self.manifest  # parse first
        return self.dbt.target_path

    def sandboxes(self, snapshot_at: datetime | None = None):  # -> jobs.warehouse.sandboxes.Sandboxes
        """Where verification builds: the production warehouse's sandbox adapter. `snapshot_at` is the
        production state clones hold where the warehouse can travel in time (BigQuery, Snowflake)."""
        bigquery = self.config.settings.bigquery
        if bigquery is not None:
            from jobs.warehouse.bigquery import client_for
            from jobs.warehouse.bigquery_sandbox import BigQuerySandboxes

            return BigQuerySandboxes(client_for(bigquery, self.config.root), bigquery, root=self.sandboxes_root,
                                     now=self.clock.now(), snapshot_at=snapshot_at, config_root=self.config.root,
                                     isolation=self.isolation)
        snowflake = self.config.settings.snowflake
        if snowflake is not None:
            from jobs.warehouse.snowflake_sandbox import SnowflakeSandboxes

            return SnowflakeSandboxes(snowflake, password=self.config.env.snowflake_password,
                                      passphrase=self.config.env.snowflake_private_key_passphrase,
                                      root=self.sandboxes_root, now=self.clock.now(), snapshot_at=snapshot_at,
                                      config_root=self.config.root, isolation=self.isolation)
        from jobs.warehouse.sandbox import DuckDBSandboxes

        return DuckDBSandboxes(self.production_db, self.sandboxes_root, isolation=self.isolation)

    @cached_property
    def isolation(self) -> Isolation:
        """How sandbox dbt runs (verification.isolation); Cairn's key file and SQLite store hidden from it."""
        settings = self.config.settings.verification
        hidden = [Path(self.config.env.github_app_private_key_file)] if self.config.env.github_app_private_key_file \
            else []
        forge = self.config.settings.forge
        if forge != "local" and forge.github.private_key_file:
            hidden.append(self.config.resolve(forge.github.private_key_file))
        if self.config.store_url.startswith("sqlite:///"):
            hidden.append(Path(self.config.store_url.removeprefix("sqlite:///")))
        return resolve(settings.isolation, settings.bwrap, settings.environment, hidden)

    @property
    def sandboxes_root(self) -> Path:
        return self.config.resolve(self.config.settings.verification.sandboxes)

    @cached_property
    def forge(self):  # -> jobs.forge.Forge
        forge = self.config.settings.forge
        if forge == "local":
            from jobs.forge.local import LocalForge

            return LocalForge(self.git, self.store)
        from jobs.forge.github import GitHubForge
        from jobs.forge.github_auth import github_credentials

        return GitHubForge(forge.github.repo, git=self.git, store=self.store, base_url=forge.github.base_url,
                           **github_credentials(self.config))

    @cached_property
    def policy(self):  # -> policies.model.Policy
        from policies.model import PolicyError, load_policy

        path = self.config.resolve(self.config.settings.policy) if self.config.settings.policy else None
        try:
            return load_policy(path)
        except PolicyError as exc:
            raise ConfigError(str(exc)) from None

    def deployed_sha(self) -> str:
        return self.git.head_sha(self.config.settings.branch)

    def kill_switch_over(self, models: Sequence[str]) -> Any:  # -> policies.decide.KillSwitch | None
        """The kill switch, read now, if it covers any of these models (by unique ID); an org-wide one
        covers everything, and the manifest is only parsed for a selector-scoped one."""
        from jobs.project.lineage import model_refs
        from jobs.store import switches

        kill = switches.kill_switch(self.store)
        if kill is None or not kill.selectors:
            return kill
        return kill if kill.covers(model_refs(self.manifest, models)) else None

    def kill_switch_for(self, *incidents: Any) -> Any:  # -> policies.decide.KillSwitch | None
        """The kill switch, read now, if it covers any of these incidents (`incident_models`)."""
        from jobs.store import switches

        if (kill := switches.kill_switch(self.store)) is None or not kill.selectors:
            return kill
        return self.kill_switch_over([m for incident in incidents for m in self.incident_models(incident)])

    def incident_models(self, incident: Any) -> list[str]:
        """The models an incident concerns: its metric's model (a failed run's: the failing model, or the models
        its failing test reads) and every model its suspects change."""
        from jobs.project.lineage import model_uid

        run = incident.details.run
        if run is not None:
            node = self.manifest["nodes"].get(run.node, {})
            concerned = [uid for uid in [run.node, *node.get("depends_on", {}).get("nodes", ())]
                         if uid.startswith("model.")][:1 if run.node.startswith("model.") else None]
        else:
            contract = next((c for c in self.contracts if c.id == incident.contract_id), None)
            concerned = [model_uid(self.manifest, contract.relation_name)] if contract else []
        suspects = incident.details.suspects
        changed = [m for c in suspects.candidates for m in c.models] if suspects else []
        return list(dict.fromkeys([*(m for m in concerned if m), *changed]))

    def close(self) -> None:
        """Release the warehouse file lock and the store's connections."""
        if "warehouse" in self.__dict__:
            self.__dict__.pop("warehouse").close()
        if "store" in self.__dict__:
            self.__dict__.pop("store").close()
