"""Metric contracts: what a team promises about a metric, as declared in cairn.yml or dbt YAML."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Kind(str, Enum):
    volume = "volume"
    row_count = "row_count"
    freshness = "freshness"
    ratio = "ratio"
    null_rate = "null_rate"
    distribution = "distribution"


class Direction(str, Enum):
    drop = "drop"
    rise = "rise"
    both = "both"


class Window(str, Enum):
    hour = "hour"
    day = "day"

    @property
    def delta(self) -> timedelta:
        return timedelta(hours=1) if self is Window.hour else timedelta(days=1)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | int | float) -> timedelta:
    """'90m', '6h', '2d' or a number of seconds."""
    if isinstance(text, (int, float)):
        return timedelta(seconds=float(text))
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a duration; use a number with s, m, h or d (e.g. '6h')")
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaselineSpec(_Strict):
    """How much of a contract's own history forms its baseline."""

    days: int = Field(28, ge=1, description="Observations from the last N days form the baseline.")
    min_points: int = Field(
        7, ge=1, description="Healthy observations needed before the contract may alert."
    )
    seasonality: Literal["auto", "none", "weekly"] = Field(
        "auto", description="'auto' finds a weekday pattern in the data; 'weekly' or 'none' overrides it."
    )
    min_points_per_weekday: int = Field(
        2, ge=1, description="With seasonality 'weekly': observations needed on the checked weekday."
    )


class ThresholdSpec(_Strict):
    """When a deviation from the baseline becomes an anomaly; every floor must be crossed."""

    z: float = Field(3.7, gt=0, description="Distance from the forecast in predictive standard deviations "
                                            "(business and sampling noise; t-widened for short histories).")
    relative: float = Field(0.05, ge=0, description="Minimum relative change vs the expected value.")
    absolute: float = Field(0.0, ge=0, description="Minimum absolute change vs the expected value.")
    psi: float = Field(0.2, gt=0, description="distribution (categorical): PSI above this alerts.")
    quantile_shift: float = Field(
        0.5,
        gt=0,
        description="distribution (numeric): largest quantile move, relative to the baseline IQR.",
    )


# Contract IDs appear in commands (`/cairn rebaseline ID`), job IDs, PR titles and branch names.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,119}")


class Contract(_Strict):
    """One metric on one dbt model or source, and what is expected of it."""

    id: str = Field(description="Stable identifier, e.g. 'mrr.net_new': letters, digits and . _ : - (no spaces).")
    kind: Kind
    model: str | None = Field(None, description="dbt model name the metric reads.")
    source: str | None = Field(None, description="'source_name.table_name' instead of a model.")
    expr: str | None = Field(None, description="volume: an aggregate expression, e.g. 'sum(amount)'.")
    column: str | None = Field(None, description="freshness/null_rate/distribution: the column.")
    numerator: str | None = Field(None, description="ratio: aggregate expression on top.")
    denominator: str | None = Field(None, description="ratio: aggregate expression below.")
    max_lag: timedelta | None = Field(None, description="freshness: the SLA, e.g. '6h'.")
    where: str | None = Field(None, description="A single boolean SQL expression filtering rows.")
    time_column: str | None = Field(None, description="Column that places a row in a window.")
    window: Window | None = Field(None, description="'day' or 'hour': the last complete window is measured.")
    direction: Direction = Field(Direction.both, description="Which way of change alerts.")
    baseline: BaselineSpec = Field(default_factory=BaselineSpec)
    threshold: ThresholdSpec = Field(default_factory=ThresholdSpec)
    severity: Literal["low", "medium", "high", "critical"] = "medium"
    owner: str | None = None
    numeric: bool = Field(False, description="distribution: treat the column as numeric (quantiles).")
    declared_in: str | None = Field(None, exclude=True, description="Where it was declared.")

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not ID_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is not a contract ID: use letters, digits and . _ : - (at most 120, "
                             "starting with a letter or digit), e.g. 'revenue.net_daily'")
        return value

    @field_validator("max_lag", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if value is None or isinstance(value, timedelta):
            return value
        return parse_duration(value)

    @model_validator(mode="after")
    def _kind_fields(self) -> "Contract":
        if bool(self.model) == bool(self.source):
            raise ValueError("give exactly one of 'model' or 'source'")
        if self.source and self.source.count(".") != 1:
            raise ValueError(f"source {self.source!r} must be 'source_name.table_name'")
        required = {
            Kind.volume: ("expr",),
            Kind.row_count: (),
            Kind.freshness: ("column", "max_lag"),
            Kind.ratio: ("numerator", "denominator"),
            Kind.null_rate: ("column",),
            Kind.distribution: ("column",),
        }[self.kind]
        missing = [name for name in required if getattr(self, name) in (None, "")]
        if missing:
            raise ValueError(f"a {self.kind.value} contract needs {', '.join(missing)}")
        if bool(self.time_column) != bool(self.window) and self.kind is not Kind.freshness:
            raise ValueError("'time_column' and 'window' go together")
        if self.kind is Kind.freshness and self.direction is Direction.drop:
            raise ValueError("freshness only alerts when the lag rises; drop direction makes no sense")
        return self

    @property
    def relation_name(self) -> str:
        """The model name or 'source.table' this contract reads."""
        return self.model or self.source  # type: ignore[return-value]

    @property
    def effective_direction(self) -> Direction:
        """Freshness lag only pages when it grows."""
        return Direction.rise if self.kind is Kind.freshness else self.direction


def window_bounds(window: Window, at: datetime) -> tuple[datetime, datetime]:
    """The last complete window before `at` (UTC): end is `at` floored to the window."""
    if at.tzinfo is None:
        raise ValueError(f"{at!r} has no time zone; pass an aware UTC datetime")
    at = at.astimezone(timezone.utc)
    if window is Window.day:
        end = at.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        end = at.replace(minute=0, second=0, microsecond=0)
    return end - window.delta, end
