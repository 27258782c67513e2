"""The auth rules without IO: credential parsing and the principal's answer, property-tested.

Whatever a call's metadata holds and whatever the principal endpoint answers, the rules
return an allow or a refusal with a documented reason; they never raise, never echo a
credential, and only ever forward values an HTTP header can carry.
"""

from __future__ import annotations

import json
import re
from typing import Any

import grpc
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transports.triton.server._credentials import (
    API_KEY_HEADER,
    AUTHORIZATION_HEADER,
    MAX_CREDENTIAL_CHARS,
    MAX_PRINCIPAL_BYTES,
    REASONS,
    Credentials,
    Verdict,
    judge_principal,
    parse_credentials,
)

VISIBLE = re.compile(r"[\x21-\x7e]+")
BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] [\x21-\x7e]+")

names = st.one_of(
    st.sampled_from(
        [API_KEY_HEADER, AUTHORIZATION_HEADER, "X-Domino-Api-Key", "Authorization", "other"]
    ),
    st.text(max_size=20),
    st.binary(max_size=10),
)
values = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F)),
    st.builds(lambda t: f"Bearer {t}", st.text()),
    st.sampled_from(["Bearer", "Bearer ", "bearer x", "Bearer  x", " k", "k ", "k" * 5000]),
    st.binary(),
    st.none(),
    st.integers(),
)
# Text the refusals themselves hold: a "credential" equal to part of it is no echo.
OWN_WORDS = " ".join([*REASONS.values(), "credentials refused: missing credentials: send"])
metadata = st.lists(
    st.one_of(st.tuples(names, values), st.tuples(names), st.just("junk"), st.integers()),
    max_size=6,
)


@settings(max_examples=1500)
@given(metadata)
def test_parsing_only_allows_or_refuses_with_a_documented_reason(md: list[Any]) -> None:
    result = parse_credentials(md)
    if isinstance(result, Verdict):
        assert result.code is grpc.StatusCode.UNAUTHENTICATED
        assert result.reason in REASONS
        for pair in md:
            value = pair[1] if isinstance(pair, tuple) and len(pair) == 2 else None
            if isinstance(value, str) and len(value) >= 6 and value not in OWN_WORDS:
                assert value not in result.details, "a credential was echoed"
        return
    assert isinstance(result, Credentials)
    assert result.headers
    for name, value in result.headers:
        assert name in (API_KEY_HEADER, AUTHORIZATION_HEADER)
        assert len(value) <= MAX_CREDENTIAL_CHARS
        pattern = BEARER if name == AUTHORIZATION_HEADER else VISIBLE
        assert pattern.fullmatch(value), value
    # An accepted credential is a header any HTTP client can send as is.
    sent = httpx.Request("GET", "http://127.0.0.1/", headers=dict(result.headers))
    assert [sent.headers[name] for name, _ in result.headers] == [v for _, v in result.headers]


@given(st.binary(max_size=300), st.integers(min_value=-(10**6), max_value=10**6))
def test_any_principal_answer_is_judged_never_raised(body: bytes, status: int) -> None:
    verdict = judge_principal(status, body)
    assert verdict.reason in REASONS
    if status >= 500:
        assert verdict.code is grpc.StatusCode.UNAVAILABLE
    elif verdict.allowed:
        assert status == 200
        assert json.loads(body)["isAnonymous"] is False
    else:
        assert verdict.code is grpc.StatusCode.UNAUTHENTICATED


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["isAnonymous", "canonicalName", "x"]), children, max_size=3
        )
    ),
    max_leaves=12,
)


@given(json_values)
def test_only_an_object_with_isAnonymous_false_is_a_principal(value: Any) -> None:
    verdict = judge_principal(200, json.dumps(value).encode())
    is_principal = isinstance(value, dict) and value.get("isAnonymous") is False
    assert verdict.allowed is is_principal
    assert verdict.reason in REASONS


@pytest.mark.parametrize(
    ("md", "reason"),
    [
        ((), "no-credentials"),
        ((("x-other", "v"),), "no-credentials"),
        ((("x-domino-api-key", ""),), "empty"),
        ((("authorization", "Bearer "),), "not-bearer"),
        ((("authorization", "Bearer"),), "not-bearer"),
        ((("authorization", "Bearer  tok"),), "not-bearer"),
        ((("authorization", "Basic dXNlcjpwYXNz"),), "not-bearer"),
        ((("authorization", "Bearer tok\x01"),), "bad-character"),
        ((("authorization", "Bearer t\u00e9"),), "bad-character"),
        ((("x-domino-api-key", " key"),), "whitespace"),
        ((("x-domino-api-key", "key\t"),), "whitespace"),
        ((("x-domino-api-key", "a b"),), "bad-character"),
        ((("x-domino-api-key", "a\x00b"),), "bad-character"),
        ((("x-domino-api-key", "k" * (MAX_CREDENTIAL_CHARS + 1)),), "too-long"),
        ((("x-domino-api-key", b"key"),), "not-text"),
        ((("x-domino-api-key", "a"), ("X-Domino-Api-Key", "a")), "repeated-header"),
    ],
)
def test_malformed_credentials_and_their_reasons(md: Any, reason: str) -> None:
    result = parse_credentials(md)
    assert isinstance(result, Verdict)
    assert result.reason == reason
    assert result.code is grpc.StatusCode.UNAUTHENTICATED


def test_well_formed_credentials_are_forwarded_unchanged() -> None:
    md = (("Authorization", "bearer a.b-c_d~e+f/g=="), ("x-domino-api-key", "k" * 64), ("a", "b"))
    result = parse_credentials(md)
    assert result == Credentials(
        (("authorization", "bearer a.b-c_d~e+f/g=="), ("x-domino-api-key", "k" * 64))
    )


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (200, b'{"isAnonymous": false}', "principal"),
        (200, b"<html></html>", "not-json"),
        (200, b"\xff\xfe", "not-json"),
        (200, b"[" * 30_000, "not-json"),
        (200, b"null", "not-an-object"),
        (200, b'{"isAnonymous": true}', "anonymous"),
        (200, b'{"isAnonymous": false, "isAnonymous": true}', "not-a-principal"),
        (200, b'{"isAnonymous": "false"}', "not-a-principal"),
        (200, None, "body-too-large"),
        (200, b" " * (MAX_PRINCIPAL_BYTES + 1), "body-too-large"),
        (302, b"", "refused"),
        (204, b"", "refused"),
        (401, b'{"isAnonymous": false}', "refused"),
        (503, b'{"isAnonymous": false}', "upstream-error"),
    ],
)
def test_principal_answers_and_their_reasons(status: int, body: bytes | None, reason: str) -> None:
    assert judge_principal(status, body).reason == reason
