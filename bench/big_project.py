"""A generated dbt project of 1,000+ models for the loop benchmark: layers, fan-in, a local package, noisy data.

`write(root)` writes the project: 25 business domains of 40 models each (6 staging views over two
raw tables, 14 intermediate views, 20 mart tables fanning in), 4 company marts over every domain,
tests and an exposure per domain, and `biz_utils`, a `local:` package inside the repository whose
macros the models call (dbt_packages/ is git-ignored; `dbt deps` installs it, as in production).
Its raw data: `bench/big_project_data.py`.
"""

from __future__ import annotations

from pathlib import Path

DOMAINS = tuple(f"{topic}{n}" for n in ("", "_eu", "_apac", "_latam", "_b2b")
                for topic in ("shop", "market", "travel", "media", "games"))  # 25
CHANNELS = ("web", "app", "store", "partner")
SEGMENTS = ("smb", "mid", "enterprise")
REGIONS = ("north", "south", "east", "west")

PROJECT = """name: analytics
version: "1.0.0"
config-version: 2
profile: analytics
model-paths: ["models"]
macro-paths: ["macros"]
clean-targets: ["target", "logs"]

models:
  analytics:
    +materialized: view
    company:
      +materialized: table
"""
PROFILES = """analytics:
  target: prod
  outputs:
    prod:
      type: duckdb
      path: "{{ env_var('CAIRN_DUCKDB_PATH', 'warehouse.duckdb') }}"
      schema: main
      threads: 1
"""
PACKAGES = "packages:\n  - local: vendor/biz_utils\n"
GITIGNORE = "*.duckdb\n*.duckdb.wal\n.cairn/\ntarget/\nlogs/\ndbt_packages/\n"
PACKAGE_PROJECT = 'name: biz_utils\nversion: "1.2.0"\nconfig-version: 2\nmacro-paths: ["macros"]\n'
PACKAGE_MACROS = {
    "money.sql": "{% macro cents_to_amount(column) %}cast({{ column }} / 100.0 as decimal(18, 2)){% endmacro %}\n",
    "dates.sql": "{% macro day_of(column) %}cast(date_trunc('day', {{ column }}) as date){% endmacro %}\n",
    "ratios.sql": "{% macro safe_divide(numerator, denominator) %}"
                  "case when {{ denominator }} = 0 then null else {{ numerator }} / {{ denominator }} end"
                  "{% endmacro %}\n",
}
CAIRN = """# Cairn configuration for the generated 1,000-model benchmark project.
project: .
profiles_dir: .
target: prod
repo: .
branch: main
store: sqlite:///.cairn/cairn.db
forge: local
slack:
  channel: C0CAIRNBENCH
policy: null

contracts:
"""
CONTRACT = """  - id: {domain}.net_revenue_daily
    kind: volume
    model: fct_{domain}__revenue_daily
    expr: sum(net_revenue)
    time_column: revenue_date
    window: day
    direction: drop
    baseline: {{days: 28, min_points: 14}}
    severity: high
    owner: "@{domain}-data"
"""
CONTRACT_DOMAINS = DOMAINS[::3]  # 9 contracts


def _files(domain: str) -> dict[str, str]:
    """One domain's models and YAML, by path under models/."""
    d, f = domain, {}
    stg, itm, mrt = f"{d}/staging", f"{d}/intermediate", f"{d}/marts"

    def ref(name: str) -> str:
        return f"{{{{ ref('{name}') }}}}"

    def src(table: str) -> str:
        return f"{{{{ source('{d}', '{table}') }}}}"

    f[f"{stg}/stg_{d}__events.sql"] = f"""with source as (
    select * from {src('events')}
)
select
    event_id,
    account_id,
    lower(event_type) as event_type,
    lower(channel) as channel,
    region,
    {{{{ biz_utils.cents_to_amount('amount_cents') }}}} as amount,
    occurred_at,
    {{{{ biz_utils.day_of('occurred_at') }}}} as event_date,
    _loaded_at
from source
"""
    f[f"{stg}/stg_{d}__accounts.sql"] = f"""select
    account_id,
    segment,
    upper(country) as country,
    created_at
from {src('accounts')}
"""
    for kind in ("purchase", "refund", "visit", "signup"):
        f[f"{stg}/stg_{d}__{kind}s.sql"] = f"""select
    event_id,
    account_id,
    channel,
    region,
    amount,
    occurred_at,
    event_date
from {ref(f'stg_{d}__events')}
where event_type = '{kind}'
"""
    for kind in ("purchase", "refund"):
        f[f"{itm}/int_{d}__{kind}s_enriched.sql"] = f"""select
    e.event_id,
    e.account_id,
    e.channel,
    e.region,
    a.segment,
    a.country,
    e.amount,
    e.event_date
from {ref(f'stg_{d}__{kind}s')} as e
left join {ref(f'stg_{d}__accounts')} as a
    on e.account_id = a.account_id
where e.amount is not null
"""
    f[f"{itm}/int_{d}__events_enriched.sql"] = f"""select e.*, a.segment, a.country
from {ref(f'stg_{d}__events')} as e
left join {ref(f'stg_{d}__accounts')} as a using (account_id)
"""
    for channel in CHANNELS:
        f[f"{itm}/int_{d}__purchases_{channel}.sql"] = f"""select event_date, account_id, amount
from {ref(f'int_{d}__purchases_enriched')}
where channel = '{channel}'
"""
    for kind, source in (("purchases", "int_{d}__purchases_enriched"), ("refunds", "int_{d}__refunds_enriched"),
                         ("visits", "stg_{d}__visits"), ("signups", "stg_{d}__signups")):
        f[f"{itm}/int_{d}__daily_{kind}.sql"] = f"""select
    event_date,
    count(*) as {kind},
    sum(coalesce(amount, 0)) as {kind}_amount
from {ref(source.format(d=d))}
group by event_date
"""
    f[f"{itm}/int_{d}__account_activity.sql"] = f"""select
    account_id,
    count(*) as events,
    count(*) filter (where event_type = 'purchase') as purchases,
    max(occurred_at) as last_seen_at
from {ref(f'int_{d}__events_enriched')}
group by account_id
"""
    f[f"{itm}/int_{d}__net_daily.sql"] = f"""select
    p.event_date,
    p.purchases,
    p.purchases_amount as gross_revenue,
    coalesce(r.refunds_amount, 0) as refunded,
    p.purchases_amount - coalesce(r.refunds_amount, 0) as net_revenue
from {ref(f'int_{d}__daily_purchases')} as p
left join {ref(f'int_{d}__daily_refunds')} as r using (event_date)
"""
    f[f"{itm}/int_{d}__funnel_daily.sql"] = f"""select
    v.event_date,
    v.visits,
    coalesce(s.signups, 0) as signups,
    coalesce(p.purchases, 0) as purchases
from {ref(f'int_{d}__daily_visits')} as v
left join {ref(f'int_{d}__daily_signups')} as s using (event_date)
left join {ref(f'int_{d}__daily_purchases')} as p using (event_date)
"""
    # Marts: tables.
    table = "{{ config(materialized='table') }}\n"
    f[f"{mrt}/fct_{d}__revenue_daily.sql"] = table + f"""select
    event_date as revenue_date,
    purchases,
    gross_revenue,
    refunded,
    net_revenue
from {ref(f'int_{d}__net_daily')}
"""
    f[f"{mrt}/fct_{d}__funnel_daily.sql"] = table + f"""select
    event_date as funnel_date,
    visits,
    signups,
    purchases,
    {{{{ biz_utils.safe_divide('purchases', 'visits') }}}} as conversion
from {ref(f'int_{d}__funnel_daily')}
"""
    f[f"{mrt}/fct_{d}__refunds_daily.sql"] = table + f"""select event_date as refund_date, refunds, refunds_amount
from {ref(f'int_{d}__daily_refunds')}
"""
    f[f"{mrt}/dim_{d}__accounts.sql"] = table + f"""select a.*, coalesce(x.events, 0) as events,
    coalesce(x.purchases, 0) as purchases, x.last_seen_at
from {ref(f'stg_{d}__accounts')} as a
left join {ref(f'int_{d}__account_activity')} as x using (account_id)
"""
    for channel in CHANNELS:
        f[f"{mrt}/fct_{d}__channel_{channel}_daily.sql"] = table + f"""select event_date, '{channel}' as channel,
    count(*) as purchases, sum(amount) as revenue
from {ref(f'int_{d}__purchases_{channel}')}
group by event_date
"""
    for slice_, values in (("segment", SEGMENTS), ("region", REGIONS)):
        for value in values:
            f[f"{mrt}/fct_{d}__{slice_}_{value}_daily.sql"] = table + f"""select event_date, '{value}' as {slice_},
    count(*) as purchases, sum(amount) as revenue
from {ref(f'int_{d}__purchases_enriched')}
where {slice_} = '{value}'
group by event_date
"""
    f[f"{mrt}/rpt_{d}__weekly_revenue.sql"] = table + f"""select date_trunc('week', revenue_date) as week,
    sum(net_revenue) as net_revenue
from {ref(f'fct_{d}__revenue_daily')}
group by 1
"""
    for mix, values in (("channel", CHANNELS), ("segment", SEGMENTS), ("region", REGIONS)):
        union = "\nunion all\n".join(f"select * from {ref(f'fct_{d}__{mix}_{v}_daily')}" for v in values)
        f[f"{mrt}/rpt_{d}__{mix}_mix.sql"] = table + f"with unioned as (\n{union}\n)\nselect * from unioned\n"
    f[f"{mrt}/rpt_{d}__kpis.sql"] = table + f"""select
    r.revenue_date as kpi_date,
    r.net_revenue,
    f.visits,
    f.conversion,
    x.refunds
from {ref(f'fct_{d}__revenue_daily')} as r
left join {ref(f'fct_{d}__funnel_daily')} as f on f.funnel_date = r.revenue_date
left join {ref(f'fct_{d}__refunds_daily')} as x on x.refund_date = r.revenue_date
"""
    f[f"{stg}/_{d}__sources.yml"] = f"""version: 2
sources:
  - name: {d}
    schema: raw_{d}
    tables:
      - name: events
        loaded_at_field: _loaded_at
      - name: accounts
models:
  - name: stg_{d}__events
    description: One row per {d} event, as the app emits it.
    columns:
      - name: event_id
        data_tests: [unique, not_null]
      - name: channel
        data_tests:
          - accepted_values:
              arguments:
                values: {list(CHANNELS)}
  - name: stg_{d}__accounts
    columns:
      - name: account_id
        data_tests: [unique, not_null]
"""
    f[f"{mrt}/_{d}__marts.yml"] = f"""version: 2
models:
  - name: fct_{d}__revenue_daily
    description: Net revenue of {d} per day; finance reports from it.
    columns:
      - name: revenue_date
        description: Primary key; the day.
        data_tests: [unique, not_null]
  - name: dim_{d}__accounts
    columns:
      - name: account_id
        data_tests: [unique]
exposures:
  - name: {d}_dashboard
    type: dashboard
    owner: {{name: {d} analytics, email: data@example.com}}
    depends_on: [ref('rpt_{d}__kpis'), ref('rpt_{d}__channel_mix')]
"""
    return f


def _company() -> dict[str, str]:
    f = {}
    for name, model, column, key in (("revenue_daily", "fct_{d}__revenue_daily", "net_revenue", "revenue_date"),
                                     ("funnel_daily", "fct_{d}__funnel_daily", "visits", "funnel_date"),
                                     ("refunds_daily", "fct_{d}__refunds_daily", "refunds_amount", "refund_date")):
        union = "\nunion all\n".join(f"select '{d}' as domain, {key} as day, {column} as value "
                                     f"from {{{{ ref('{model.format(d=d)}') }}}}" for d in DOMAINS)
        f[f"company/company__{name}.sql"] = f"with unioned as (\n{union}\n)\nselect * from unioned\n"
    f["company/company__kpis.sql"] = """select r.day, sum(r.value) as net_revenue
from {{ ref('company__revenue_daily') }} as r
group by r.day
"""
    return f


def models() -> dict[str, str]:
    """Every file under models/, by path."""
    files = {}
    for domain in DOMAINS:
        files.update(_files(domain))
    files.update(_company())
    return files


def write(root: Path) -> Path:
    """The project, its package, cairn.yml and .gitignore at `root` (not yet under git)."""
    root.mkdir(parents=True, exist_ok=True)
    for path, text in models().items():
        target = root / "models" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    (root / "macros").mkdir(exist_ok=True)
    (root / "macros" / "generate_schema_name.sql").write_text(
        "{% macro generate_schema_name(custom, node) %}{{ target.schema }}{% endmacro %}\n")
    package = root / "vendor" / "biz_utils"
    (package / "macros").mkdir(parents=True, exist_ok=True)
    (package / "dbt_project.yml").write_text(PACKAGE_PROJECT)
    for name, text in PACKAGE_MACROS.items():
        (package / "macros" / name).write_text(text)
    (root / "dbt_project.yml").write_text(PROJECT)
    (root / "profiles.yml").write_text(PROFILES)
    (root / "packages.yml").write_text(PACKAGES)
    (root / ".gitignore").write_text(GITIGNORE)
    (root / "cairn.yml").write_text(CAIRN + "".join(CONTRACT.format(domain=d) for d in CONTRACT_DOMAINS))
    return root


# ---------------------------------------------------------------- history


CULPRIT_DOMAIN = "shop"
CONTRACT_ID = f"{CULPRIT_DOMAIN}.net_revenue_daily"
CONTRACT_MODEL = f"fct_{CULPRIT_DOMAIN}__revenue_daily"
# Select-list lines after which a harmless alias column can go: upstream of the contract (decoys the
# scorer must rank below the culprit) and in other domains (outside its lineage).
_ANCHORS = (
    ("staging/stg_{d}__events.sql", "    event_id,\n", "event_id"),
    ("staging/stg_{d}__purchases.sql", "    event_id,\n", "event_id"),
    ("intermediate/int_{d}__purchases_enriched.sql", "    e.event_id,\n", "e.event_id"),
    ("intermediate/int_{d}__net_daily.sql", "    p.purchases,\n", "p.purchases"),
    ("marts/fct_{d}__revenue_daily.sql", "    purchases,\n", "purchases"),
    ("staging/stg_{d}__accounts.sql", "    account_id,\n", "account_id"),
)


def culprit() -> tuple[str, str, str, str]:
    """(message, path, old, new): partner orders fall out of one domain's revenue (a quarter of it)."""
    path = f"models/{CULPRIT_DOMAIN}/intermediate/int_{CULPRIT_DOMAIN}__purchases_enriched.sql"
    return ("Leave partner orders out until their payouts settle", path, "where e.amount is not null\n",
            "where e.amount is not null\n    and e.channel != 'partner'\n")


def decoys(n: int) -> list[tuple[str, str, str, str]]:
    """n harmless commits: aliases upstream of the contract and in other domains, and a docs edit."""
    found = [("Say which day revenue_date is", f"models/{CULPRIT_DOMAIN}/marts/_{CULPRIT_DOMAIN}__marts.yml",
              "Primary key; the day.", "Primary key; the calendar day (UTC).")]
    for k in range(n - 1):
        domain = CULPRIT_DOMAIN if k % 2 == 0 else DOMAINS[1 + k % (len(DOMAINS) - 1)]
        path, anchor, column = _ANCHORS[(k // 2) % len(_ANCHORS)]
        found.append((f"Expose {column} as {domain}_noop_{k}", f"models/{domain}/{path.format(d=domain)}",
                      anchor, f"{anchor}    {column} as noop_{k},\n"))
    return found
