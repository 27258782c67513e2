"""The auth rules, sans IO: which credentials are well formed, which principal answers allow.

:func:`parse_credentials` reads a call's metadata and returns the :class:`Credentials` to
forward to the principal endpoint, or a :class:`Verdict` that refuses the call at once
(malformed credentials never reach the endpoint). :func:`judge_principal` turns the
endpoint's answer (status and body) into a :class:`Verdict`. Neither raises, whatever
the input; the interceptor in :mod:`.auth` does the IO, caching and logging.

Every refusal carries a short, stable ``reason`` (logged, and named in the call's
details); the reasons are listed in :data:`REASONS` and in ``docs/triton-proxy.md``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc

__all__ = [
    "API_KEY_HEADER",
    "AUTHORIZATION_HEADER",
    "MAX_CREDENTIAL_CHARS",
    "MAX_PRINCIPAL_BYTES",
    "REASONS",
    "Credentials",
    "Verdict",
    "judge_principal",
    "parse_credentials",
    "transport_failure",
]

API_KEY_HEADER = "x-domino-api-key"
AUTHORIZATION_HEADER = "authorization"

MAX_CREDENTIAL_CHARS = 4096
"""Longest credential header value accepted (API keys are ~64 chars, JWTs a few KB)."""

MAX_PRINCIPAL_BYTES = 64 * 1024
"""Largest principal body read; a longer one is refused (``body-too-large``)."""

_UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

REASONS: dict[str, str] = {
    # The call's own credentials (decided without asking the principal endpoint).
    "no-credentials": "neither x-domino-api-key nor authorization was sent",
    "repeated-header": "a credential header was sent more than once",
    "not-text": "a credential header value is binary, not text",
    "empty": "a credential header value is empty",
    "too-long": f"a credential header value is longer than {MAX_CREDENTIAL_CHARS} characters",
    "whitespace": "a credential header value starts or ends with whitespace",
    "bad-character": "a credential holds a character outside visible ASCII (0x21-0x7e)",
    "not-bearer": "authorization is not 'Bearer <token>'",
    # The principal endpoint's answer.
    "principal": "allowed: a 200 with a JSON object whose isAnonymous is false",
    "refused": "the principal endpoint answered a status other than 200 below 500",
    "not-json": "the 200 body is not JSON",
    "not-an-object": "the 200 body is JSON but not an object",
    "anonymous": "the 200 body says isAnonymous: true",
    "not-a-principal": "the 200 body has no isAnonymous: false (missing, repeated or not a bool)",
    "body-too-large": f"the 200 body is larger than {MAX_PRINCIPAL_BYTES} bytes",
    # No answer (UNAVAILABLE: the caller may retry).
    "upstream-error": "the principal endpoint answered 5xx",
    "unreachable": "the principal endpoint could not be reached or broke HTTP",
    "deadline": "the principal endpoint did not answer in full within the total deadline",
}
"""Every ``Verdict.reason`` there is, with what it means."""


@dataclass(frozen=True)
class Verdict:
    """An auth decision.

    Attributes:
        code: None to allow, else the gRPC status to fail the call with.
        reason: one of :data:`REASONS`.
        details: what the caller is told (never a credential).
        status: the principal endpoint's HTTP status, when it answered.
    """

    code: grpc.StatusCode | None
    reason: str
    details: str = ""
    status: int | None = None

    @property
    def allowed(self) -> bool:
        """Whether the call may go ahead."""
        return self.code is None


@dataclass(frozen=True)
class Credentials:
    """Well-formed credential headers of one call, as they are forwarded.

    Attributes:
        headers: ``(name, value)`` pairs, names lower case, sorted by name.
    """

    headers: tuple[tuple[str, str], ...]


def _refuse(reason: str, name: str = "") -> Verdict:
    what = f"{name}: " if name else ""
    return Verdict(_UNAUTHENTICATED, reason, f"credentials refused: {what}{REASONS[reason]}")


def _is_visible_ascii(text: str) -> bool:
    return text.isascii() and text.isprintable() and " " not in text


def _value_problem(name: str, value: str) -> str | None:
    if not value:
        return "empty"
    if len(value) > MAX_CREDENTIAL_CHARS:
        return "too-long"
    if name == AUTHORIZATION_HEADER and value.rstrip().lower() == "bearer":
        return "not-bearer"  # the scheme without a token
    if value != value.strip():
        return "whitespace"
    if name == AUTHORIZATION_HEADER:
        scheme, space, token = value.partition(" ")
        if not space or scheme.lower() != "bearer":
            return "bad-character" if not _is_visible_ascii(scheme) else "not-bearer"
        if not token or token.startswith(" "):
            return "not-bearer"
        return None if _is_visible_ascii(token) else "bad-character"
    return None if _is_visible_ascii(value) else "bad-character"


def parse_credentials(metadata: Iterable[tuple[Any, Any]] | None) -> Credentials | Verdict:
    """The call's credential headers, or the refusal of a malformed or missing one.

    ``x-domino-api-key: <key>`` and ``authorization: Bearer <token>`` (scheme in any
    case, one space, then the token) are read; other metadata is ignored. A key or token
    must be 1 to :data:`MAX_CREDENTIAL_CHARS` visible ASCII characters (0x21-0x7e): no
    whitespace around or inside, no control characters, nothing a header cannot carry.
    Each header may appear once. Never raises.

    Returns:
        :class:`Credentials` to look up, or an ``UNAUTHENTICATED`` :class:`Verdict`.
    """
    found: dict[str, str] = {}
    try:
        pairs = list(metadata or ())
    except Exception:  # a metadata object that cannot be iterated: nothing usable
        return _refuse("no-credentials")
    for pair in pairs:
        try:
            key, value = pair
        except (TypeError, ValueError):
            continue
        if not isinstance(key, str):
            continue
        name = key.lower()
        if name not in (API_KEY_HEADER, AUTHORIZATION_HEADER):
            continue
        if name in found:
            return _refuse("repeated-header", name)
        if not isinstance(value, str):
            return _refuse("not-text", name)
        problem = _value_problem(name, value)
        if problem is not None:
            return _refuse(problem, name)
        found[name] = value
    if not found:
        return Verdict(
            _UNAUTHENTICATED,
            "no-credentials",
            f"missing credentials: send {API_KEY_HEADER} or {AUTHORIZATION_HEADER}: Bearer",
        )
    return Credentials(tuple(sorted(found.items())))


class _RepeatedIsAnonymous(ValueError):
    """``isAnonymous`` twice in one object: parsers disagree on which one counts."""


def _reject_repeated_flag(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key == "isAnonymous" and key in result:
            raise _RepeatedIsAnonymous
        result[key] = value
    return result


def judge_principal(status: int, body: bytes | None) -> Verdict:
    """The decision an answer of the principal endpoint makes.

    Only a 200 whose body is a JSON object with ``isAnonymous`` exactly ``false``
    allows. 5xx is ``UNAVAILABLE``; any other status, and any other 200 body, is
    ``UNAUTHENTICATED``. Never raises.

    Args:
        status: the HTTP status.
        body: the body of a 200 (ignored otherwise); None if it was larger than
            :data:`MAX_PRINCIPAL_BYTES`.
    """
    if status >= 500:
        return Verdict(
            _UNAVAILABLE, "upstream-error", f"authentication service answered {status}", status
        )
    if status != 200:
        return Verdict(_UNAUTHENTICATED, "refused", f"credentials rejected ({status})", status)
    if body is None or len(body) > MAX_PRINCIPAL_BYTES:
        reason = "body-too-large"
    else:
        try:
            principal = json.loads(body, object_pairs_hook=_reject_repeated_flag)
        except _RepeatedIsAnonymous:
            reason = "not-a-principal"
        except (ValueError, RecursionError):
            reason = "not-json"
        else:
            if not isinstance(principal, dict):
                reason = "not-an-object"
            elif principal.get("isAnonymous") is True:
                reason = "anonymous"
            elif principal.get("isAnonymous") is not False:
                reason = "not-a-principal"
            else:
                return Verdict(None, "principal", status=status)
    return Verdict(
        _UNAUTHENTICATED,
        reason,
        f"credentials rejected: the principal endpoint's answer is not a principal ({reason})",
        status,
    )


def transport_failure(reason: str) -> Verdict:
    """``UNAVAILABLE`` for a lookup that got no full answer (``unreachable``, ``deadline``)."""
    return Verdict(_UNAVAILABLE, reason, f"authentication service unavailable ({reason})")
