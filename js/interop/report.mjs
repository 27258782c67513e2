// A JSON-safe report of what the reader gave, shared by the Node CLI and the browser page
// (tests/test_js_interop.py and tests/test_js_browser.py compare it with Python's values).
import * as ts from "../dist/index.js";

function base64(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

/** NDArrays, BigInt, bytes, Dates and non-finite floats are tagged; the rest is as read. */
export function report(value) {
  if (typeof value === "bigint") return { __bigint__: value.toString() };
  if (typeof value === "number" && !Number.isFinite(value)) return { __float__: String(value) };
  if (value instanceof ts.NDArray) {
    const out = {
      __ndarray__: true,
      dtype: value.dtype,
      shape: [...value.shape],
      ctor: value.data.constructor.name,
      data: Array.from(value.data, (x) => report(x)),
    };
    if (["bfloat16", "float16", "int4", "uint4"].includes(value.dtype) || value.dtype.startsWith("float8_")) {
      out.decoded = Array.from(ts.toFloat64(value), (x) => report(x));
    }
    return out;
  }
  if (value instanceof Uint8Array) return { __bytes__: base64(value) };
  if (value instanceof Date) return { __date__: value.toISOString() };
  if (Array.isArray(value)) return value.map(report);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, report(v)]));
  }
  return value;
}

export function errorReport(err) {
  return {
    name: err?.name ?? String(err),
    message: err?.message ?? String(err),
    isStreamError: err instanceof ts.StreamError,
    ...(err instanceof ts.RemoteStreamError ? { remoteType: err.remoteType, remoteMessage: err.remoteMessage, errorId: err.errorId } : {}),
    ...(err instanceof ts.StreamResumeError
      ? { expectedStreamId: err.expectedStreamId, streamId: err.streamId, expectedPosition: err.expectedPosition, position: err.position }
      : {}),
    isTruncated: err instanceof ts.StreamTruncatedError,
    ...(err instanceof ts.StreamResponseError ? { status: err.status, contentType: err.contentType, body: err.body } : {}),
  };
}

/** Read a whole stream as far as it goes: what it gave, and the error that stopped it. */
export async function readStream(reader, { header = true, footer = true } = {}) {
  const out = { items: [] };
  try {
    if (header) out.header = report(await reader.readHeader());
    for await (const item of reader.readItems()) out.items.push(report(item));
    if (footer && !reader.ended) out.footer = report(await reader.readFooter());
    out.ended = reader.ended;
  } catch (err) {
    out.error = errorReport(err);
  }
  return out;
}

/** Scenarios against the live Python test server (tests/js_interop_app.py), same in Node and Chromium. */
export async function live(base, progress = () => undefined) {
  const out = {};
  const get = async (name, open, options) => {
    progress(name);
    try {
      out[name] = await readStream(await open(), options);
    } catch (err) {
      out[name] = { error: errorReport(err) };
    }
  };
  for (const codec of ["json", "msgpack"]) {
    await get(`http-${codec}`, () => ts.fetchStream(`${base}/http/detections?frames=5&codec=${codec}`));
    await get(`sse-${codec}`, () => ts.fetchSSE(`${base}/sse/detections?frames=5&codec=${codec}`));
    await get(`sse-fail-${codec}`, () => ts.fetchSSE(`${base}/sse/detections?frames=5&fail_at=2&codec=${codec}`));
    await get(`http-fail-${codec}`, () => ts.fetchStream(`${base}/http/detections?frames=5&fail_at=2&codec=${codec}`));
    await get(`every-dtype-http-${codec}`, () => ts.fetchStream(`${base}/every-dtype?codec=${codec}`));
    await get(`every-dtype-sse-${codec}`, () => ts.fetchSSE(`${base}/every-dtype?codec=${codec}&sse=1`));
    // POST with a body and an auth header: what EventSource cannot do.
    await get(
      `sse-post-${codec}`,
      () =>
        ts.fetchSSE(`${base}/echo?codec=${codec}`, {
          method: "POST",
          headers: { authorization: "Bearer js-token", "content-type": "application/json" },
          body: JSON.stringify({ words: ["a", "b", "c"] }),
        }),
      { footer: false },
    );
    await get(`resume-${codec}`, () =>
      ts.fetchSSE(`${base}/resumable?codec=${codec}&cuts=3,7`, undefined, { resumeAttempts: 3, resumeDelayMs: 10 }),
    );
    await get(`resume-exhausted-${codec}`, () =>
      ts.fetchSSE(`${base}/resumable?codec=${codec}&cuts=3,5,7`, undefined, { resumeAttempts: 1, resumeDelayMs: 10 }),
    );
    await get(`resume-wrong-${codec}`, () =>
      ts.fetchSSE(`${base}/resumable?codec=${codec}&cuts=3&ignore_last_id=1`, undefined, {
        resumeAttempts: 2,
        resumeDelayMs: 10,
      }),
    );
    const resume = (name, query, attempts) =>
      get(`${name}-${codec}`, () =>
        ts.fetchSSE(`${base}/resumable?codec=${codec}&${query}`, undefined, { resumeAttempts: attempts, resumeDelayMs: 10 }),
      );
    await resume("resume-identity", "cuts=3,7&identity=s-1", 3);
    await resume("resume-other-identity", "cuts=3&identity=s-1&other_identity=1", 3);
    await resume("resume-wrong-position", "cuts=3&identity=s-1&position_header=0", 3);
    await resume("going-away-resumed", "going_away_at=4&identity=s-1", 2);
    await resume("going-away-no-attempts", "going_away_at=4&identity=s-2", 0);
    await get(`truncated-http-${codec}`, () => ts.fetchStream(`${base}/cut-http?codec=${codec}`));
  }
  await get("status", () => ts.fetchStream(`${base}/http/detections?frames=abc`));
  await get("contentType", () => ts.fetchSSE(`${base}/http/detections?frames=1`));
  await get("unauthorized", () => ts.fetchSSE(`${base}/echo`, { method: "POST", body: "{}" }));
  out.float16Array = typeof globalThis.Float16Array === "function";
  out.jsonBigIntExact = ts.JSON_BIGINT_EXACT;
  return out;
}
