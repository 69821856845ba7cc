"""The least-privilege plan: one RabbitMQ user per app and client, one Redis user per hosting app.

::

    plan = SecurityPlan.build(
        calls={"app1": ["app2", "app3"]},          # app1's workflows run activities there
        children={"app1": ["gpu-trainer"]},         # ... and child workflows there
        events={"app1": ["billing"]},               # ... and send events to billing's workflows
        clients={"fmc-ops": ["app1"]},              # who may start/control app1's workflows
        vhost="prod", key_prefix="fm",
    )
    print(render_plan(plan))                         # rabbitmqctl / redis-cli lines
    await declare_topology(plan, "amqps://admin:...@rabbit/prod")   # exchanges, queues, bindings

What each user gets follows from who sends what where (``docs/protocol.md``):

* app X (user ``fm-X``): configure its own queues; read its work and quarantine queues (and
  its reply queue if it hosts workflows); write to ``fm.apps`` only with the routing keys it
  needs (topic permissions): its own ``X.work`` (a task waiting for a deployment is
  republished), ``X.quarantine`` (tasks in flight when a worker died) and ``X.dead``,
  ``X.reply`` if it hosts (its timers), ``T.work`` for every app T it calls,
  ``C.work`` and ``C.reply`` for every app C hosting its children (start, terminate, purge),
  ``E.reply`` for every app E hosting workflows its workflows send events to (``send_event``),
  ``H.reply`` for every app H that calls it or hosts its parent (results, leases, notes, child
  results). A hosting app also answers clients' inboxes (``fm.inbox``). Nothing else: no
  default exchange, no bindings, no other app's queues.
* client user: declare, bind and read its private inboxes; write ``A.work`` and ``A.reply``
  for the apps it manages.
* Redis, hosting apps only: keys ``<prefix>:{X}:*``, exactly the commands the store uses
  (:data:`flowmesh.store.REDIS_COMMANDS`), no channels. Activity-only apps get no
  Redis user at all.

Exchanges, queues and bindings are declared by an administrator (:func:`declare_topology`,
``flowmesh security apply``): restricted users cannot declare another app's queues, so the
plan declares every app's queues up front and work for an app not running yet waits in them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from flowmesh._errors import ConfigurationError
from flowmesh.model import check_app_id
from flowmesh.security import DEFAULT_APP_USER_PATTERN, AppUsers
from flowmesh.store import REDIS_COMMANDS
from flowmesh.transport import (
    APPS_EXCHANGE,
    INBOX_EXCHANGE,
    INBOX_PATTERN,
    QueueKind,
    queue_name,
    redelivery_policy,
    routing_key,
)

DEAD_LETTER_POLICY_NAME = "flowmesh-dead-letters"
DEAD_QUEUE_PATTERN = r"^fm\..+\.dead$"
DEAD_LETTER_POLICY: dict[str, object] = {
    "max-length": 100_000,
    "overflow": "drop-head",
    "message-ttl": 14 * 24 * 3600 * 1000,
}
"""Bound on every app's dead queue: 100,000 messages, dropping the oldest, each kept 14 days
(quorum queues support all three from RabbitMQ 3.10). Without a bound a flood of bad input
fills the broker's disk."""

__all__ = [
    "DEAD_LETTER_POLICY",
    "DEAD_LETTER_POLICY_NAME",
    "DEAD_QUEUE_PATTERN",
    "RabbitUser",
    "RedisUser",
    "SecurityPlan",
    "Topology",
    "password_variable",
]

_NOTHING = "^$"
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")


def password_variable(user: str) -> str:
    """The environment variable holding ``user``'s password, e.g. ``FLOWMESH_PASSWORD_FM_APP1``.

    Plans reference passwords through it and never contain them.
    """
    return "FLOWMESH_PASSWORD_" + re.sub(r"[^A-Za-z0-9]", "_", user).upper()


def _escape(text: str) -> str:
    """``re.escape`` without escaping ``-`` (literal outside brackets), for readable plans."""
    return re.escape(text).replace("\\-", "-")


def _alternatives(items: Iterable[str], patterns: Iterable[str] = ()) -> str:
    """An anchored regular expression matching exactly ``items``, and names matching the
    regular expressions ``patterns`` (``^$`` for none)."""
    escaped = sorted({_escape(item) for item in items}) + list(patterns)
    if not escaped:
        return _NOTHING
    return f"^{escaped[0]}$" if len(escaped) == 1 else f"^({'|'.join(escaped)})$"


@dataclass(frozen=True, slots=True)
class RabbitUser:
    """Everything RabbitMQ needs to know about one user in the plan's vhost."""

    name: str
    role: str
    """``app`` or ``client`` (for the rendered comments)."""
    configure: str
    write: str
    read: str
    topics: tuple[tuple[str, str, str], ...]
    """``(exchange, write regex, read regex)`` topic permissions."""
    publishes: tuple[str, ...]
    """The routing keys on ``fm.apps`` that ``topics`` grants (for the matrix)."""
    consumes: tuple[str, ...]
    """Queues the user may consume (for the matrix)."""


@dataclass(frozen=True, slots=True)
class RedisUser:
    """An ACL user of one hosting app."""

    name: str
    app_id: str
    key_patterns: tuple[str, ...]
    """``<prefix>:{<app>}:*`` (one shard, and the layout key) and ``<prefix>:{<app>#*}:*``
    (the shards of a sharded app). App IDs contain no ``#`` nor ``}``, so neither matches
    another app's keys (``pay`` vs ``pay-1``, ``payments``)."""
    commands: tuple[str, ...]

    def acl_rules(self, password: str) -> list[str]:
        """``ACL SETUSER <name>`` arguments; ``reset`` first, so applying twice is harmless."""
        return [
            "reset",
            "on",
            f">{password}",
            *(f"~{pattern}" for pattern in self.key_patterns),
            "resetchannels",
            "-@all",
            *(f"+{command}" for command in self.commands),
        ]


@dataclass(frozen=True, slots=True)
class Topology:
    """Who sends work to whom: the input of a plan."""

    apps: frozenset[str] = frozenset()
    hosts: frozenset[str] = frozenset()
    """Apps that host workflows (derived from calls and children, plus any listed)."""
    calls: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Hosting app -> apps its workflows run activities on."""
    children: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Hosting app -> apps hosting its child workflows."""
    unresolved: tuple[str, ...] = ()
    """Call sites whose target app could not be read (from :func:`topology_from_sources`)."""
    events: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Hosting app -> other apps hosting workflows its workflows send events to."""


@dataclass(frozen=True, slots=True)
class SecurityPlan:
    """Users, permissions and declarations for one vhost and one Redis key prefix."""

    topology: Topology
    clients: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Client user -> apps whose workflows it may start and control."""
    vhost: str = "/"
    key_prefix: str = "fm"
    users: AppUsers = field(default_factory=AppUsers)

    @classmethod
    def build(
        cls,
        *,
        apps: Iterable[str] = (),
        hosts: Iterable[str] = (),
        calls: Mapping[str, Iterable[str]] | None = None,
        children: Mapping[str, Iterable[str]] | None = None,
        events: Mapping[str, Iterable[str]] | None = None,
        clients: Mapping[str, Iterable[str]] | None = None,
        vhost: str = "/",
        key_prefix: str = "fm",
        user_pattern: str = DEFAULT_APP_USER_PATTERN,
        unresolved: Sequence[str] = (),
    ) -> SecurityPlan:
        """Validate the inputs and derive the full set of apps and hosting apps."""
        calls_map = {
            check_app_id(h): frozenset(map(check_app_id, t)) for h, t in (calls or {}).items()
        }
        children_map = {
            check_app_id(p): frozenset(map(check_app_id, c)) for p, c in (children or {}).items()
        }
        events_map = {
            check_app_id(h): frozenset(map(check_app_id, t)) - {h}
            for h, t in (events or {}).items()
        }
        events_map = {h: t for h, t in events_map.items() if t}
        hosting = (
            set(map(check_app_id, hosts)) | set(calls_map) | set(children_map) | set(events_map)
        )
        for targets in (*children_map.values(), *events_map.values()):
            hosting |= targets
        every = set(map(check_app_id, apps)) | hosting
        for targets in calls_map.values():
            every |= targets
        users = AppUsers(user_pattern)
        client_map: dict[str, frozenset[str]] = {}
        for user, managed in (clients or {}).items():
            if not _USER_NAME.fullmatch(user):
                raise ConfigurationError(f"invalid client user name {user!r}")
            if users.is_app_user(user):
                raise ConfigurationError(
                    f"client user {user!r} is named like an app user ({users.pattern}); receivers "
                    "would take it for that app"
                )
            targets = frozenset(map(check_app_id, managed))
            not_hosting = sorted(targets - hosting)
            if not_hosting:
                raise ConfigurationError(
                    f"client {user!r} manages {', '.join(not_hosting)}, which host no workflows "
                    "in this plan (add them with --hosts)"
                )
            client_map[user] = targets
        if not every:
            raise ConfigurationError("the plan has no apps: give --app-id, --calls or --workers")
        if not key_prefix or any(c in key_prefix for c in "{} \t\r\n"):
            raise ConfigurationError(f"invalid key prefix {key_prefix!r}")
        topology = Topology(
            frozenset(every),
            frozenset(hosting),
            calls_map,
            children_map,
            tuple(unresolved),
            events_map,
        )
        return cls(topology, client_map, vhost, key_prefix, users)

    # -- derived facts ---------------------------------------------------------------------------

    @property
    def apps(self) -> list[str]:
        """Every app of the plan, sorted."""
        return sorted(self.topology.apps)

    def hosts(self, app_id: str) -> bool:
        """Whether ``app_id`` hosts workflows (and so needs Redis and a reply consumer)."""
        return app_id in self.topology.hosts

    def publishes(self, app_id: str) -> list[str]:
        """Routing keys on ``fm.apps`` app ``app_id`` publishes with."""
        t = self.topology
        keys = {
            routing_key(app_id, QueueKind.WORK),
            routing_key(app_id, QueueKind.DEAD),
            routing_key(app_id, QueueKind.QUARANTINE),
        }
        if self.hosts(app_id):
            keys.add(routing_key(app_id, QueueKind.REPLY))
        for target in t.calls.get(app_id, ()):
            keys.add(routing_key(target, QueueKind.WORK))
        for child_app in t.children.get(app_id, ()):
            keys |= {
                routing_key(child_app, QueueKind.WORK),
                routing_key(child_app, QueueKind.REPLY),
            }
        for receiver in t.events.get(app_id, ()):
            keys.add(routing_key(receiver, QueueKind.REPLY))
        for host, targets in t.calls.items():
            if app_id in targets:
                keys.add(routing_key(host, QueueKind.REPLY))
        for parent, child_apps in t.children.items():
            if app_id in child_apps:
                keys.add(routing_key(parent, QueueKind.REPLY))
        return sorted(keys)

    def rabbit_users(self) -> list[RabbitUser]:
        """Every RabbitMQ user of the plan: apps first, then clients."""
        users = []
        inbox_key = f"^{INBOX_PATTERN}$"
        for app_id in self.apps:
            own = [queue_name(app_id, kind) for kind in QueueKind]
            consumes = [
                queue_name(app_id, QueueKind.WORK),
                queue_name(app_id, QueueKind.QUARANTINE),
            ]
            exchanges = [APPS_EXCHANGE]
            topics = [(APPS_EXCHANGE, _alternatives(self.publishes(app_id)), _NOTHING)]
            if self.hosts(app_id):
                consumes.append(queue_name(app_id, QueueKind.REPLY))
                exchanges.append(INBOX_EXCHANGE)  # answers to clients' inboxes
            # Every app opens an inbox of its own for the hosts' answers to its task notes
            # (a task whose workflow ended is dropped): declare, bind to and read it.
            answers = inbox_key if self.hosts(app_id) else _NOTHING
            topics.append((INBOX_EXCHANGE, answers, inbox_key))
            users.append(
                RabbitUser(
                    name=self.users.user(app_id),
                    role="app",
                    configure=_alternatives(own, [INBOX_PATTERN]),
                    write=_alternatives(exchanges, [INBOX_PATTERN]),
                    read=_alternatives([*consumes, INBOX_EXCHANGE], [INBOX_PATTERN]),
                    topics=tuple(topics),
                    publishes=tuple(self.publishes(app_id)),
                    consumes=tuple(sorted(consumes)),
                )
            )
        inbox_queue = INBOX_PATTERN
        for user, managed in sorted(self.clients.items()):
            keys = sorted(
                routing_key(app_id, kind)
                for app_id in managed
                for kind in (QueueKind.WORK, QueueKind.REPLY)
            )
            users.append(
                RabbitUser(
                    name=user,
                    role="client",
                    configure=f"^{inbox_queue}$",
                    # write on its inbox queues and read on fm.inbox: binding them
                    write=f"^({_escape(APPS_EXCHANGE)}|{inbox_queue})$",
                    read=f"^({_escape(INBOX_EXCHANGE)}|{inbox_queue})$",
                    topics=(
                        (APPS_EXCHANGE, _alternatives(keys), _NOTHING),
                        (INBOX_EXCHANGE, _NOTHING, inbox_key),
                    ),
                    publishes=tuple(keys),
                    consumes=("fm.inbox.<own>",),
                )
            )
        return users

    def redis_users(self) -> list[RedisUser]:
        """One ACL user per hosting app; activity-only apps get none."""
        prefix = re.sub(r"([*?\[\]\\])", r"\\\1", self.key_prefix)
        return [
            RedisUser(
                name=self.users.user(app_id),
                app_id=app_id,
                key_patterns=(f"{prefix}:{{{app_id}}}:*", f"{prefix}:{{{app_id}#*}}:*"),
                commands=REDIS_COMMANDS,
            )
            for app_id in self.apps
            if self.hosts(app_id)
        ]

    # -- commands --------------------------------------------------------------------------------

    def rabbitmqctl_commands(self, passwords: Mapping[str, str]) -> list[list[str]]:
        """``rabbitmqctl`` argument lists creating the users and their permissions.

        ``passwords`` maps user -> password; a user missing from it is created without a
        password (``change_password`` must then be run separately). ``add_user`` fails for an
        existing user: :func:`flowmesh.cli._security` runs ``change_password`` instead.
        """
        commands: list[list[str]] = []
        for user in self.rabbit_users():
            commands.append(["add_user", user.name, passwords.get(user.name, "")])
            commands.append(
                [
                    "set_permissions",
                    "-p",
                    self.vhost,
                    user.name,
                    user.configure,
                    user.write,
                    user.read,
                ]
            )
            commands.extend(
                ["set_topic_permissions", "-p", self.vhost, user.name, exchange, write, read]
                for exchange, write, read in user.topics
            )
        commands.append(self.dead_letter_policy())
        # Queues declared before topology version 2 get their delivery limit from a policy.
        commands.extend(redelivery_policy(app_id).rabbitmqctl(self.vhost) for app_id in self.apps)
        return commands

    def dead_letter_policy(self) -> list[str]:
        """``rabbitmqctl set_policy`` bounding every app's dead queue (:data:`DEAD_LETTER_POLICY`).

        A policy, not queue arguments: it applies to queues that already exist (RabbitMQ
        refuses to redeclare a queue with other arguments) and can be changed in place.
        """
        return [
            "set_policy",
            "-p",
            self.vhost,
            "--apply-to",
            "queues",
            DEAD_LETTER_POLICY_NAME,
            DEAD_QUEUE_PATTERN,
            json.dumps(DEAD_LETTER_POLICY, separators=(",", ":")),
        ]

    def redis_acl_commands(self, passwords: Mapping[str, str]) -> list[list[str]]:
        """``ACL SETUSER`` commands (argument lists) for the hosting apps' Redis users."""
        return [
            ["ACL", "SETUSER", user.name, *user.acl_rules(passwords[user.name])]
            for user in self.redis_users()
        ]
