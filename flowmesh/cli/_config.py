"""Connection settings, payload keys and logging set-up shared by CLI commands.

This is the only place any of them lives. Secrets never reach the terminal: every log event
(structlog and stdlib) goes through :func:`flowmesh.security.mask_log_event` /
:class:`~flowmesh.security.MaskingFormatter`, and CLI errors through :func:`mask_url`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping

import structlog

from flowmesh.codec import Codec
from flowmesh.security import (
    MaskingFormatter,
    allow_plaintext_from_env,
    mask_log_event,
    mask_url,
    payload_codec_from_env,
)

__all__ = [
    "DEFAULT_AMQP_URL",
    "DEFAULT_REDIS_URL",
    "build_codec",
    "configure_logging",
    "mask_url",
]

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def build_codec(environ: Mapping[str, str] | None = None) -> Codec:
    """The codec every CLI command uses: encrypting if ``FLOWMESH_PAYLOAD_KEYS`` is set.

    ``FLOWMESH_PAYLOAD_KEYS="k2:<base64 32 bytes>,k1:<base64>"`` (first = active key);
    ``FLOWMESH_PAYLOAD_ALLOW_PLAINTEXT=1`` also reads values written before encryption was
    turned on. Raises ``ConfigurationError`` (never showing key material) on bad settings.
    """
    payload_codec = payload_codec_from_env(environ)
    if payload_codec is None:
        return Codec()
    return Codec(payload_codec=payload_codec, allow_plaintext=allow_plaintext_from_env(environ))


def configure_logging(level: str, fmt: str) -> None:
    """Route structlog (and stdlib logging) to stderr as console lines or JSON.

    Both paths mask URL passwords (``amqp://u:***@h/``) in every value, tracebacks included,
    as a last line of defence behind the masking done where URLs are formatted.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(MaskingFormatter("%(message)s"))
    logging.basicConfig(level=max(numeric, logging.WARNING), handlers=[handler])
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            mask_log_event,  # last before rendering: sees every value, tracebacks as text
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
