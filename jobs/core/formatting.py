"""How numbers, sizes and durations read in reasons, cards, threads, PR bodies and the terminal:
one set of rules, in one place."""

from __future__ import annotations

import humanize


def fmt_number(x: float) -> str:
    """Thousands separators for big values, three significant digits for small ones."""
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}".rstrip("0").rstrip(".")
    return f"{x:.3g}"


def fmt_value(x: float | None, missing: str = "no value") -> str:
    """A metric value as fmt_number shows it, or what stands in for no value."""
    return missing if x is None else fmt_number(x)


def fmt_bytes(n: int) -> str:
    """Bytes in binary units, one decimal: '5.0 GiB' (what BigQuery bills and budgets in)."""
    return humanize.naturalsize(n, binary=True, format="%.1f")


def fmt_duration(seconds: float) -> str:
    """'2d 3h', '7h 12m', '45m', '30s'."""
    seconds = int(round(seconds))
    parts = [(seconds // 86400, "d"), (seconds % 86400 // 3600, "h"), (seconds % 3600 // 60, "m"), (seconds % 60, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n]
    return " ".join(shown[:2]) or "0s"
