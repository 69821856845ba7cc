"""``app3``: runs the finalize activity. Activities only: no Redis needed."""

from __future__ import annotations

import hashlib
import os

import msgpack

from flowmesh import ActivityContext, App

app = App("app3")


@app.activity
async def finalize(ctx: ActivityContext, payload: dict[str, object]) -> dict[str, object]:
    """Seal the payload with a digest; async activities run on the worker's event loop."""
    digest = hashlib.sha256(msgpack.packb(payload, use_bin_type=True)).hexdigest()[:16]
    return {**payload, "digest": digest, "sealed_by": f"app3/{os.getpid()}"}
