"""What a sandbox build parses (jobs.verify.scope): a hand-made manifest for the rule, then real dbt proving that a
build on the narrowed project runs exactly the nodes, with the same results, as on the whole project."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import duckdb
import pathspec
import pytest

from jobs.core.errors import DbtError
from jobs.project.dbt import Dbt
from jobs.verify.scope import MARKER, ignored_files, kept_files, narrow, patterns

os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"


def _node(uid: str, path: str, parents: tuple[str, ...] = (), patch: str | None = None, package: str = "p") -> dict:
    return {"unique_id": uid, "resource_type": uid.split(".")[0], "name": uid.split(".")[-1],
            "package_name": package, "original_file_path": path, "depends_on": {"nodes": list(parents)},
            **({"patch_path": f"{package}://{patch}"} if patch else {})}


def hand_made() -> dict:
    """a <- b, a <- f, source t <- c, d <- e; b and c share _core.yml, a relationships test ties f to a,
    an exposure on e sits in its own file, a package model and a macro and group are never ignored."""
    nodes = [
        _node("model.p.a", "models/a.sql", patch="models/_a.yml"),
        _node("model.p.b", "models/b.sql", ("model.p.a",), patch="models/_core.yml"),
        _node("model.p.c", "models/c.sql", ("source.p.raw.t",), patch="models/_core.yml"),
        _node("model.p.d", "models/d.sql"),
        _node("model.p.e", "models/e.sql", ("model.p.d",)),
        _node("model.p.f", "models/f.sql", ("model.p.a",)),
        _node("model.p.weird", "models/weird[1].sql"),
        _node("test.p.rel_f_a", "models/_f.yml", ("model.p.f", "model.p.a")),
        _node("test.p.unique_d", "models/_d.yml", ("model.p.d",)),
        _node("model.pkg.x", "models/x.sql", package="pkg"),
    ]
    manifest = {"metadata": {"project_name": "p"}, "nodes": {n["unique_id"]: n for n in nodes},
                "sources": {"source.p.raw.t": _node("source.p.raw.t", "models/_src.yml")},
                "exposures": {"exposure.p.dash": _node("exposure.p.dash", "models/_exposures.yml", ("model.p.e",))},
                "macros": {"macro.p.m": _node("macro.p.m", "macros/m.sql", patch="models/_core.yml")},
                "groups": {"group.p.g": _node("group.p.g", "models/_groups.yml")}}
    resources = {**manifest["nodes"], **manifest["sources"], **manifest["exposures"]}
    manifest["parent_map"] = {uid: r["depends_on"]["nodes"] for uid, r in resources.items()}
    manifest["child_map"] = {uid: [c for c, r in resources.items() if uid in r["depends_on"]["nodes"]]
                             for uid in resources}
    return manifest


ALL = {"models/a.sql", "models/_a.yml", "models/b.sql", "models/_core.yml", "models/c.sql", "models/d.sql",
       "models/e.sql", "models/f.sql", "models/weird[1].sql", "models/_f.yml", "models/_d.yml", "models/_src.yml",
       "models/_exposures.yml"}


@pytest.mark.parametrize("roots, kept", [
    # b's YAML also patches c (and its source); a's test on f brings f and the test's file.
    (["model.p.b"], {"models/b.sql", "models/_core.yml", "models/c.sql", "models/_src.yml", "models/a.sql",
                     "models/_a.yml", "models/f.sql", "models/_f.yml"}),
    # e's own test comes with d; the exposure on e lives elsewhere and is not needed to build e.
    (["model.p.e"], {"models/e.sql", "models/d.sql", "models/_d.yml"}),
    # An exposure's file, once kept, brings what it depends on.
    (["exposure.p.dash"], {"models/_exposures.yml", "models/e.sql", "models/d.sql", "models/_d.yml"}),
    (["model.p.b", "model.p.e"], ALL - {"models/weird[1].sql", "models/_exposures.yml"}),
    (["model.p.nowhere"], set()),
])
def test_kept_files_follow_parents_shared_files_and_tests(roots: list[str], kept: set[str]) -> None:
    manifest = hand_made()
    assert kept_files(manifest, roots) == kept
    # Never ignored: another package's files, macros (and their patch files), group definitions.
    assert ignored_files(manifest, roots) == sorted(ALL - kept - {"models/_core.yml"})


def test_narrow_writes_after_the_projects_own_lines_and_widen_restores_them(tmp_path: Path) -> None:
    for path in ALL | {"models/x.sql", "macros/m.sql", "models/_groups.yml"}:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    (tmp_path / ".dbtignore").write_text("scratch/")
    narrowed = narrow(tmp_path, hand_made(), ["model.p.e"])
    text = (tmp_path / ".dbtignore").read_text()
    assert text.startswith(f"scratch/\n{MARKER}\n") and narrowed.ignored > 0
    spec = pathspec.PathSpec.from_lines(pathspec.patterns.GitWildMatchPattern, text.splitlines())
    ignored = {p for p in ALL | {"models/x.sql", "macros/m.sql", "models/_groups.yml"} if spec.match_file(p)}
    assert ignored == set(ignored_files(hand_made(), ["model.p.e"]))  # `weird[1].sql` matched literally
    assert narrowed.widen() and (tmp_path / ".dbtignore").read_text() == "scratch/"
    assert not narrowed.widen()


def test_nothing_is_ignored_when_a_root_is_unknown(tmp_path: Path) -> None:
    narrowed = narrow(tmp_path, hand_made(), ["model.p.b", None])
    assert narrowed.ignored == 0 and not (tmp_path / ".dbtignore").exists()


def test_a_directory_is_one_pattern_only_when_every_file_in_it_is_ignored(tmp_path: Path) -> None:
    for path in ("models/a/x.sql", "models/a/y.sql", "models/a/deep/z.sql", "models/b/x.sql", "models/b/new.sql"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    # models/b/new.sql is on disk but not in the manifest (a file a revert brought back): never ignored.
    got = patterns(tmp_path, ["models/a/x.sql", "models/a/y.sql", "models/a/deep/z.sql", "models/b/x.sql"])
    assert got == ["models/a/", "models/b/x.sql"]


def test_fallback_calls_again_on_the_whole_project_once(tmp_path: Path) -> None:
    narrowed = narrow(tmp_path, hand_made(), ["model.p.e"])
    calls = []

    def flaky() -> str:
        calls.append((tmp_path / ".dbtignore").exists())
        if len(calls) == 1:
            raise DbtError("depends on a node named 'c' which was not found")
        return "built"

    assert narrowed.fallback(flaky) == "built" and calls == [True, False]

    def broken() -> str:
        raise DbtError("does not parse")

    with pytest.raises(DbtError):
        narrowed.fallback(broken)  # already whole: the error is the project's own


# ---------------------------------------------------------------- real dbt

PROJECT = {
    "dbt_project.yml": 'name: p\nversion: "1.0.0"\nconfig-version: 2\nprofile: p\n'
                       "models:\n  p:\n    +materialized: table\n",
    "profiles.yml": "p:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
                    "      path: \"{{ env_var('SCOPE_DB') }}\"\n      schema: main\n      threads: 1\n",
    "macros/double.sql": "{% macro double(x) %}({{ x }} * 2){% endmacro %}\n",
    "models/staging/stg_a.sql": "select id, {{ double('v') }} as v from {{ source('raw', 'a') }}\n",
    "models/staging/stg_b.sql": "select id, v from {{ source('raw', 'b') }}\n",
    "models/staging/_staging.yml": """version: 2
sources:
  - name: raw
    schema: raw
    tables: [{name: a}, {name: b}]
models:
  - name: stg_a
    columns: [{name: id, data_tests: [unique, not_null]}]
  - name: stg_b
    columns: [{name: id, data_tests: [unique]}]
""",
    "models/core/int_ab.sql": "select a.id, a.v + b.v as v\n"
                              "from {{ ref('stg_a') }} a join {{ ref('stg_b') }} b using (id)\n",
    "models/core/int_c.sql": "select id, v from {{ ref('stg_b') }} where v > 1\n",
    "models/core/_int_c.yml": """version: 2
models:
  - name: int_c
    columns:
      - name: id
        data_tests: [{relationships: {arguments: {to: "ref('stg_a')", field: id}}}]
""",
    "models/marts/fct_x.sql": "select sum(v) as total from {{ ref('int_ab') }}\n",
    "models/marts/fct_y.sql": "select count(*) as n from {{ ref('int_c') }}\n",
    "models/marts/_x.yml": "version: 2\nmodels:\n  - name: fct_x\n"
                           "    columns: [{name: total, data_tests: [not_null]}]\n",
    "models/other/o1.sql": "select 1 as id\n",
    "models/other/o2.sql": "select * from {{ ref('o1') }}\n",
    "models/other/_other.yml": """version: 2
models:
  - name: o2
    columns: [{name: id, data_tests: [unique]}]
exposures:
  - name: board
    type: dashboard
    owner: {email: data@example.com}
    depends_on: [ref('o2'), ref('fct_y')]
""",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The project built once (the production database) and its full manifest."""
    root = tmp_path_factory.mktemp("scope") / "p"
    for path, text in PROJECT.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    con = duckdb.connect(str(root.parent / "prod.duckdb"))
    con.execute("create schema raw; create table raw.a as select range as id, range as v from range(5);"
                "create table raw.b as select range as id, range % 3 as v from range(5)")
    con.close()
    result = _dbt(root, root.parent / "prod.duckdb").build()
    assert result.success, result.failures
    return root, json.loads((root / "target" / "manifest.json").read_text())


def _dbt(project: Path, db: Path) -> Dbt:
    return Dbt(project, project, target_path=project / "target", env={"SCOPE_DB": str(db)})


def _build(root: Path, tmp: Path, name: str, select: str, narrowed_by: dict | None,
           roots: list[str]) -> tuple[dict, set]:
    """`dbt build --select` on a copy of the project and of production; {unique_id: status}, and the
    nodes dbt parsed."""
    project = tmp / name
    shutil.copytree(root, project, ignore=shutil.ignore_patterns("target", "logs"))
    shutil.copy(root.parent / "prod.duckdb", tmp / f"{name}.duckdb")
    if narrowed_by is not None:
        narrow(project, narrowed_by, roots)
    result = _dbt(project, tmp / f"{name}.duckdb").build(select=select)
    parsed = json.loads((project / "target" / "manifest.json").read_text())["nodes"]
    return {n.unique_id: n.status for n in result.nodes}, set(parsed)


@pytest.mark.parametrize("changed, metric", [("stg_a", "fct_x"), ("stg_b", "fct_x"), ("stg_b", "fct_y"),
                                             ("int_c", "fct_y"), ("o1", "o2")])
def test_a_narrowed_build_runs_what_the_whole_project_runs(built, tmp_path: Path, changed: str, metric: str) -> None:
    root, manifest = built
    select = f"{changed}+,+{metric}"
    roots = [f"model.p.{changed}", f"model.p.{metric}"]
    assert ignored_files(manifest, roots), "the case must leave something out"
    whole, everything = _build(root, tmp_path, "whole", select, None, roots)
    narrowed, parsed = _build(root, tmp_path, "narrowed", select, manifest, roots)
    assert whole and narrowed == whole
    assert parsed < everything and everything == set(manifest["nodes"])  # dbt honoured the .dbtignore


def test_a_revert_reaching_outside_the_scope_builds_on_the_whole_project(built, tmp_path: Path) -> None:
    root, manifest = built
    project = tmp_path / "p"
    shutil.copytree(root, project, ignore=shutil.ignore_patterns("target", "logs"))
    shutil.copy(root.parent / "prod.duckdb", tmp_path / "p.duckdb")
    narrowed = narrow(project, manifest, ["model.p.stg_a", "model.p.fct_x"])
    assert "/models/other/" in (project / ".dbtignore").read_text()
    # The "reverted" fct_x now also reads o2, which the production manifest put outside the scope.
    (project / "models/marts/fct_x.sql").write_text("select sum(v) as total from {{ ref('int_ab') }}\n"
                                                    "cross join (select count(*) from {{ ref('o2') }})\n")
    dbt = _dbt(project, tmp_path / "p.duckdb")
    with pytest.raises(DbtError):
        dbt.build(select="stg_a+,+fct_x")
    result = narrowed.fallback(lambda: dbt.build(select="stg_a+,+fct_x"))
    assert result.success and "model.p.fct_x" in {n.unique_id for n in result.nodes}
    assert not (project / ".dbtignore").exists()
