"""ERROR frames: the optional ``error_id`` and ``reason`` keys (docs/wire-format.md, 5)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from core_helpers import Item, full_types, sample_frames

import truss_stream as ts


@pytest.mark.parametrize("codec", list(ts.Codec))
def test_going_away_frame_raises_server_going_away_error(read: Any, codec: ts.Codec) -> None:
    frames = [*sample_frames()[:2], ts.error_frame(ts.ServerGoingAwayError(), codec)]
    reader = read(full_types(), frames)
    reader.read_header()
    with pytest.raises(ts.ServerGoingAwayError) as info:
        list(reader.read_items())
    assert isinstance(info.value, ts.RemoteStreamError)
    assert info.value.remote_type == "ServerGoingAwayError"
    assert "shutting down" in info.value.remote_message


def test_an_ordinary_error_is_not_going_away(read: Any) -> None:
    frames = [ts.error_frame(RuntimeError("boom"))]
    with pytest.raises(ts.RemoteStreamError) as info:
        list(read(ts.stream_types(Item), frames).read_items())
    assert type(info.value) is ts.RemoteStreamError
    assert info.value.error_id is None


@pytest.mark.parametrize("codec", list(ts.Codec))
def test_redacted_error_carries_type_and_id_but_not_the_message(read: Any, codec: ts.Codec) -> None:
    frame = ts.error_frame(ValueError("secret path /etc/x"), codec, error_id="e-1", expose=False)
    assert b"secret" not in frame
    with pytest.raises(ts.RemoteStreamError) as info:
        list(read(ts.stream_types(Item), [frame]).read_items())
    assert info.value.remote_type == "ValueError"
    assert info.value.error_id == "e-1"
    assert "e-1" in str(info.value)
    assert "secret" not in str(info.value)


def test_unknown_error_keys_are_ignored(read: Any) -> None:
    payload = msgpack.packb({"type": "E", "message": "m", "later": [1, 2]})
    frame = ts.pack_tag(ts.FrameKind.ERROR, ts.Codec.MSGPACK, len(payload)) + payload
    with pytest.raises(ts.RemoteStreamError, match="remote E: m"):
        list(read(ts.stream_types(Item), [frame]).read_items())
