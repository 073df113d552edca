"""Who may act: Slack user IDs and the members of user groups listed in `slack.approvers`."""

from __future__ import annotations

import threading
import time

from slack_sdk import WebClient

GROUP_TTL = 60.0  # seconds a user group's membership is trusted before it is asked again


class Approvers:
    """`may_act(user)`: listed directly (U…/W…), or a member of a listed user group (S…)."""

    def __init__(self, ids: list[str], client: WebClient | None):
        self.users = {i for i in ids if not i.startswith("S")}
        self.groups = [i for i in ids if i.startswith("S")]
        self.client = client
        self._members: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def may_act(self, user_id: str) -> bool:
        if user_id in self.users:
            return True
        return any(user_id in self._group(group) for group in self.groups)

    def _group(self, group: str) -> frozenset[str]:
        with self._lock:
            cached = self._members.get(group)
        if cached and time.monotonic() - cached[0] < GROUP_TTL:
            return cached[1]
        if self.client is None:
            return frozenset()
        members = frozenset(self.client.usergroups_users_list(usergroup=group)["users"])
        with self._lock:
            self._members[group] = (time.monotonic(), members)
        return members
