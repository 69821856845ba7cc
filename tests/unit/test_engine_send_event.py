"""ctx.send_event: an event to another workflow is recorded as ``EventSent`` and becomes a
``SendEvent`` command once; replays confirm it, and a changed target is non-determinism."""

from __future__ import annotations

from typing import Any

import pytest

from flowmesh import ValidationError
from flowmesh.engine import WorkflowContext, replay_step
from flowmesh.model import EventSent, SendEvent, WorkflowStatus
from flowmesh.testing.history import (
    T0,
    event_raised,
    event_sent,
    resolver,
    started,
    step,
)


async def notify(ctx: WorkflowContext, target: str) -> Any:
    ctx.send_event(target, "Approve", {"by": ctx.instance_id})
    ctx.send_event("audit-1", "seen", app_id="audit")
    return await ctx.wait_for_external_event("ack")


def test_send_event_records_the_event_and_sends_it_once() -> None:
    resolve = resolver(notify)
    first = replay_step(resolve, [], started("notify", "order-2"))
    assert first.commands == (
        SendEvent(0, "order-2", "app", "Approve", {"by": "test-1"}),
        SendEvent(1, "audit-1", "audit", "seen", None),
    )
    assert first.append[-2:] == (
        EventSent(0, "order-2", "app", "Approve"),
        event_sent(1, "audit-1", "seen", app_id="audit"),
    )
    later = replay_step(resolve, first.append, [step(T0), event_raised("ack", 1)])
    assert later.commands[:-1] == ()  # replay confirmed the sends: nothing sent again
    assert later.output == 1


def test_a_changed_target_is_non_determinism() -> None:
    history = [*started("notify", "order-2"), EventSent(0, "order-9", "app", "Approve")]
    outcome = replay_step(resolver(notify), history, [step(T0)])
    assert outcome.status is WorkflowStatus.STALLED
    assert "order-9" in outcome.stall_reason and "order-2" in outcome.stall_reason


async def bad_send(ctx: WorkflowContext, kind: str) -> Any:
    if kind == "instance":
        ctx.send_event("no spaces allowed", "x")
    elif kind == "app":
        ctx.send_event("ok", "x", app_id="Not_An_App")
    else:
        ctx.send_event("ok", "")
    return "sent"


@pytest.mark.parametrize("kind", ["instance", "app", "name"])
def test_send_event_refuses_malformed_targets_at_the_call_site(kind: str) -> None:
    outcome = replay_step(resolver(bad_send), [], started("bad_send", kind))
    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.failure is not None
    assert outcome.failure.matches(ValidationError.__name__) or "invalid" in (
        outcome.failure.message
    )
