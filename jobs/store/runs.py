"""The store's production runs: one per dbt invocation, with every node's result; mixed into `Store`."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy.exc import IntegrityError

from jobs.core.errors import NotFound, StoreError
from jobs.core.runs import GREEN, NodeRun, Run
from jobs.store.database import run_nodes, runs

_NODE_FIELDS = [f.name for f in dataclasses.fields(NodeRun)]
_RUN_FIELDS = [f.name for f in dataclasses.fields(Run) if f.name not in ("nodes", "id")]


class RunStore:
    """Persistence of ingested runs; needs the `_transaction()` and `clock` of `jobs.store.store.Store`."""

    def record_run(self, run: Run) -> tuple[Run, bool]:
        """Record `run` and its nodes in one transaction; a run already recorded (same invocation ID)
        is returned as stored, unchanged, with False."""
        row = {name: getattr(run, name) for name in _RUN_FIELDS} | {"ingested_at": self.clock.now()}
        try:
            with self._transaction(write=True) as conn:
                run_id = conn.execute(runs.insert().values(row).returning(runs.c.id)).scalar_one()
                if run.nodes:
                    conn.execute(run_nodes.insert(), [
                        {name: getattr(node, name) for name in _NODE_FIELDS} | {"run_id": run_id, "position": i}
                        for i, node in enumerate(run.nodes)])
        except IntegrityError as exc:
            existing = self.find_run(run.invocation_id)
            if existing is not None:
                return existing, False
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else "constraint violated"
            raise StoreError(f"could not record run {run.invocation_id}: {reason}") from exc
        return self.run(run.invocation_id), True

    def find_run(self, invocation_id: str) -> Run | None:
        """The run dbt gave this invocation ID (a unique prefix will do), if it was ingested."""
        query = runs.select().where(runs.c.invocation_id.startswith(invocation_id, autoescape=True)).limit(2)
        with self._transaction() as conn:
            found = conn.execute(query).mappings().all()
            if len(found) != 1:
                return None
            return _run(found[0], self._nodes(conn, [found[0]["id"]]))

    def cloud_run(self, cloud_run_id: int) -> Run | None:
        """The run ingested from this dbt Cloud run, if any (a webhook delivered again needs no fetch)."""
        query = runs.select().where(runs.c.cloud_run_id == cloud_run_id).order_by(runs.c.id).limit(1)
        with self._transaction() as conn:
            row = conn.execute(query).mappings().first()
            return _run(row, self._nodes(conn, [row["id"]])) if row else None

    def run(self, invocation_id: str) -> Run:
        found = self.find_run(invocation_id)
        if found is None:
            raise NotFound(f"no run {invocation_id!r} in the store (or the prefix names several); "
                           "`cairn runs` lists them")
        return found

    def runs(self, limit: int = 10) -> list[Run]:
        """The latest runs, newest first (by when dbt finished them)."""
        return self._fetch(runs.select().order_by(runs.c.generated_at.desc(), runs.c.id.desc()).limit(limit))

    def last_green(self, unique_id: str, before: Run, look_back: int = 50) -> Run | None:
        """The latest run before `before` in which the node passed (`success`, `pass`); else the latest
        without any failure, in which the node did not run or did not exist yet (docs/runs.md)."""
        earlier = self._around(runs.c.generated_at < before.generated_at, runs.c.generated_at.desc(), look_back)
        return next((r for r in earlier if _passed(r, unique_id)), None) or next((r for r in earlier if not r.failures),
                                                                                 None)

    def green_since(self, unique_id: str, after: Run, look_ahead: int = 50) -> Run | None:
        """The first run after `after` in which the node passed: a failure ingested late is already healed."""
        later = self._around(runs.c.generated_at > after.generated_at, runs.c.generated_at, look_ahead)
        return next((r for r in later if _passed(r, unique_id)), None)

    def _around(self, where, order, limit: int) -> list[Run]:
        return self._fetch(runs.select().where(where).order_by(order, runs.c.id).limit(limit))

    def _fetch(self, query) -> list[Run]:
        """The runs `query` selects, each with its nodes, read in one transaction."""
        with self._transaction() as conn:
            rows = conn.execute(query).mappings().all()
            nodes = self._nodes(conn, [row["id"] for row in rows])
        return [_run(row, nodes) for row in rows]

    @staticmethod
    def _nodes(conn, run_ids: list[int]) -> dict[int, list[NodeRun]]:
        found: dict[int, list[NodeRun]] = {run_id: [] for run_id in run_ids}
        if not run_ids:
            return found
        query = run_nodes.select().where(run_nodes.c.run_id.in_(run_ids)).order_by(
            run_nodes.c.run_id, run_nodes.c.position)
        for row in conn.execute(query).mappings():
            found[row["run_id"]].append(NodeRun(**{name: row[name] for name in _NODE_FIELDS}))
        return found


def _run(row: Any, nodes: dict[int, list[NodeRun]]) -> Run:
    return Run(**{name: row[name] for name in _RUN_FIELDS}, id=row["id"], nodes=tuple(nodes.get(row["id"], ())))


def _passed(run: Run, unique_id: str) -> bool:
    return any(n.unique_id == unique_id and n.status in GREEN for n in run.nodes)
