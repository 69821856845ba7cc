"""``app2``: runs the transform activity. It hosts no workflows, so it needs no Redis."""

from __future__ import annotations

import os

from flowmesh import ActivityContext, App

app = App("app2")


@app.activity
def transform(ctx: ActivityContext, document: dict[str, object]) -> dict[str, object]:
    """Upper-case the document's text (a stand-in for real work) and say who did it."""
    text = str(document.get("text", ""))
    return {"text": text.upper(), "words": len(text.split()), "by": f"app2/{os.getpid()}"}
