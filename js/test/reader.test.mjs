// Unit tests of the package, run with `node --test test/` after `npm run build`.
import assert from "node:assert/strict";
import { test } from "node:test";
import * as ts from "../dist/index.js";

const f32 = (xs) => new Float32Array(xs);

function stream(codec, { header = true, footer = true, items = 3 } = {}) {
  const w = ts.streamWriter(codec);
  const frames = [];
  if (header) frames.push(w.header({ name: "h" }));
  for (let i = 0; i < items; i++) frames.push(w.item({ i, t: ts.ndarray("float32", [2], f32([i, -i])) }));
  if (footer) frames.push(w.footer({ count: items }));
  frames.push(w.end());
  return frames;
}

function concat(frames) {
  const out = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
  let at = 0;
  for (const f of frames) {
    out.set(f, at);
    at += f.length;
  }
  return out;
}

function* chunks(bytes, size) {
  for (let i = 0; i < bytes.length; i += size) yield bytes.slice(i, i + size);
}

async function collect(reader) {
  const out = [];
  for await (const x of reader.readItems()) out.push(x);
  return out;
}

for (const codec of ["msgpack", "json"]) {
  test(`${codec}: header, items, footer, END under any chunking`, async () => {
    const bytes = concat(stream(codec));
    for (const size of [1, 2, 5, 7, 64, bytes.length]) {
      const reader = ts.streamReader(chunks(bytes, size));
      assert.deepEqual(await reader.readHeader(), { name: "h" });
      const items = await collect(reader);
      assert.deepEqual(items.map((x) => x.i), [0, 1, 2]);
      assert.ok(items[1].t instanceof ts.NDArray);
      assert.deepEqual(Array.from(items[1].t.data), [1, -1]);
      assert.deepEqual(await reader.readFooter(), { count: 3 });
      assert.equal(reader.ended, true);
    }
  });

  test(`${codec}: order is enforced and a misordered call consumes nothing`, async () => {
    const reader = ts.streamReader(stream(codec));
    await assert.rejects(collect(reader), ts.StreamOrderError);
    await assert.rejects(reader.readFooter(), ts.StreamOrderError);
    assert.deepEqual(await reader.readHeader(), { name: "h" });
    await assert.rejects(reader.readHeader(), ts.StreamConsumedError);
    assert.equal((await collect(reader)).length, 3);
    await assert.rejects(collect(reader), ts.StreamConsumedError);
    assert.deepEqual(await reader.readFooter(), { count: 3 });
  });

  test(`${codec}: a stream without END is truncated, unless requireEnd is false`, async () => {
    const frames = stream(codec, { header: false, footer: false }).slice(0, -1);
    await assert.rejects(collect(ts.streamReader(frames)), ts.StreamTruncatedError);
    assert.equal((await collect(ts.streamReader(frames, { requireEnd: false }))).length, 3);
    const cut = concat(frames).subarray(0, frames[0].length + 8);
    await assert.rejects(collect(ts.streamReader([cut], { requireEnd: false })), ts.StreamTruncatedError);
  });

  test(`${codec}: an ERROR frame raises RemoteStreamError with the remote type and message`, async () => {
    const w = ts.streamWriter(codec);
    const frames = [w.item({ i: 0 }), w.error(new RangeError("too far"))];
    const reader = ts.streamReader(frames);
    const got = [];
    await assert.rejects(
      (async () => {
        for await (const x of reader.readItems()) got.push(x);
      })(),
      (err) => err instanceof ts.RemoteStreamError && err.remoteType === "RangeError" && err.remoteMessage === "too far",
    );
    assert.deepEqual(got, [{ i: 0 }]);
  });
}

test("the writer enforces the order and changes nothing on a misordered call", () => {
  const w = ts.streamWriter();
  w.item({ a: 1 });
  assert.throws(() => w.header({}), ts.StreamOrderError);
  w.footer({});
  assert.throws(() => w.item({}), ts.StreamOrderError);
  assert.throws(() => w.footer({}), ts.StreamOrderError);
  w.end();
  assert.throws(() => w.end(), ts.StreamOrderError);
  assert.throws(() => w.error(new Error("x")), ts.StreamOrderError);
  assert.equal(w.closed, true);
});

test("the frame size limit is checked from the tag, before any payload arrives", () => {
  const decoder = new ts.FrameDecoder(100);
  decoder.feed(ts.packTag(ts.FrameKind.ITEM, ts.Codec.MSGPACK, 1_000_000));
  assert.throws(() => decoder.nextFrame(), (err) => err instanceof ts.FrameTooLargeError && err.length === 1_000_000 && err.limit === 100);
});

test("a big frame's buffer is allocated only once half of it has arrived", () => {
  const decoder = new ts.FrameDecoder();
  const size = 64 * 1024 * 1024;
  decoder.feed(ts.packTag(ts.FrameKind.ITEM, ts.Codec.MSGPACK, size));
  decoder.feed(new Uint8Array(1024));
  assert.equal(decoder.nextFrame(), null);
  assert.equal(decoder["assembly"], null);
});

test("arrays in a frame that arrives whole are views of the received bytes", async () => {
  const w = ts.streamWriter("msgpack");
  const frame = w.item({ t: ts.ndarray("float64", [3], new Float64Array([1, 2, 3])) });
  // The writer aligns array data to 8 bytes from the frame's start.
  const buffer = new ArrayBuffer(frame.length + 8);
  const chunk = new Uint8Array(buffer, 8, frame.length);
  chunk.set(frame);
  const end = w.end();
  const [item] = await collect(ts.streamReader([chunk, end]));
  assert.equal(item.t.data.buffer, buffer);
  assert.ok(item.t.data instanceof Float64Array);
  // Misaligned (the frame starts at an odd offset): a copy, same values.
  const odd = new Uint8Array(new ArrayBuffer(frame.length + 3), 3, frame.length);
  odd.set(frame);
  const [copied] = await collect(ts.streamReader([odd, end]));
  assert.notEqual(copied.t.data.buffer, odd.buffer);
  assert.deepEqual(Array.from(copied.t.data), [1, 2, 3]);
});

test("assembled frames keep arrays aligned (views, not copies)", async () => {
  const w = ts.streamWriter("msgpack");
  const frame = w.item({ t: ts.ndarray("int64", [4], new BigInt64Array([1n, 2n, 3n, -4n])) });
  const decoder = new ts.FrameDecoder();
  for (const c of chunks(frame, 3)) decoder.feed(c);
  const got = decoder.nextFrame();
  const value = ts.decodeMsgpack(got.payload);
  assert.ok(value.t.data instanceof BigInt64Array);
  assert.equal(value.t.data.buffer, got.payload.buffer); // a view of the assembly buffer
  assert.deepEqual(Array.from(value.t.data), [1n, 2n, 3n, -4n]);
});

test("msgpack: integers past 2^53 are BigInt, ext codes other than 1 and -1 are rejected", () => {
  assert.equal(ts.decodeMsgpack(new Uint8Array([0xcf, 0, 0x20, 0, 0, 0, 0, 0, 1])), 2n ** 53n + 1n);
  assert.equal(ts.decodeMsgpack(new Uint8Array([0xcf, 0, 0, 0, 0, 0, 0, 0, 5])), 5);
  assert.throws(() => ts.decodeMsgpack(new Uint8Array([0xd4, 0x02, 0])), ts.UnknownExtError);
  assert.throws(() => ts.decodeMsgpack(new Uint8Array([0xd4, 0x7f, 0])), ts.UnknownExtError);
  const date = ts.decodeMsgpack(new Uint8Array([0xd6, 0xff, 0, 0, 0, 60]));
  assert.equal(date.toISOString(), "1970-01-01T00:01:00.000Z");
  assert.throws(() => ts.decodeMsgpack(new Uint8Array([0xc1])), ts.MalformedFrameError);
  assert.throws(() => ts.decodeMsgpack(new Uint8Array([0x80, 0x80])), ts.MalformedFrameError);
  assert.throws(() => ts.decodeMsgpack(new Uint8Array([0xa2, 0xff, 0xfe])), ts.MalformedFrameError);
  const deep = new Uint8Array(2000).fill(0x91);
  assert.throws(() => ts.decodeMsgpack(deep), ts.MalformedFrameError);
});

test("msgpack maps named __proto__ stay plain data", () => {
  const w = ts.streamWriter("msgpack");
  const value = JSON.parse('{"__proto__": {"polluted": 1}}');
  const frame = w.item(value);
  const decoded = ts.decodeMsgpack(frame.subarray(5));
  assert.equal(Object.getPrototypeOf(decoded), Object.prototype);
  assert.deepEqual(decoded["__proto__"], { polluted: 1 });
  assert.equal({}.polluted, undefined);
});

test("dtype descriptors: the spec's grammar, nothing else", () => {
  for (const ok of ["|b1", "<b1", "|i1", "<i8", ">f4", "<c16", "<U7", "|S5", "<S0", "bfloat16", "float8_e5m2"]) {
    ts.parseDType(ok);
  }
  for (const bad of ["<i3", "<f1", "|i4", "|U5", "<i04", "f4", "float32", "<O8", "<V4", "float8_e8m0fnu", "int2"]) {
    assert.throws(() => ts.parseDType(bad), ts.UnknownExtError, bad);
  }
  assert.equal(ts.parseDType("float32", true).name, "float32");
  assert.throws(() => ts.parseDType("float", true), ts.UnknownExtError);
  assert.equal(ts.parseDType("<U7").itemsize, 28);
});

test("string arrays: UCS-4, NUL padded, trailing NULs stripped", async () => {
  for (const codec of ["msgpack", "json"]) {
    const w = ts.streamWriter(codec);
    const frames = [w.item({ u: ts.ndarray("<U4", [3], ["a", "\u{1F600}b", "a\0b"]), s: ts.ndarray("|S2", [2], ["x", "\xff\x01"]) }), w.end()];
    const [item] = await collect(ts.streamReader(frames));
    assert.deepEqual(item.u.data, ["a", "\u{1F600}b", "a\0b"]);
    assert.deepEqual(item.s.data, ["x", "\xff\x01"]);
  }
  assert.throws(() => ts.ndarray("<U1", [1], ["ab"]).toJSON(), ts.UnsupportedValueError);
  assert.throws(() => ts.ndarray("|S1", [1], ["\u0100"]).toJSON(), ts.UnsupportedValueError);
});

test("raw-bit dtypes: the decode helpers", () => {
  assert.deepEqual(Array.from(ts.bfloat16ToFloat32(new Uint16Array([0x3f80, 0xc040, 0x7f80]))), [1, -3, Infinity]);
  assert.deepEqual(Array.from(ts.float16ToFloat32(new Uint16Array([0x3c00, 0xc000, 0x0001, 0x7c00]))), [1, -2, 2 ** -24, Infinity]);
  assert.deepEqual(Array.from(ts.float8ToFloat32(new Uint8Array([0x38, 0x7e, 0x7f]), "float8_e4m3fn")), [1, 448, NaN]);
  assert.deepEqual(Array.from(ts.float8ToFloat32(new Uint8Array([0x3c, 0x7b, 0x7c]), "float8_e5m2")), [1, 57344, Infinity]);
  assert.deepEqual(Array.from(ts.float8ToFloat32(new Uint8Array([0x80]), "float8_e4m3fnuz")), [NaN]);
  assert.deepEqual(Array.from(ts.int4ToInt8(new Uint8Array([0x0f, 0x07, 0x08, 0xf1]))), [-1, 7, -8, 1]);
});

test("the writer refuses what it cannot encode, with a clear error", () => {
  const w = ts.streamWriter("json");
  assert.throws(() => w.item({ b: new Uint8Array([0xff]) }), (err) => err instanceof ts.UnsupportedValueError && /msgpack/.test(err.message));
  assert.throws(() => w.item({ f: new Float32Array(2) }), (err) => err instanceof ts.UnsupportedValueError && /ndarray/.test(err.message));
  assert.throws(() => ts.ndarray("float32", [3], new Float32Array(2)), ts.UnsupportedValueError);
  assert.throws(() => ts.ndarray("object", [0], []), ts.UnsupportedValueError);
  assert.throws(() => ts.ndarray("float32", [2], new Float64Array(2)).toJSON(), ts.UnsupportedValueError);
  const m = ts.streamWriter("msgpack");
  assert.throws(() => m.item({ n: 2n ** 64n }), ts.UnsupportedValueError);
  assert.throws(() => m.item({ f: () => 1 }), ts.UnsupportedValueError);
});

test("JSON codec: NaN and infinities are written as null, as pydantic writes them", () => {
  const w = ts.streamWriter("json");
  const frame = w.item({ a: NaN, b: Infinity, c: 1, n: 2n ** 60n });
  assert.equal(new TextDecoder().decode(frame.subarray(5)), `{"a":null,"b":null,"c":1,"n":${2n ** 60n}}`);
});

test("tags: reserved bits and the array hint on JSON are UnknownCodecError", () => {
  assert.throws(() => ts.parseTagByte(0x43), ts.UnknownCodecError);
  assert.throws(() => ts.parseTagByte(0x23), ts.UnknownCodecError);
  assert.throws(() => ts.parseTagByte(0x17), ts.MalformedFrameError);
  assert.deepEqual(ts.parseTagByte(0x33), [3, 0x10, true]);
});

test("SSE decoder: LF, CRLF and CR line ends, comments, split events, kind checks", () => {
  const w = ts.streamWriter("msgpack");
  const frame = w.item({ a: 1 });
  const b64 = Buffer.from(frame).toString("base64");
  for (const nl of ["\n", "\r\n", "\r"]) {
    const text = `: ping${nl}${nl}event: item${nl}id: 0${nl}data: ${b64}${nl}${nl}event: item${nl}id: 1${nl}data: {"b":${nl}data: 2}${nl}${nl}event: end${nl}id: 2${nl}data: {}${nl}${nl}`;
    const bytes = new TextEncoder().encode(text);
    for (const size of [1, 3, bytes.length]) {
      const decoder = new ts.SSEFrameDecoder();
      const frames = [];
      for (const c of chunks(bytes, size)) frames.push(...decoder.feed(c));
      assert.equal(frames.length, 3, `${JSON.stringify(nl)} ${size}`);
      assert.deepEqual(frames[0], frame);
      assert.equal(new TextDecoder().decode(frames[1].subarray(5)), '{"b":\n2}');
      assert.equal(frames[2][0], 5);
      assert.equal(decoder.lastEventId, "2");
      assert.equal(decoder.ended, true);
    }
  }
  const wrong = new ts.SSEFrameDecoder();
  assert.throws(() => wrong.feed(new TextEncoder().encode(`event: header\ndata: ${b64}\n\n`)), ts.MalformedFrameError);
  assert.throws(() => new ts.SSEFrameDecoder().feed(new TextEncoder().encode("event: bogus\ndata: {}\n\n")), ts.MalformedFrameError);
  const small = new ts.SSEFrameDecoder(100);
  assert.throws(() => small.feed(new Uint8Array(200).fill(0x61)), ts.FrameTooLargeError);
});

test("SSE decoder: events carry their ids, retry: is kept", () => {
  const decoder = new ts.SSEFrameDecoder();
  const enc = (s) => new TextEncoder().encode(s);
  const events = decoder.feedEvents(enc("retry: 250\nevent: item\nid: 4\ndata: {}\n\nevent: item\ndata: {}\n\n"));
  assert.deepEqual(events.map((e) => e.id), ["4", "4"]); // an event without id keeps the last one
  assert.equal(decoder.retryMs, 250);
});

test("ERROR frames: error_id and the going-away reason", async () => {
  for (const codec of ["msgpack", "json"]) {
    const w = ts.streamWriter(codec);
    const frames = [w.error(new Error("shutting down"), { type: "ServerGoingAwayError", goingAway: true, errorId: "e-1" })];
    await assert.rejects(
      collect(ts.streamReader(frames)),
      (err) => err instanceof ts.ServerGoingAwayError && err instanceof ts.RemoteStreamError && err.errorId === "e-1",
    );
    const body = ts.decodeError(frames[0][0] & 0x10, frames[0].subarray(5));
    assert.deepEqual(body, { type: "ServerGoingAwayError", message: "shutting down", errorId: "e-1", reason: "going_away" });
  }
});

test("base64 is strict: padding required, no stray characters", async () => {
  const bad = ['{"a":{"data_b64":"AAE","shape":[2],"dtype":"uint8"}}', '{"a":{"data_b64":"AA E","shape":[2],"dtype":"uint8"}}', '{"a":{"data_b64":"AAE=AA==","shape":[2],"dtype":"uint8"}}'];
  for (const body of bad) assert.throws(() => ts.decodeJson(new TextEncoder().encode(body)), ts.MalformedFrameError, body);
  const good = ts.decodeJson(new TextEncoder().encode('{"a":{"data_b64":"AAE=","shape":[2],"dtype":"uint8"}}'));
  assert.deepEqual(Array.from(good.a.data), [0, 1]);
});

test("a reader stops pulling its source at END", async () => {
  const w = ts.streamWriter();
  let pulled = 0;
  async function* source() {
    for (const f of [w.item({ a: 1 }), w.end(), new Uint8Array([0xff, 0xff])]) {
      pulled++;
      yield f;
    }
  }
  const reader = ts.streamReader(source());
  assert.equal((await collect(reader)).length, 1);
  assert.equal(pulled, 2);
});

test("a source that throws is a truncated stream", async () => {
  const w = ts.streamWriter();
  async function* source() {
    yield w.item({ a: 1 });
    throw new TypeError("terminated");
  }
  await assert.rejects(collect(ts.streamReader(source())), ts.StreamTruncatedError);
});

test("a caller's abort passes through unchanged", async () => {
  for (const name of ["AbortError", "TimeoutError"]) {
    async function* source() {
      yield ts.streamWriter().item({ a: 1 });
      throw new DOMException("stopped", name);
    }
    await assert.rejects(collect(ts.streamReader(source())), (err) => err.name === name && !(err instanceof ts.StreamError));
  }
});

test("readAll reads what is there", async () => {
  const all = await ts.streamReader(stream("msgpack")).readAll();
  assert.deepEqual(all.header, { name: "h" });
  assert.equal(all.items.length, 3);
  assert.deepEqual(all.footer, { count: 3 });
  const bare = await ts.streamReader(stream("json", { header: false, footer: false })).readAll();
  assert.equal(bare.header, undefined);
  assert.equal(bare.footer, undefined);
  assert.equal(bare.items.length, 3);
});

test("header: false and footer: false make those frames malformed, as in Python", async () => {
  await assert.rejects(collect(ts.streamReader(stream("msgpack"), { header: false })), ts.MalformedFrameError);
  const r = ts.streamReader(stream("msgpack", { header: false }), { footer: false });
  await assert.rejects(collect(r), ts.MalformedFrameError);
});
