"""``security apply`` runs the rabbitmqctl commands of one subject in order, others in
parallel: the subject of each command kind the plan issues."""

from __future__ import annotations

from flowmesh.cli._security import _subject


def test_each_command_is_about_its_user_or_policy() -> None:
    assert _subject(["add_user", "fm-a", "secret"]) == "fm-a"
    assert _subject(["set_permissions", "-p", "v", "fm-a", ".*", ".*", ".*"]) == "fm-a"
    assert _subject(["set_topic_permissions", "-p", "v", "fm-a", "fm.apps", "w", "r"]) == "fm-a"
    policy = ["set_policy", "-p", "v", "--apply-to", "queues", "flowmesh-dead", "^x$", "{}"]
    assert _subject(policy) == "flowmesh-dead"
    assert _subject(["set_policy", "--priority", "5", "-p", "v", "p-1", "^y$", "{}"]) == "p-1"
