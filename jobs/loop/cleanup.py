"""What a crashed worker can leave behind: removed by the clock before every check, and by every reconcile."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from jobs.runtime import Runtime


def remove_stale_sandboxes(rt: Runtime) -> Iterator[str]:
    """Remove, and name one by one, stale local sandboxes and worktrees, then the warehouse adapter's
    expired sandboxes (BigQuery's datasets past their expiration: `cairn sandbox gc`).

    Local ones are older than the longest verification could run. A generator, so that a warehouse
    failure raised at the end comes after every local removal has been reported.
    """
    from jobs.warehouse.sandbox import gc_sandboxes

    now = rt.clock.now()
    stale = rt.config.settings.queue.timeouts["verify"] + timedelta(hours=1)
    for removed in gc_sandboxes(rt.sandboxes_root, stale, now):
        yield f"removed stale sandbox {removed}"
    for name in rt.sandboxes().gc(stale, now):
        yield f"dropped expired sandbox dataset {name}"


def remove_orphans(rt: Runtime, busy: set[int]) -> list[str]:
    """Remove the local sandboxes and worktrees of incidents no live job works on, then forget the removed
    worktrees in git; what was removed."""
    from jobs.warehouse.sandbox import remove_orphan_sandboxes

    removed = remove_orphan_sandboxes(rt.sandboxes_root, busy)
    if removed:
        rt.git.run("worktree", "prune", check=False)
    return [str(path) for path in removed]
