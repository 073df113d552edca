"""Verification on a project that uses a dbt package, installed by `dbt deps` into a git-ignored
dbt_packages/ as in nearly every real repository. The package is a `local:` one outside the
repository (the package hub cannot be reached here): `shop_utils`, whose `to_dollars` macro
stg_plans uses, so it sits in the path from every culprit below to mrr.level.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from jobs.config import load_config
from jobs.core.clock import Clock
from jobs.propose.prbody import plain
from jobs.runtime import Runtime
from tests.test_scenarios import CHECK, MRR, Case, Commit, Edit, build_baseline, change, run_case, window

pytestmark = pytest.mark.slow

USES_PACKAGE = "{{ shop_utils.to_dollars('monthly_price_cents') }} as monthly_price"
MACRO = "{% macro to_dollars(column) %}cast({{ column }} / DIVISOR as decimal(18, 2)){% endmacro %}\n"


def vendor(root: Path, name: str, divisor: int) -> Path:
    """A package `shop_utils` at `root/name` whose to_dollars divides by `divisor`."""
    path = root / name
    (path / "macros").mkdir(parents=True)
    (path / "dbt_project.yml").write_text('name: shop_utils\nversion: "1.0.0"\nconfig-version: 2\n'
                                          'macro-paths: ["macros"]\n')
    (path / "macros" / "to_dollars.sql").write_text(MACRO.replace("DIVISOR", str(divisor)))
    return path


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The scenario baseline with shop_utils 1.0 declared in packages.yml and used by stg_plans."""
    root = tmp_path_factory.mktemp("packaged")
    v1, v2 = vendor(root / "vendor", "shop_utils_1", 100), vendor(root / "vendor", "shop_utils_2", 1000)

    def use_package(project: Path) -> None:
        (project / "packages.yml").write_text(f"packages:\n  - local: {v1}\n")
        plans = project / "models" / "staging" / "stg_plans.sql"
        plans.write_text(plans.read_text().replace(
            "{{ cents_to_dollars('monthly_price_cents') }} as monthly_price", USES_PACKAGE))

    baseline = build_baseline(root / "shop", use_package)
    assert (baseline / "dbt_packages" / "shop_utils").is_symlink()  # installed by the deploy's dbt deps
    assert "dbt_packages" in (baseline / ".gitignore").read_text()
    return baseline, v1, v2


def verified(case: Case, baseline: Path, root: Path) -> dict:
    """Run the case; its mrr.level incident's verification, which must have opened a PR for the culprit."""
    run = run_case(baseline, case, root)
    assert run.build.success, run.build.failures
    got = run.found[MRR]
    culprit = run.shas[next(c.message for c in case.commits if c.breaks)]
    assert (got.verdict, got.fixed_by, got.attribution_top) == ("verified", [culprit], culprit), got
    assert got.pr is not None and culprit in got.pr_message
    rt = Runtime(load_config(root / "cairn.yml", env={}), Clock(CHECK))
    try:
        verification = rt.store.incident(got.incident).details.verification
        body = rt.store.pull_request_row(got.incident)["body"]
    finally:
        rt.close()
    assert f"| dbt packages | {plain(verification.fix.packages)} |" in body  # the PR says how
    return verification


def test_a_revert_through_a_package_macro_builds_with_productions_packages(packaged, tmp_path: Path) -> None:
    baseline, _, _ = packaged
    case = Case("package_macro_in_path", window(change(
        "Plan prices: convert mills to dollars", "models/staging/stg_plans.sql", USES_PACKAGE,
        "cast(monthly_price_cents / 1000 as decimal(18, 2)) as monthly_price", (MRR,))), {MRR: "verified"})
    verification = verified(case, baseline, tmp_path / "shop")
    # The worktree has no dbt_packages/ (git-ignored); the revert leaves packages.yml alone.
    assert verification.fix.packages == "reused production's installed packages (dbt_packages)"


def test_a_package_upgrade_is_a_suspect_and_its_revert_is_built_with_the_old_package(packaged, tmp_path: Path) -> None:
    baseline, v1, v2 = packaged
    upgrade = Commit("Upgrade shop_utils to 2.0", (Edit("packages.yml", str(v1), str(v2)),), (MRR,))
    case = Case("package_upgrade", window(upgrade), {MRR: "verified"})
    root = tmp_path / "shop"
    verification = verified(case, baseline, root)
    assert verification.fix.packages == "ran dbt deps in the worktree: the revert changes packages.yml"
    assert Path((root / "dbt_packages" / "shop_utils").readlink()) == v2  # production runs 2.0

    # Cairn's own parse of production installs the packages a checkout lacks.
    shutil.rmtree(root / "dbt_packages")
    rt = Runtime(load_config(root / "cairn.yml", env={}), Clock(CHECK))
    try:
        assert "macro.shop_utils.to_dollars" in rt.manifest["macros"]
    finally:
        rt.close()
    assert Path((root / "dbt_packages" / "shop_utils").readlink()) == v2
