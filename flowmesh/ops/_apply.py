"""Applying the security plan's declarations to the broker (``flowmesh security apply``)."""

from __future__ import annotations

from flowmesh._tls import TLSConfig
from flowmesh.ops._plan import SecurityPlan
from flowmesh.transport import EXCHANGES, QueueKind, queue_name

__all__ = ["declare_topology"]


async def declare_topology(
    plan: SecurityPlan, admin_url: str, *, tls: TLSConfig | None = None, timeout: float = 30.0
) -> list[str]:
    """Declare the exchanges, every app's queues and their bindings with admin credentials.

    Idempotent. Returns what was declared (one line each). Uses the transport itself, so the
    declarations are exactly what the workers expect.
    """
    from flowmesh.transport.rabbitmq import RabbitMQConfig, RabbitMQTransport

    config = RabbitMQConfig(
        url=admin_url, connection_name="flowmesh-security-apply", operation_timeout=timeout, tls=tls
    )
    done = [f"exchange {name}" for name in EXCHANGES]
    async with RabbitMQTransport(config) as transport:  # connect() declares the exchanges
        for app_id in plan.apps:
            await transport.declare_app(app_id, required=True)
            done += [f"queue {queue_name(app_id, kind)} + binding" for kind in QueueKind]
    return done
