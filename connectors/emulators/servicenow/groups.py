"""Group membership in the ServiceNow emulator: ``sys_user_grmember`` rows kept in step with
``emulator.groups`` (user_name -> group names), the dict tests change, as with the Jira
emulator's. A name no ``sys_user_group`` has yet becomes a new active group."""

from __future__ import annotations

import uuid
from collections.abc import Callable


def sync_memberships(tables: dict[str, dict[str, dict[str, str]]], groups: dict[str, list[str]],
                     store: Callable[[str, dict[str, str]], dict[str, str]]) -> None:
    """Rewrite ``sys_user_grmember`` to match ``groups``; rows that still hold keep their sys_id."""
    users = {row["user_name"]: row["sys_id"] for row in tables["sys_user"].values()}
    by_name = {row["name"]: row["sys_id"] for row in tables["sys_user_group"].values()}
    wanted: list[tuple[str, str]] = []
    for user_name, names in groups.items():
        for name in names:
            if user_name not in users:
                continue
            if name not in by_name:
                group = {"sys_id": uuid.uuid4().hex, "name": name, "description": "", "active": "true"}
                by_name[name] = store("sys_user_group", group)["sys_id"]
            if (users[user_name], by_name[name]) not in wanted:
                wanted.append((users[user_name], by_name[name]))
    rows = tables["sys_user_grmember"]
    for sys_id, row in list(rows.items()):
        pair = (row["user"], row["group"])
        if pair in wanted:
            wanted.remove(pair)
        else:
            del rows[sys_id]
    for user, group in wanted:
        store("sys_user_grmember", {"sys_id": uuid.uuid4().hex, "user": user, "group": group})
