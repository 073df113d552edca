"""History over a real git repository holding a copy of the shop project."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from jobs.attribute.history import candidates, commits, compiled_sql_diff, diff, same_sql
from jobs.project.git import Git
from jobs.project.lineage import upstream
from tests.conftest import copy_shop
from tests.test_lineage import REVENUE, warehouse_schema

IDENTITY = ("-c", "user.name=Ada Analyst", "-c", "user.email=ada@example.com")


class Repo:
    """A git repository with the shop project at `subdir`, committed as its first commit."""

    def __init__(self, root: Path, subdir: str = ""):
        self.root, self.subdir = root, subdir
        copy_shop(root / subdir if subdir else root)
        self.git_cmd("init", "-q", "-b", "main")
        self.base = self.commit("Initial shop project")

    def git_cmd(self, *args: str) -> str:
        return subprocess.run(["git", *IDENTITY, "-C", str(self.root), *args], check=True,
                              capture_output=True, text=True).stdout

    def path(self, rel: str) -> Path:
        return self.root / self.subdir / rel if self.subdir else self.root / rel

    def edit(self, rel: str, old: str, new: str) -> None:
        text = self.path(rel).read_text()
        assert old in text, (rel, old)
        self.path(rel).write_text(text.replace(old, new, 1))

    def commit(self, message: str) -> str:
        self.git_cmd("add", "-A")
        self.git_cmd("commit", "-q", "--allow-empty", "-m", message)
        return self.git_cmd("rev-parse", "HEAD").strip()


@pytest.fixture(scope="module")
def lineage(built_shop):
    return upstream(built_shop.manifest, "fct_revenue", REVENUE, schema=warehouse_schema(built_shop.db_path))


@pytest.fixture
def repo(tmp_path) -> Repo:
    return Repo(tmp_path / "repo")


def by_sha(found):
    return {c.sha: c for c in found}


PAYMENTS = "models/staging/stg_payments.sql"
AMOUNT = "{{ cents_to_dollars('amount_cents') }} as amount,"


def test_range_is_last_good_exclusive_first_bad_inclusive(repo, lineage):
    repo.edit(PAYMENTS, "status as payment_status", "lower(status) as payment_status")
    last_good = repo.commit("Normalise payment status")
    repo.edit("models/marts/dim_customers.sql", "customers.email,", "lower(customers.email) as email,")
    unrelated = repo.commit("dim_customers reads from fct_orders but feeds nothing of fct_revenue")
    repo.edit("models/marts/fct_mrr.sql", "count(*) as new_subscriptions", "count(1) as new_subscriptions")
    mrr = repo.commit("fct_mrr: count(1)")
    repo.edit("models/staging/stg_orders.sql", "when 'shipped' then 'completed'", "when 'shipped' then 'pending'")
    orders = repo.commit("Shipped orders are pending")
    repo.edit("models/marts/fct_payments.sql", "payments.amount,", "payments.amount * 1 as amount,")
    first_bad = repo.commit("fct_payments: amount")

    git = Git(repo.root)
    assert [c.sha for c in commits(git, last_good, first_bad)] == [first_bad, orders, mrr, unrelated]
    found = candidates(git, lineage, last_good, first_bad)
    assert [c.sha for c in found] == [first_bad, orders]
    bad = found[0]
    assert bad.models == ("model.shop.fct_payments",) and bad.distance == 1
    assert bad.files == ("models/marts/fct_payments.sql",)
    assert bad.author == "Ada Analyst" and bad.authored_at.tzinfo is not None
    assert bad.touches_metric_columns is True and not bad.docs_only and not bad.intentional
    assert "payments.amount * 1" in bad.diff and bad.compiled_diff == ""
    assert found[1].distance == 2 and found[1].models == ("model.shop.stg_orders",)
    # Without a last good SHA, the last N commits: the initial commit and last_good come back in.
    assert {repo.base, last_good} <= {c.sha for c in candidates(git, lineage, None, first_bad)}
    assert len(commits(git, None, first_bad, limit=2)) == 2


def test_a_change_only_downstream_of_the_metric_is_not_a_candidate(repo, built_shop):
    repo.edit("models/marts/fct_revenue.sql", "sum(coupon_amount) as coupon_amount", "sum(coupon_amount) as coupons")
    sha = repo.commit("fct_revenue reads fct_payments; it is downstream of it")
    payments = upstream(built_shop.manifest, "fct_payments")
    assert candidates(Git(repo.root), payments, repo.base, sha) == []


def test_a_macro_change_touches_every_model_that_calls_it(repo, lineage):
    repo.edit("macros/cents_to_dollars.sql", "/ 100", "/ 1000")
    sha = repo.commit("Milli-dollars")
    (cand,) = candidates(Git(repo.root), lineage, repo.base, sha)
    assert set(cand.models) == {"model.shop.stg_payments", "model.shop.stg_refunds", "model.shop.stg_invoices",
                                "model.shop.stg_order_items"}
    assert cand.distance == 1  # stg_refunds feeds fct_revenue directly
    assert cand.touches_metric_columns is None  # the macro's text names no column


def test_a_project_config_change_touches_every_node(repo, lineage):
    repo.edit("dbt_project.yml", "orders_lookback_hours: 24", "orders_lookback_hours: 2")
    sha = repo.commit("Shorter lookback")
    (cand,) = candidates(Git(repo.root), lineage, repo.base, sha)
    assert set(cand.models) == set(lineage.distances) and cand.distance == 0
    assert not cand.docs_only


def test_docs_comment_and_whitespace_changes_are_docs_only(repo, lineage):
    git = Git(repo.root)
    repo.edit(PAYMENTS, "with source as (",
              "-- Payments from the processor.\n{# jinja note #}\nwith source as ( /* hi */")
    comment = repo.commit("Comment stg_payments")
    repo.edit("models/staging/_staging.yml", "description: Amount in dollars.", "description: Amount, in US dollars.")
    description = repo.commit("Describe amounts")
    repo.edit(PAYMENTS, "        payment_method,\n", "        payment_method   ,\n\n\n")
    whitespace = repo.commit("Whitespace")
    repo.edit("models/staging/_staging.yml", "description: Refunded amount in dollars.",
              "description: Refunded amount in dollars.\n        data_tests: [not_null]")
    test_added = repo.commit("Test refunds")
    repo.edit(PAYMENTS, AMOUNT, "{{ cents_to_dollars('amount_cents', scale=0) }} as amount,")
    real = repo.commit("Round amounts")

    found = by_sha(candidates(git, lineage, repo.base, real))
    assert found[comment].docs_only and found[description].docs_only and found[whitespace].docs_only
    assert not found[test_added].docs_only and not found[real].docs_only
    assert found[real].touches_metric_columns is True
    assert found[description].touches_metric_columns is None  # YAML: not judged by its text
    assert set(found[description].models) >= {"model.shop.stg_payments", "model.shop.stg_refunds"}


def test_same_sql():
    assert same_sql("select a from t -- x", "SELECT a\nFROM t /* y */")
    assert not same_sql("select a from t", "select b from t")
    assert same_sql("{# c #}select {{ x }} from t", "select   {{ x }}\nfrom t -- note")
    assert not same_sql("select {{ x }} from t", "select {{ y }} from t")


def test_touches_metric_columns_false_for_a_column_that_does_not_feed_the_metric(repo, lineage):
    repo.edit("models/marts/fct_orders.sql", "sum(quantity) as unit_count", "sum(quantity) + 0 as unit_count")
    sha = repo.commit("Units")
    (cand,) = candidates(Git(repo.root), lineage, repo.base, sha)
    assert cand.touches_metric_columns is False


def test_a_new_alias_of_a_feeding_column_does_not_touch_the_metric(repo, lineage):
    """`order_id as noop` names a column the metric needs, but adds an output nothing reads."""
    repo.edit(PAYMENTS, "status as payment_status,", "status as payment_status,\n        payment_id as payment_ref,")
    alias = repo.commit("Expose payment_id as payment_ref")
    repo.edit(PAYMENTS, "status as payment_status,", "lower(status) as payment_status,")
    changed = repo.commit("Lower-case payment status")
    found = {c.sha: c for c in candidates(Git(repo.root), lineage, repo.base, changed)}
    assert found[alias].touches_metric_columns is False
    assert found[changed].touches_metric_columns is True  # the feeding column's own definition


def test_a_condition_added_under_where_reshapes_rows(repo, lineage):
    """The changed line names no feeding column and no keyword: its clause, from the hunk, does."""
    path = "models/intermediate/int_order_payments.sql"
    repo.edit(path, "      and payment_status = 'succeeded'\n",
              "      and payment_status = 'succeeded'\n      and amount_cents > 0\n")
    sha = repo.commit("Only positive payments")
    (cand,) = candidates(Git(repo.root), lineage, repo.base, sha)
    assert cand.touches_metric_columns is True


def test_the_intentional_marker(repo, lineage):
    git = Git(repo.root)
    repo.edit(PAYMENTS, AMOUNT, "{{ cents_to_dollars('amount_cents', scale=3) }} as amount,")
    marked = repo.commit("Three decimals [cairn:intentional]")
    repo.edit(PAYMENTS, "scale=3", "scale=4")
    loose = repo.commit("Four decimals\n\nCairn: Intentional, finance asked for it")
    repo.edit(PAYMENTS, "scale=4", "scale=5")
    plain = repo.commit("Five decimals")
    found = by_sha(candidates(git, lineage, repo.base, plain))
    assert found[marked].intentional and found[loose].intentional and not found[plain].intentional
    custom = by_sha(candidates(git, lineage, repo.base, plain, intentional_markers=("five decimals",)))
    assert custom[plain].intentional and not custom[marked].intentional


def test_a_rename_is_followed(repo, lineage):
    repo.git_cmd("mv", "models/staging/stg_refunds.sql", "models/staging/refunds.sql")
    sha = repo.commit("Rename the refunds model file")
    (cand,) = candidates(Git(repo.root), lineage, repo.base, sha)
    assert cand.files == ("models/staging/stg_refunds.sql", "models/staging/refunds.sql")
    assert cand.models == ("model.shop.stg_refunds",)
    (change,) = commits(Git(repo.root), repo.base, sha)[0].files
    assert (change.status, change.old_path, change.path) == ("R", "models/staging/stg_refunds.sql",
                                                            "models/staging/refunds.sql")
    assert "rename from models/staging/stg_refunds.sql" in cand.diff


def test_a_merge_is_diffed_against_its_first_parent(repo, lineage):
    repo.git_cmd("checkout", "-q", "-b", "feature")
    repo.edit(PAYMENTS, AMOUNT, "{{ cents_to_dollars('amount_cents', scale=0) }} as amount,")
    branch = repo.commit("Round amounts")
    repo.git_cmd("checkout", "-q", "main")
    repo.edit("models/marts/fct_mrr.sql", "count(*) as new_subscriptions", "count(1) as new_subscriptions")
    mainline = repo.commit("fct_mrr: count(1)")
    repo.git_cmd("merge", "-q", "--no-ff", "-m", "Merge feature", "feature")
    merge = repo.git_cmd("rev-parse", "HEAD").strip()

    git = Git(repo.root)
    history = by_sha(commits(git, repo.base, merge))
    assert set(history) == {branch, mainline, merge}
    assert history[merge].is_merge and history[merge].parents == (mainline, branch)
    assert [f.path for f in history[merge].files] == [PAYMENTS]  # fct_mrr came in through parent 1
    found = by_sha(candidates(git, lineage, repo.base, merge))
    assert set(found) == {branch, merge}
    assert "scale=0" in found[merge].diff and "fct_mrr" not in diff(git, merge)
    assert [c.sha for c in commits(git, repo.base, merge, first_parent=True)] == [merge, mainline]


def test_a_project_in_a_subdirectory(tmp_path, lineage):
    repo = Repo(tmp_path / "mono", subdir="warehouse")
    (repo.root / "models" / "staging").mkdir(parents=True)
    (repo.root / "models" / "staging" / "stg_payments.sql").write_text("select 1\n")
    outside = repo.commit("A file with a lineage path, outside the project")
    repo.edit(PAYMENTS, AMOUNT, "{{ cents_to_dollars('amount_cents', scale=0) }} as amount,")
    inside = repo.commit("Round amounts")
    found = candidates(Git(repo.root), lineage, repo.base, inside, project_subdir="warehouse")
    assert [c.sha for c in found] == [inside] and outside not in {c.sha for c in found}
    assert found[0].files == ("warehouse/" + PAYMENTS,)
    assert found[0].models == ("model.shop.stg_payments",) and found[0].touches_metric_columns is True


def test_diff_is_limited_to_paths(repo):
    repo.edit(PAYMENTS, AMOUNT, "{{ cents_to_dollars('amount_cents', scale=0) }} as amount,")
    repo.edit("models/marts/fct_mrr.sql", "count(*) as new_subscriptions", "count(1) as new_subscriptions")
    sha = repo.commit("Two files")
    git = Git(repo.root)
    assert "fct_mrr" in diff(git, sha) and "fct_mrr" not in diff(git, sha, [PAYMENTS])
    assert "stg_payments" in diff(git, repo.base, [PAYMENTS])  # a root commit diffs against nothing


def test_compiled_sql_diff_pretty_prints_both_sides():
    out = compiled_sql_diff("select a, b from t where x = 1", "SELECT a,\n  b FROM t WHERE x = 2")
    assert "-  x = 1" in out and "+  x = 2" in out
    assert not any(line.startswith(("+  a", "-  a")) for line in out.splitlines())
    assert compiled_sql_diff("select 1", "select 1") == ""
    assert "+{{ garbage" in compiled_sql_diff("select 1", "{{ garbage")
