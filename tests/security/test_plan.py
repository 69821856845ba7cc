"""``flowmesh security plan``: the topology it reads and the permissions it renders.

Applying a plan against real servers is covered by ``test_permissions.py``.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from flowmesh._errors import ConfigurationError
from flowmesh.cli import main
from flowmesh.cli._security import run_rabbitmqctl
from flowmesh.ops import SecurityPlan, Topology, password_variable, topology_from_sources
from tests.harness.processes import REPO


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["security", *args], env=env, catch_exceptions=False)
    return result.exit_code, result.output


def test_the_topology_is_read_from_the_example_apps() -> None:
    sources = [p for p in (REPO / "workers").glob("*.py") if p.stem not in ("demo", "__init__")]
    topology = topology_from_sources(sources)
    assert topology.apps == {"app1", "app2", "app3", "gpu-trainer"}
    assert topology.hosts == {"app1", "gpu-trainer"}
    assert topology.calls == {"app1": {"app2", "app3"}}
    assert topology.children == {"app1": {"gpu-trainer"}}
    assert topology.unresolved == ()


def test_non_literal_targets_are_reported(tmp_path: Path) -> None:
    (tmp_path / "dyn.py").write_text(
        textwrap.dedent(
            """
            from flowmesh import App
            app = App("dyn")

            @app.workflow(name="w")
            async def w(ctx, target):
                await ctx.call_activity("a", 1, app_id=target)
                await ctx.call_activity("b", 2)
                await ctx.call_child_workflow("c", 3, app_id="kid")
            """
        )
    )
    topology = topology_from_sources([tmp_path / "dyn.py"])
    assert topology.children == {"dyn": {"kid"}}
    assert topology.calls == {}
    assert len(topology.unresolved) == 1
    assert "call_activity" in topology.unresolved[0]


def test_send_event_edges_are_read_and_granted(tmp_path: Path) -> None:
    """``ctx.send_event(..., app_id="billing")`` lets the sender publish to billing's reply
    queue, and makes billing a hosting app; an event to the own app needs nothing extra."""
    (tmp_path / "notify.py").write_text(
        textwrap.dedent(
            """
            from flowmesh import App
            app = App("orders")

            @app.workflow
            async def w(ctx, target):
                ctx.send_event(target, "paid", 1, app_id="billing")
                ctx.send_event(target, "self")
                ctx.send_event(target, "who", app_id=target)
            """
        )
    )
    topology = topology_from_sources([tmp_path / "notify.py"])
    assert topology.events == {"orders": {"billing"}}
    assert len(topology.unresolved) == 1 and "send_event" in topology.unresolved[0]
    plan = SecurityPlan.build(events=topology.events)
    assert plan.hosts("billing")
    assert "billing.reply" in plan.publishes("orders")
    assert "orders.reply" not in plan.publishes("billing")

    code, out = run("plan", "--events", "orders=billing")
    assert code == 0, out
    assert "sends events to workflows on billing" in out
    assert any(
        line.startswith("rabbitmqctl set_topic_permissions -p / fm-orders fm.apps")
        and r"billing\.reply" in line
        for line in out.splitlines()
    ), out


def test_plan_from_flags_renders_rabbitmqctl_and_redis_lines() -> None:
    code, out = run(
        "plan",
        "--calls", "orders=payments,mail",
        "--children", "orders=gpu",
        "--client", "fmc-shop=orders",
        "--vhost", "prod",
        "--key-prefix", "wf",
    )  # fmt: skip
    assert code == 0, out
    lines = out.splitlines()
    assert (
        "rabbitmqctl set_topic_permissions -p prod fm-payments fm.apps "
        r"'^(orders\.reply|payments\.dead|payments\.quarantine|payments\.work)$' '^$'"
    ) in lines
    # An activity-only app opens an inbox for the hosts' answers to its task notes.
    inbox = r"fm\.inbox\.[0-9a-f]{32}"
    assert (
        "rabbitmqctl set_permissions -p prod fm-payments '^(fm\\.payments\\.dead|"
        "fm\\.payments\\.quarantine|fm\\.payments\\.reply|fm\\.payments\\.work|"
        f"{inbox})$' '^(fm\\.apps|{inbox})$' "
        f"'^(fm\\.inbox|fm\\.payments\\.quarantine|fm\\.payments\\.work|{inbox})$'"
    ) in lines
    assert (
        f"rabbitmqctl set_topic_permissions -p prod fm-payments fm.inbox '^$' '^{inbox}$'"
    ) in lines
    assert any(
        line.startswith("rabbitmqctl set_policy -p prod --apply-to queues")
        and "flowmesh-redelivery-payments" in line
        and '"delivery-limit": 20' in line
        for line in lines
    )
    redis_lines = [line for line in lines if line.startswith("redis-cli ACL SETUSER")]
    assert [line.split()[3] for line in redis_lines] == ["fm-gpu", "fm-orders"]
    assert "'~wf:{orders}:*'" in redis_lines[1]
    assert '">$FLOWMESH_PASSWORD_FM_ORDERS"' in redis_lines[1]
    assert not any("amq.default" in line or "'.*'" in line for line in lines)
    # Passwords only ever appear as variables.
    assert re.search(r"add_user -- fm-orders \"\$FLOWMESH_PASSWORD_FM_ORDERS\"", out)


def test_plan_defaults_to_the_workers_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    code, out = run("plan")
    assert code == 0, out
    assert "#   app1: hosts workflows; runs activities on app2, app3; starts child" in out
    assert "fm-app3" in out


def test_example_plan_in_deploy_is_current(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/security/plan-example.txt is this command's output (regenerate it if not)."""
    monkeypatch.chdir(REPO)
    code, out = run(
        "plan", "--workers", "workers", "--client", "fmc-ops=app1", "--vhost", "flowmesh"
    )
    assert code == 0, out
    assert (REPO / "deploy/security/plan-example.txt").read_text() == out


def test_client_users_must_not_look_like_app_users() -> None:
    with pytest.raises(ConfigurationError, match="named like an app user"):
        SecurityPlan.build(calls={"a": ["b"]}, clients={"fm-ops": ["a"]})
    code, out = run("plan", "--calls", "a=b", "--client", "ops=b")
    assert code != 0
    assert "host no workflows" in out


def test_apply_wants_every_password_before_touching_anything() -> None:
    code, out = run("apply", "--calls", "a=b", "--amqp-url", "amqp://admin:x@127.0.0.1:1/", env={})
    assert code != 0
    assert password_variable("fm-a") in out
    assert password_variable("fm-b") in out


def test_a_password_starting_with_a_dash_is_not_taken_for_an_option(tmp_path: Path) -> None:
    """One generated password in 32 starts with "-": rabbitmqctl gets "--" before it."""
    record = tmp_path / "args"
    fake = tmp_path / "rabbitmqctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
    fake.chmod(0o755)
    plan = SecurityPlan(
        Topology(frozenset({"app1"}), frozenset({"app1"}), {}, {}), vhost="v", key_prefix="fm"
    )
    run_rabbitmqctl(plan, {"fm-app1": "-dash-first"}, [str(fake)])
    # Commands about different subjects run side by side; those about one user in order.
    lines = record.read_text().splitlines()
    about_user = [line for line in lines if " fm-app1 " in f"{line} "]
    assert about_user[0] == "add_user -- fm-app1 -dash-first"
    assert any(line.startswith("set_permissions") for line in about_user[1:])
