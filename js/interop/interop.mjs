// The JavaScript half of tests/test_js_interop.py (not part of the package).
//
//   node interop/interop.mjs read MANIFEST.json   read each case's stream file, print a JSON report
//   node interop/interop.mjs write DIR            write the JS-side cases as stream files into DIR
//   node interop/interop.mjs live BASE_URL        read the Python example/test server over fetch
//
// Values are reported in a JSON form Python compares exactly (see `report`).
import { readFile, writeFile } from "node:fs/promises";
import * as ts from "../dist/index.js";
import { errorReport, live, readStream } from "./report.mjs";

/** Chunk a buffer into pieces of `size` (0: one chunk), as an async iterable. */
async function* chunked(bytes, size) {
  if (!size) {
    yield bytes;
    return;
  }
  for (let i = 0; i < bytes.length; i += size) yield bytes.slice(i, i + size);
}

async function readCases(manifestPath) {
  const manifest = JSON.parse(await readFile(manifestPath, "utf8"));
  const results = {};
  for (const c of manifest.cases) {
    const bytes = new Uint8Array(await readFile(c.path));
    const reader = ts.streamReader(chunked(bytes, c.chunk ?? 0), c.options ?? {});
    results[c.name] = await readStream(reader, { header: c.header ?? true, footer: c.footer ?? true });
  }
  return results;
}

const f32 = (xs) => new Float32Array(xs);

/** The streams the JS writer produces for Python to read. */
function writeCases() {
  const cases = {};
  for (const codec of ["msgpack", "json"]) {
    const w = ts.streamWriter(codec);
    cases[`full-${codec}`] = [
      w.header({ request_id: "js-1", model: "m", frames: 2, image_size: [640, 480] }),
      w.item({
        frame_index: 0,
        boxes: ts.ndarray("float32", [1, 4], f32([1, 2, 3, 4])),
        scores: ts.ndarray("float32", [1], f32([0.5])),
        labels: ["person"],
        latency_ms: 1.5,
      }),
      w.item({
        frame_index: 1,
        boxes: ts.ndarray("float32", [0, 4], f32([])),
        scores: ts.ndarray("float32", [0], f32([])),
        labels: [],
        latency_ms: 2,
      }),
      w.footer({ frames: 2, detections: 1, elapsed_ms: 3.25 }),
      w.end(),
    ];
    const t = ts.streamWriter(codec);
    cases[`dtypes-${codec}`] = [
      t.item({
        name: "all",
        bool: ts.ndarray("bool", [3], new Uint8Array([1, 0, 1])),
        int8: ts.ndarray("int8", [2], new Int8Array([-128, 127])),
        uint8: ts.ndarray("uint8", [2], new Uint8Array([0, 255])),
        int16: ts.ndarray("int16", [2], new Int16Array([-32768, 32767])),
        uint16: ts.ndarray("uint16", [2], new Uint16Array([0, 65535])),
        int32: ts.ndarray("int32", [2], new Int32Array([-(2 ** 31), 2 ** 31 - 1])),
        uint32: ts.ndarray("uint32", [2], new Uint32Array([0, 2 ** 32 - 1])),
        int64: ts.ndarray("int64", [2], new BigInt64Array([-(2n ** 63n), 2n ** 63n - 1n])),
        uint64: ts.ndarray("uint64", [2], new BigUint64Array([0n, 2n ** 64n - 1n])),
        float16: ts.ndarray("float16", [2], new Uint16Array([0x3c00, 0xc000])), // 1.0, -2.0
        float32: ts.ndarray("float32", [2, 2], f32([0.5, -1, Infinity, NaN])),
        float64: ts.ndarray("float64", [2], new Float64Array([Math.PI, -0])),
        complex64: ts.ndarray("complex64", [2], f32([1, 2, 3, -4])),
        complex128: ts.ndarray("complex128", [1], new Float64Array([0.25, -0.5])),
        bfloat16: ts.ndarray("bfloat16", [2], new Uint16Array([0x3f80, 0xc040])), // 1.0, -3.0
        float8_e4m3fn: ts.ndarray("float8_e4m3fn", [2], new Uint8Array([0x38, 0x7e])), // 1.0, 448
        uint4: ts.ndarray("uint4", [2], new Uint8Array([0, 15])),
        int4: ts.ndarray("int4", [2], new Uint8Array([0x0f, 0x07])), // -1, 7
        text: ts.ndarray("<U3", [2], ["ab", "\u{1F600}"]),
        raw: ts.ndarray("|S3", [2], ["ab", "xyz"]),
        scalar: ts.ndarray("float64", [], new Float64Array([7])),
      }),
      t.end(),
    ];
    const s = ts.streamWriter(codec);
    cases[`scalars-${codec}`] = [
      s.item({ n: 2n ** 60n, neg: -(2n ** 62n), small: -5, f: 1.5, big_float: 1e300, text: "héllo \u2028 \u{1F600}", flag: true, none: null, list: [1, "a", [2]], nested: { a: { b: 1 } } }),
      s.end(),
    ];
    const e = ts.streamWriter(codec);
    cases[`error-${codec}`] = [e.item({ n: 1 }), e.error(new TypeError("bad input"))];
  }
  const b = ts.streamWriter("msgpack");
  cases["bytes-msgpack"] = [b.item({ data: new Uint8Array([0, 255, 1]), when: new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 600)) }), b.end()];
  const j = ts.streamWriter("json");
  let jsonBytesError = null;
  try {
    j.item({ data: new Uint8Array([0xff]) });
  } catch (err) {
    jsonBytesError = errorReport(err);
  }
  // A lone NaN in the JSON codec is written as null, as pydantic writes it.
  cases["nan-json"] = [j.item({ x: NaN }), j.end()];
  return { cases, jsonBytesError };
}

async function writeDir(dir) {
  const { cases, jsonBytesError } = writeCases();
  for (const [name, frames] of Object.entries(cases)) {
    const size = frames.reduce((n, f) => n + f.length, 0);
    const all = new Uint8Array(size);
    let at = 0;
    for (const f of frames) {
      all.set(f, at);
      at += f.length;
    }
    await writeFile(`${dir}/${name}.bin`, all);
  }
  return { written: Object.keys(cases), jsonBytesError };
}

/**
 * A Node service producing streams with the writer, as js/README.md shows: chunked HTTP
 * on a free loopback port (printed as {"port": N}); Python's transports.http reads it.
 */
async function serve() {
  const http = await import("node:http");
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, "http://127.0.0.1");
    const codec = url.searchParams.get("codec") ?? "msgpack";
    const frames = Number(url.searchParams.get("frames") ?? "3");
    const failAt = url.searchParams.get("fail_at");
    if (req.headers.authorization !== "Bearer node-token") {
      res.writeHead(401, { "content-type": "text/plain" }).end("a bearer token is required");
      return;
    }
    res.writeHead(200, { "content-type": ts.MEDIA_TYPE });
    const w = ts.streamWriter(codec);
    res.write(w.header({ request_id: "node-1", model: "node-model", frames, image_size: [640, 480] }));
    try {
      for (let i = 0; i < frames; i++) {
        if (String(i) === failAt) throw new RangeError(`node producer failed at ${i}`);
        const n = i % 3 + 1;
        const boxes = new Float32Array(4 * n).map((_, k) => i * 10 + k);
        res.write(w.item({
          frame_index: i,
          boxes: ts.ndarray("float32", [n, 4], boxes),
          scores: ts.ndarray("float32", [n], new Float32Array(n).fill(0.5)),
          labels: Array.from({ length: n }, () => "person"),
          latency_ms: 0.25,
        }));
        await new Promise((r) => setTimeout(r, 1));
      }
      res.write(w.footer({ frames, detections: frames * 2, elapsed_ms: 1.5 }));
      res.end(w.end());
    } catch (err) {
      res.end(w.error(err));
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  process.stdout.write(JSON.stringify({ port: server.address().port }) + "\n");
  // Serve until the test closes our stdin.
  process.stdin.resume();
  await new Promise((r) => process.stdin.on("end", r));
  server.close();
  server.closeAllConnections?.();
}

const [command, arg] = process.argv.slice(2);
let result;
if (command === "serve") {
  await serve();
  process.exit(0);
}
if (command === "read") result = await readCases(arg);
else if (command === "write") result = await writeDir(arg);
else if (command === "live") result = await live(arg);
else throw new Error(`unknown command ${command}`);
process.stdout.write(JSON.stringify(result));
