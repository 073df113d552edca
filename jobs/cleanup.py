"""What a crashed worker can leave behind, removed by the clock before every check."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from jobs.runtime import Runtime


def remove_stale_sandboxes(rt: Runtime) -> Iterator[str]:
    """Remove, and name one by one, stale local sandboxes then expired BigQuery sandbox datasets.

    Local ones are older than the longest verification could run; BigQuery's are past their
    expiration (`cairn sandbox gc`). A generator, so that a BigQuery failure raised at the end
    comes after every local removal has been reported.
    """
    from jobs.warehouse.sandbox import gc_sandboxes

    now = rt.clock.now()
    stale = rt.config.settings.queue.timeouts["verify"] + timedelta(hours=1)
    for removed in gc_sandboxes(rt.sandboxes_root, stale, now):
        yield f"removed stale sandbox {removed}"
    bigquery = rt.config.settings.bigquery
    if bigquery is None:
        return
    from jobs.warehouse.bigquery import client_for
    from jobs.warehouse.bigquery_sandbox import gc_sandboxes as gc_datasets

    for name in gc_datasets(client_for(bigquery, rt.config.root), org=bigquery.org, now=now):
        yield f"dropped expired sandbox dataset {name}"
