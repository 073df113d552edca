"""Which reverts to build: rank order for a few suspects, bisection over history for many.

With n candidates, trying each in turn costs up to n sandbox builds. Bisection costs about
log2(n) + 3: the top-ranked alone (usually right), every candidate at once (if even that does not
recover, no code change in the range explains the regression), a binary search over suffixes of
the range in commit order (reverting the newest k commits, newest first, applies cleanly where an
arbitrary subset might conflict), and finally the culprit alone, which is what the PR carries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from jobs.core.records import Candidate, Verdict, Verification

LINEAR_LIMIT = 4  # up to this many candidates, try each in rank order

TryRevert = Callable[[Sequence[Candidate]], Verification]


@dataclass(frozen=True)
class Search:
    """Every build tried, in order, and the single-commit revert that verified (if any)."""

    attempts: tuple[Verification, ...]
    fix: Verification | None

    @property
    def builds(self) -> int:
        return len(self.attempts)


def find_fix(ranked: Sequence[Candidate], try_revert: TryRevert, max_builds: int = 8) -> Search:
    attempts: list[Verification] = []

    def attempt(group: Sequence[Candidate]) -> Verification | None:
        if len(attempts) >= max_builds:
            return None
        result = try_revert(group)
        attempts.append(result)
        return result

    def done(fix: Verification | None) -> Search:
        return Search(tuple(attempts), fix)

    if not ranked:
        return done(None)
    if len(ranked) <= LINEAR_LIMIT:
        for candidate in ranked:
            result = attempt([candidate])
            if result is None or result.verdict is Verdict.verified:
                return done(result)
        return done(None)

    first = attempt([ranked[0]])
    if first is not None and first.verdict is Verdict.verified:
        return done(first)
    history = sorted(ranked, key=lambda c: c.authored_at)  # oldest first
    everything = attempt(history)
    if everything is None or everything.verdict is not Verdict.verified:
        return done(None)  # reverting the whole range does not recover: not a code change here
    lo, hi = 0, len(history) - 1  # the culprit's index lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        result = attempt(history[mid:])
        if result is None:
            return done(None)
        if result.verdict is Verdict.verified:
            lo = mid
        else:
            hi = mid - 1
    culprit = history[lo]
    if culprit.sha == ranked[0].sha:
        return done(None)  # already tried alone, and it did not recover alone
    alone = next((a for a in attempts if a.reverted == (culprit.sha,)), None) or attempt([culprit])
    return done(alone if alone is not None and alone.verdict is Verdict.verified else None)
