"""Which reverts to build: rank order for a few suspects, bisection over history for many.

With n candidates, trying each in turn costs up to n sandbox builds. Bisection costs about
log2(n) + 3: the top-ranked alone (usually right), every candidate at once (if even that does not
recover, no code change in the range explains the regression), a binary search over suffixes of
the range in commit order (reverting the newest k commits, newest first, applies cleanly where an
arbitrary subset might conflict), and finally the culprit alone, which is what the PR carries.

When the incident came from a deploy check, that check's build already reverted every candidate (and
perhaps other commits of the deploy, which do not reach the metric) and measured the metric back at its
level: bisection starts from it instead of building "every candidate" again, and spends that build on the
runner-up alone (right as often as the scorer's second guess is; the bound is unchanged). Whatever
bisection then points at is still built alone before anything is proposed.

A culprit whose revert alone conflicts (a later commit changed the same lines) is tried once more with
those later commits, its followers, reverted together newest first: one more build, within the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from jobs.core.records import Candidate, Verdict, Verification

LINEAR_LIMIT = 4  # up to this many candidates, try each in rank order

# try_revert(group) builds the revert of `group`; try_revert([culprit], followers) the culprit's with its followers.
TryRevert = Callable[..., Verification]
Followers = Callable[[Candidate], Sequence[str]]  # a culprit's conflicting followers (jobs.project.followers)


@dataclass(frozen=True)
class Search:
    """Every build tried, in order, and the culprit's revert that verified (if any): alone, or with its
    conflicting followers."""

    attempts: tuple[Verification, ...]
    fix: Verification | None

    @property
    def builds(self) -> int:
        return len(self.attempts)


def find_fix(ranked: Sequence[Candidate], try_revert: TryRevert, max_builds: int = 8,
             followers: Followers | None = None, recovered_without: Collection[str] = ()) -> Search:
    """`recovered_without`: SHAs whose revert together is already known to bring the metric back (the deploy
    check's build); when they include every candidate, the "every candidate at once" build is skipped."""
    attempts: list[Verification] = []
    tried: set[str] = set()  # candidates already built alone

    def attempt(group: Sequence[Candidate], *with_followers: Sequence[str]) -> Verification | None:
        if len(attempts) >= max_builds:
            return None
        result = try_revert(group, *with_followers)
        attempts.append(result)
        return result

    def alone(culprit: Candidate) -> Verification | None:
        """The culprit's revert; when it conflicts, the culprit's with its followers instead."""
        tried.add(culprit.sha)
        result = attempt([culprit])
        if result is None or result.verdict is not Verdict.conflict or followers is None:
            return result
        later = followers(culprit)
        return (attempt([culprit], later) or result) if later else result

    def done(fix: Verification | None) -> Search:
        return Search(tuple(attempts), fix)

    if not ranked:
        return done(None)
    if len(ranked) <= LINEAR_LIMIT:
        for candidate in ranked:
            result = alone(candidate)
            if result is None or result.verdict is Verdict.verified:
                return done(result)
        return done(None)

    first = alone(ranked[0])
    if first is not None and first.verdict is Verdict.verified:
        return done(first)
    history = sorted(ranked, key=lambda c: c.authored_at)  # oldest first
    if {c.sha for c in history} <= set(recovered_without):
        # The deploy check's build stands in for "every candidate at once": that build goes to the runner-up.
        second = alone(ranked[1])
        if second is not None and second.verdict is Verdict.verified:
            return done(second)
    else:
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
    if culprit.sha in tried:
        return done(None)  # already tried alone, and it did not recover alone
    fix = next((a for a in attempts if a.reverted == (culprit.sha,)), None) or alone(culprit)
    return done(fix if fix is not None and fix.verdict is Verdict.verified else None)
