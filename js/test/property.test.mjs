// Property tests with a seeded generator (no dependency): random values round-trip
// through writer and reader under random chunking, and mutated streams only ever fail
// with a StreamError (never a crash, a hang or another exception).
import assert from "node:assert/strict";
import { test } from "node:test";
import * as ts from "../dist/index.js";

function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const DTYPES = [
  ["float32", (n) => new Float32Array(n)],
  ["int16", (n) => new Int16Array(n)],
  ["uint8", (n) => new Uint8Array(n)],
  ["int64", (n) => new BigInt64Array(n)],
  ["float64", (n) => new Float64Array(n)],
  ["bfloat16", (n) => new Uint16Array(n)],
];

function value(r, depth, codec) {
  const k = Math.floor(r() * (depth > 2 ? 6 : 9));
  switch (k) {
    case 0: return null;
    case 1: return r() < 0.5;
    case 2: return Math.floor((r() - 0.5) * 2 ** 40);
    case 3: return r() * 1e6 - 5e5;
    case 4: return String.fromCodePoint(...Array.from({ length: Math.floor(r() * 6) }, () => Math.floor(r() * 0x2000) + 32));
    case 5: return codec === "msgpack" ? BigInt(Math.floor(r() * 2 ** 20)) * 2n ** 40n : 7;
    case 6: return Array.from({ length: Math.floor(r() * 4) }, () => value(r, depth + 1, codec));
    case 7: return Object.fromEntries(Array.from({ length: Math.floor(r() * 4) }, (_, i) => [`k${i}`, value(r, depth + 1, codec)]));
    default: {
      const [dtype, make] = DTYPES[Math.floor(r() * DTYPES.length)];
      const shape = Array.from({ length: Math.floor(r() * 3) }, () => Math.floor(r() * 4));
      const data = make(shape.reduce((a, b) => a * b, 1));
      for (let i = 0; i < data.length; i++) data[i] = typeof data[i] === "bigint" ? BigInt(Math.floor(r() * 1000) - 500) : Math.floor(r() * 100);
      return ts.ndarray(dtype, shape, data);
    }
  }
}

// The reader's rule: integers within 2^53 are numbers, beyond are BigInt.
function plain(v) {
  if (typeof v === "bigint" && v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= -BigInt(Number.MAX_SAFE_INTEGER)) return Number(v);
  if (v instanceof ts.NDArray) return { dtype: v.dtype, shape: [...v.shape], data: Array.from(v.data) };
  if (Array.isArray(v)) return v.map(plain);
  if (v !== null && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
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

function* randomChunks(bytes, r) {
  let i = 0;
  while (i < bytes.length) {
    const n = 1 + Math.floor(r() * 40);
    yield bytes.slice(i, i + n);
    i += n;
  }
}

test("random values round-trip through the writer and reader, any chunking", async () => {
  const r = rng(1234);
  for (let round = 0; round < 300; round++) {
    const codec = r() < 0.5 ? "msgpack" : "json";
    const w = ts.streamWriter(codec);
    const items = Array.from({ length: Math.floor(r() * 4) }, () => ({ v: value(r, 0, codec) }));
    const bytes = concat([w.header({ h: round }), ...items.map((x) => w.item(x)), w.footer({ n: items.length }), w.end()]);
    const reader = ts.streamReader(randomChunks(bytes, r));
    assert.deepEqual(await reader.readHeader(), { h: round });
    const got = [];
    for await (const x of reader.readItems()) got.push(x);
    assert.deepEqual(plain(got), plain(items), `round ${round} (${codec})`);
    assert.deepEqual(await reader.readFooter(), { n: items.length });
  }
});

test("mutated and truncated streams fail only with StreamError", async () => {
  const r = rng(99);
  for (let round = 0; round < 1500; round++) {
    const codec = r() < 0.5 ? "msgpack" : "json";
    const w = ts.streamWriter(codec);
    const frames = [w.item({ v: value(r, 0, codec) }), w.item({ v: value(r, 0, codec) }), w.end()];
    const bytes = concat(frames);
    const mutated = bytes.slice(0, r() < 0.3 ? Math.floor(r() * bytes.length) : bytes.length);
    for (let k = 0; k < 1 + Math.floor(r() * 3); k++) {
      if (mutated.length) mutated[Math.floor(r() * mutated.length)] = Math.floor(r() * 256);
    }
    const reader = ts.streamReader(randomChunks(mutated, r), { maxFrameBytes: 1 << 20 });
    try {
      for await (const _ of reader.readItems()) {
        // values may decode; what matters is how a failure is reported
      }
    } catch (err) {
      assert.ok(err instanceof ts.StreamError, `round ${round}: ${err?.name}: ${err?.message}`);
    }
  }
});

test("SSE: any events, any line endings, any chunking decode to the same frames", () => {
  const r = rng(7);
  for (let round = 0; round < 200; round++) {
    const codec = r() < 0.5 ? "msgpack" : "json";
    const w = ts.streamWriter(codec);
    const frames = Array.from({ length: 1 + Math.floor(r() * 4) }, () => w.item({ v: value(r, 0, codec) }));
    frames.push(w.end());
    const nl = ["\n", "\r\n", "\r"][Math.floor(r() * 3)];
    let text = "";
    frames.forEach((f, i) => {
      if (r() < 0.3) text += `: ping${nl}${nl}`;
      const kind = ["", "", "header", "item", "footer", "end", "error"][f[0] & 0x0f];
      const data = codec === "msgpack" ? Buffer.from(f).toString("base64") : (kind === "end" ? "{}" : new TextDecoder().decode(f.subarray(5)));
      text += `event: ${kind}${nl}id: ${i}${nl}data: ${data}${nl}${nl}`;
    });
    const bytes = new TextEncoder().encode(text);
    const decoder = new ts.SSEFrameDecoder();
    const got = [];
    for (const c of randomChunks(bytes, r)) got.push(...decoder.feed(c));
    const expected = frames.map((f) => (codec === "json" && (f[0] & 0x0f) === 5 ? ts.packTag(5, 0, 0) : f));
    assert.deepEqual(got.map((f) => Array.from(f)), expected.map((f) => Array.from(f)), `round ${round}`);
    assert.equal(decoder.lastEventId, String(frames.length - 1));
  }
});
