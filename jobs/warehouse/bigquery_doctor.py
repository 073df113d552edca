"""`cairn doctor` on BigQuery: can Cairn's credentials read production, write sandboxes, and not write production?

IAM is layer (c), the last boundary. BigQuery's API tests table permissions
(`tables.testIamPermissions`), which reflect grants on the table and those inherited from its
dataset and project: every production relation in the manifest is tested. Reading is shown by a
(free) dry run per dataset; the sandbox project by creating and dropping an empty, expiring dataset.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from jobs.core.errors import CairnError
from jobs.warehouse import identifier
from jobs.warehouse.bigquery import BigQueryWarehouse, api_reason
from jobs.warehouse.bigquery_sandbox import LABEL_ORG, PREFIX

# Any of these on a production table means the credentials could change production.
WRITE_PERMISSIONS = ("bigquery.tables.update", "bigquery.tables.updateData", "bigquery.tables.delete")


@dataclass(frozen=True)
class Finding:
    ok: bool
    check: str
    detail: str


def production_tables(manifest: Mapping[str, Any], project: str) -> list[tuple[str, str, str]]:
    """Every relation a model builds in production's `project`, per the dbt manifest."""
    found = set()
    for node in manifest.get("nodes", {}).values():
        materialized = (node.get("config") or {}).get("materialized")
        if node.get("resource_type") in ("model", "snapshot") and materialized != "ephemeral":
            if (node.get("database") or project) == project:
                found.add((project, node["schema"], identifier(node)))
    return sorted(found)


def doctor(client: Any, *, project: str, location: str, org: str,
           manifest: Mapping[str, Any]) -> list[Finding]:
    """Every check, each a Finding; `client` is Cairn's own (jobs in the sandbox project)."""
    from google.api_core.exceptions import GoogleAPIError, NotFound

    findings = [_sandbox_writable(client, location, org)]
    tables = production_tables(manifest, project)
    if not tables:
        findings.append(Finding(False, "production tables", f"no built model of project {project!r} in the "
                                "dbt manifest: check bigquery.project against the production target."))
    reader = BigQueryWarehouse(client)
    read: set[tuple[str, str]] = set()
    for table in tables:
        name = ".".join(table)
        if table[:2] not in read:  # reading one table per dataset shows the dataset's grant
            read.add(table[:2])
            try:
                reader.dry_run(f"SELECT * FROM `{name}`")
                findings.append(Finding(True, f"read {name}", "a dry run may read it"))
            except CairnError as error:
                findings.append(Finding(False, f"read {name}", f"{error}: grant roles/bigquery.dataViewer "
                                        f"on dataset {table[0]}.{table[1]}"))
        try:
            granted = client.test_iam_permissions(name, list(WRITE_PERMISSIONS)).get("permissions", [])
        except NotFound:
            findings.append(Finding(True, f"no write to {name}", "not built yet: nothing to test"))
            continue
        except GoogleAPIError as error:
            findings.append(Finding(False, f"no write to {name}", f"cannot test permissions: {api_reason(error)}"))
            continue
        if granted:
            findings.append(Finding(False, f"no write to {name}", (
                f"PRODUCTION IS WRITABLE with these credentials ({', '.join(sorted(granted))}): remove "
                f"write roles on {table[0]}.{table[1]} and project {table[0]}; Cairn needs only "
                "roles/bigquery.dataViewer there.")))
        else:
            findings.append(Finding(True, f"no write to {name}", "none of " + ", ".join(WRITE_PERMISSIONS)))
    return findings


def _sandbox_writable(client: Any, location: str, org: str) -> Finding:
    """Create and drop an empty dataset in the sandbox project, labelled and expiring like a sandbox."""
    from google.api_core.exceptions import GoogleAPIError
    from google.cloud import bigquery

    name = f"{client.project}.{PREFIX}doctor_{uuid.uuid4().hex[:6]}"
    dataset = bigquery.Dataset(name)
    dataset.location = location
    dataset.labels = {LABEL_ORG: org}
    dataset.default_table_expiration_ms = int(timedelta(hours=1).total_seconds() * 1000)
    check = f"create sandboxes in {client.project} ({location})"
    try:
        client.create_dataset(dataset)
        client.delete_dataset(name, delete_contents=True, not_found_ok=True)
    except GoogleAPIError as error:
        return Finding(False, check, f"{api_reason(error)}: grant roles/bigquery.dataOwner (or a role with "
                       f"bigquery.datasets.create and .delete) on project {client.project}")
    return Finding(True, check, f"created and dropped {name}")
