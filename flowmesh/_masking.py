"""Keeping passwords out of logs, errors and CLI output.

:func:`mask_secrets` replaces the password of every ``scheme://user:password@`` in a text (and
``password=`` query parameters) by ``***``. It is the one implementation the CLI uses for its
own messages, for the structlog processor :func:`mask_log_event` that runs on every log event
as a last line of defence, and for :class:`MaskingFormatter` on stdlib log records.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import MutableMapping
from typing import Any, Final

MASK: Final = "***"

# redis-py (and others) also take the password as a query parameter.
_QUERY: Final = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pwd|pass)=)(?P<value>[^&;#\s\"']*)", re.I
)
_SCHEME_CHARS: Final = frozenset(string.ascii_letters + string.digits + "+.-")
_MAX_SCHEME = 32
_USER_END: Final = re.compile(r"[:/@\s\"]")
_TOKEN_END: Final = re.compile(r"[\s\"]")
# Containers nested deeper than this in a log event are rendered as a masked repr.
_MAX_DEPTH: Final = 8
_PLAIN: Final = (int, float, bool, type(None), bytes, bytearray)


def mask_secrets(text: str) -> str:
    """``text`` with URL passwords replaced: ``amqp://u:secret@h/`` -> ``amqp://u:***@h/``.

    Also masks ``?password=...`` query parameters. Works on any text (an error message, a
    repr), not only on a bare URL, is idempotent, and takes time linear in ``len(text)``
    (log values may be large and attacker-influenced, so no backtracking regex).
    """
    if "://" in text:
        text = _mask_userinfo(text)
    if "=" in text:
        text = _QUERY.sub(lambda m: f"{m['key']}{MASK}", text)
    return text


def _mask_userinfo(text: str) -> str:
    """Mask ``scheme://user:PASSWORD@``.

    The password runs to the *last* "@" before whitespace or a double quote: an unencoded
    "@" (or "/") in a password must not leave its tail visible, and masking too much of a
    malformed text is the safe way to be wrong.
    """
    parts: list[str] = []
    copied = 0  # text[:copied] is in parts
    search = 0
    # The whitespace-delimited token last scanned, and its last "@", so that many "://" in
    # one token do not rescan it.
    token_from, token_end, token_at = -1, -1, -1
    while (colon := text.find("://", search)) >= 0:
        search = colon + 3
        start = colon
        while start > 0 and colon - start < _MAX_SCHEME and text[start - 1] in _SCHEME_CHARS:
            start -= 1
        if start == colon or not text[start].isalpha():
            continue
        user_end = _USER_END.search(text, colon + 3)
        if user_end is None or text[user_end.start()] != ":":
            continue
        password = user_end.start() + 1
        if not token_from <= password < token_end:
            end = _TOKEN_END.search(text, password)
            token_from, token_end = password, end.start() if end else len(text)
            token_at = text.rfind("@", password, token_end)
        if token_at < password:
            continue
        parts.append(text[copied:password])
        parts.append(MASK)
        copied = search = token_at
    if not parts:
        return text
    parts.append(text[copied:])
    return "".join(parts)


mask_url = mask_secrets
"""Alias kept for the CLI's historical name: masks a URL (or any text holding URLs)."""


def mask_value(value: object, _depth: int = 0) -> object:
    """``value`` with :func:`mask_secrets` applied to every string inside it.

    Strings, and strings in dicts, lists, tuples and sets, are masked; other objects are
    replaced by their masked ``repr`` when that repr holds a secret (renderers would print
    the repr), and kept as they are otherwise.
    """
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, _PLAIN):
        return value
    if _depth < _MAX_DEPTH:
        if isinstance(value, dict):
            return {
                mask_value(key, _depth + 1): mask_value(item, _depth + 1)
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [mask_value(item, _depth + 1) for item in value]
        if isinstance(value, tuple):  # named tuples become plain tuples
            return tuple(mask_value(item, _depth + 1) for item in value)
        if isinstance(value, set | frozenset):
            return {mask_value(item, _depth + 1) for item in value}
    try:
        shown = repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__qualname__}>"
    masked = mask_secrets(shown)
    return value if masked == shown else masked


def mask_log_event(
    logger: object, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask URL passwords in every value of the event.

    Put it after ``format_exc_info`` (so tracebacks are text by then) and right before the
    renderer.
    """
    for key, value in event_dict.items():
        # Inline fast paths: this runs on every log line, and most values are plain.
        if value.__class__ is str:
            if "://" in value or "=" in value:
                event_dict[key] = mask_secrets(value)
        elif not isinstance(value, _PLAIN):
            event_dict[key] = mask_value(value)
    return event_dict


class MaskingFormatter(logging.Formatter):
    """A stdlib ``logging.Formatter`` whose output (tracebacks included) is masked."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))
