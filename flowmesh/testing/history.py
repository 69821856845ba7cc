"""History builders and an in-memory driver for unit-testing workflow code.

Workflow code is replayed from history, so the most direct way to test it is to hand the pure
replay engine a history and look at what it decides. This module needs no broker, no store,
no event loop and no real clock:

* **Builders** (``started``, ``activity_scheduled``, ``activity_completed``, ``timer_fired``,
  ``event_raised``, ...) write history events tersely, in the style of durabletask's test
  helpers. Feed them to :func:`flowmesh.engine.replay_step`::

      history = [*started("order", {"id": 1}), activity_scheduled(0, "charge", input={"id": 1})]
      outcome = replay_step(resolver, history, [step(T0 + timedelta(seconds=1)),
                                                activity_completed(0, "ok")])
      assert outcome.commands == (ScheduleActivity(1, "ship", "app", "ok"),)

* **A driver**, :class:`WorkflowReplayer` (and the shortcut :func:`run_to_completion`), runs a
  workflow the way the runtime would, step by step, answering its commands with fakes:
  activities by a responder callback (or a name -> function mapping), durable timers by
  advancing virtual time to their ``fire_at``, child workflows by a callback or by running them
  in-process. It returns the final outcome and the complete history::

      result = run_to_completion(
          {"order": order}, "order", {"id": 1},
          activities={"charge": lambda order: "charged", "ship": lambda _: "shipped"},
      )
      assert result.status is WorkflowStatus.COMPLETED
      verify_replay({"order": order}, result.history)   # replays cleanly from scratch

A fake activity answers by returning its output, by raising (the exception becomes an
``ActivityFailed`` just as in a real worker; :class:`~flowmesh.NonRetryableError` is marked
non-retryable), by returning a :class:`Reply` (to answer later in virtual time, or with an
explicit failure), or by returning :data:`NO_REPLY` (never answer, e.g. to let a timeout win).

This module is the public face; the code lives in private modules beside it (``_builders``,
``_workflows``, ``_fakes``, ``_replayer``).
"""

from __future__ import annotations

from flowmesh.testing._builders import (
    DEFAULT_APP_ID,
    DEFAULT_INSTANCE_ID,
    T0,
    activity_completed,
    activity_failed,
    activity_scheduled,
    child_completed,
    child_failed,
    child_scheduled,
    event_raised,
    event_sent,
    failure,
    patch_recorded,
    resumed,
    split_steps,
    started,
    step,
    suspended,
    task_cancelled,
    terminated,
    timer_created,
    timer_fired,
    workflow_completed,
)
from flowmesh.testing._fakes import (
    NO_REPLY,
    ActivityResponder,
    ChildResponder,
    NoReply,
    Reply,
    RunResult,
)
from flowmesh.testing._replayer import WorkflowReplayer, run_to_completion
from flowmesh.testing._workflows import Workflows, replay_history, resolver, verify_replay

__all__ = [
    "DEFAULT_APP_ID",
    "DEFAULT_INSTANCE_ID",
    "NO_REPLY",
    "T0",
    "ActivityResponder",
    "ChildResponder",
    "NoReply",
    "Reply",
    "RunResult",
    "WorkflowReplayer",
    "Workflows",
    "activity_completed",
    "activity_failed",
    "activity_scheduled",
    "child_completed",
    "child_failed",
    "child_scheduled",
    "event_raised",
    "event_sent",
    "failure",
    "patch_recorded",
    "replay_history",
    "resolver",
    "resumed",
    "run_to_completion",
    "split_steps",
    "started",
    "step",
    "suspended",
    "task_cancelled",
    "terminated",
    "timer_created",
    "timer_fired",
    "verify_replay",
    "workflow_completed",
]
