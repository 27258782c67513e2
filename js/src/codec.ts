/**
 * Payload codecs: a frame's payload <-> a JavaScript value (docs/wire-format.md 3, 4, 5).
 */
import { MalformedFrameError, RemoteStreamError, ServerGoingAwayError, UnsupportedValueError } from "./errors.js";
import { Codec, FrameKind, TAG_SIZE, packTag } from "./frames.js";
import { DEFAULT_MSGPACK_LIMITS, Encoder, type MsgpackLimits, decodeMsgpack } from "./msgpack.js";
import { NDArray, fromJsonForm, toJsonForm } from "./ndarray.js";

const utf8 = new TextDecoder("utf-8", { fatal: true });
const utf8Encoder = new TextEncoder();

type Reviver = (this: unknown, key: string, value: unknown, context?: { source?: string }) => unknown;

/** JSON.parse hands revivers the number's source text (Chrome 114+, Node 21+). */
const HAS_SOURCE = (() => {
  let ok = false;
  try {
    JSON.parse("1", ((_k: string, v: unknown, ctx?: { source?: string }) => {
      ok = typeof ctx?.source === "string";
      return v;
    }) as Reviver as (key: string, value: unknown) => unknown);
  } catch {
    ok = false;
  }
  return ok;
})();
const BIG_INT_TEXT = /\d{16}/;
const INTEGER_TEXT = /^-?\d+$/;
const bigIntReviver = ((_k: string, v: unknown, ctx?: { source?: string }) =>
  typeof v === "number" && !Number.isSafeInteger(v) && ctx?.source !== undefined && INTEGER_TEXT.test(ctx.source)
    ? BigInt(ctx.source)
    : v) as Reviver as (key: string, value: unknown) => unknown;

/** Whether this runtime's JSON reader keeps integers above 2^53 exact (as BigInt). */
export const JSON_BIGINT_EXACT = HAS_SOURCE;

function convertArrays(value: unknown, depth = 0): unknown {
  if (depth > 1024 || value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) value[i] = convertArrays(value[i], depth + 1);
    return value;
  }
  const obj = value as Record<string, unknown>;
  if ("data_b64" in obj && "shape" in obj && "dtype" in obj) {
    return fromJsonForm(obj as { data_b64: unknown; shape: unknown; dtype: unknown });
  }
  for (const key of Object.keys(obj)) obj[key] = convertArrays(obj[key], depth + 1);
  return value;
}

/**
 * Parse a JSON payload. Objects with `data_b64`, `shape` and `dtype` become NDArrays
 * (unless `arrays` is false); integers above 2^53 become BigInt where the runtime allows.
 * @throws MalformedFrameError invalid UTF-8 or JSON, or a bad array
 */
export function decodeJson(payload: Uint8Array, arrays = true): unknown {
  let text: string;
  try {
    text = utf8.decode(payload);
  } catch {
    throw new MalformedFrameError("invalid JSON payload: not UTF-8");
  }
  let value: unknown;
  try {
    value = HAS_SOURCE && BIG_INT_TEXT.test(text) ? JSON.parse(text, bigIntReviver) : JSON.parse(text);
  } catch (err) {
    throw new MalformedFrameError(`invalid JSON payload: ${(err as Error).message}`);
  }
  return arrays && text.includes('"data_b64"') ? convertArrays(value) : value;
}

/** Decode one payload in its frame's codec. */
export function decodePayload(codec: Codec, payload: Uint8Array, limits: MsgpackLimits, arrays = true): unknown {
  return codec === Codec.JSON ? decodeJson(payload, arrays) : decodeMsgpack(payload, limits);
}

/** An ERROR frame's payload (docs/wire-format.md 6). */
export interface ErrorBody {
  type: string;
  message: string;
  errorId: string | null;
  reason: string | null;
}

/**
 * The ERROR frame's `{type, message}` and its optional `error_id` and `reason`.
 * @throws MalformedFrameError any other payload
 */
export function decodeError(codec: Codec, payload: Uint8Array, limits = DEFAULT_MSGPACK_LIMITS): ErrorBody {
  let body: unknown;
  try {
    body = decodePayload(codec, payload, limits, false);
  } catch (err) {
    throw new MalformedFrameError(`invalid ERROR frame payload: ${(err as Error).message}`);
  }
  const b = body as { type?: unknown; message?: unknown; error_id?: unknown; reason?: unknown } | null;
  if (b === null || typeof b !== "object" || Array.isArray(b) || typeof b.type !== "string" || typeof b.message !== "string") {
    throw new MalformedFrameError("ERROR frame payload must be {type: str, message: str}");
  }
  return {
    type: b.type,
    message: b.message,
    errorId: typeof b.error_id === "string" ? b.error_id : null,
    reason: typeof b.reason === "string" ? b.reason : null,
  };
}

/** The error an ERROR frame stands for: ServerGoingAwayError or RemoteStreamError. */
export function remoteError(body: ErrorBody): RemoteStreamError {
  const Cls = body.reason === ServerGoingAwayError.REASON ? ServerGoingAwayError : RemoteStreamError;
  return new Cls(body.type, body.message, body.errorId);
}

// Encoding --------------------------------------------------------------------------------

/**
 * JSON text of `value` as pydantic reads it: NDArray as `{data_b64, shape, dtype}`,
 * BigInt as an exact integer, Date as ISO 8601, Uint8Array as UTF-8 text (as pydantic
 * writes bytes), NaN and +-Infinity as `null` (as pydantic and JSON.stringify write them).
 */
export function toJsonText(value: unknown, depth = 0): string {
  if (depth > 1024) throw new UnsupportedValueError("value nested too deeply (or circular)");
  if (value === null || value === undefined) return "null";
  switch (typeof value) {
    case "boolean":
      return value ? "true" : "false";
    case "number":
      return Number.isFinite(value) ? JSON.stringify(value) : "null";
    case "bigint":
      return value.toString();
    case "string":
      return JSON.stringify(value);
    case "object":
      break;
    default:
      throw new UnsupportedValueError(`cannot encode a ${typeof value} value as JSON`);
  }
  if (value instanceof NDArray) return JSON.stringify(toJsonForm(value));
  if (value instanceof Uint8Array) {
    try {
      return JSON.stringify(utf8.decode(value));
    } catch {
      throw new UnsupportedValueError(
        "the JSON codec writes bytes as UTF-8 text (as pydantic does): these bytes are not UTF-8; use the msgpack codec",
      );
    }
  }
  if (ArrayBuffer.isView(value)) {
    throw new UnsupportedValueError(`a bare ${value.constructor.name}: wrap it in ndarray(dtype, shape, data)`);
  }
  if (value instanceof Date) return JSON.stringify(value.toISOString());
  if (Array.isArray(value)) return `[${value.map((v) => toJsonText(v, depth + 1)).join(",")}]`;
  const entries = value instanceof Map ? [...value.entries()] : Object.entries(value as object);
  const parts: string[] = [];
  for (const [k, v] of entries) {
    if (v !== undefined) parts.push(`${JSON.stringify(String(k))}:${toJsonText(v, depth + 1)}`);
  }
  return `{${parts.join(",")}}`;
}

/** One whole frame (tag + payload) carrying `value` in `codec`. */
export function encodeFrame(kind: FrameKind, codec: Codec, value: unknown, encoder?: Encoder): Uint8Array {
  if (codec === Codec.JSON) {
    const payload = utf8Encoder.encode(toJsonText(value));
    const frame = new Uint8Array(TAG_SIZE + payload.length);
    frame.set(packTag(kind, codec, payload.length));
    frame.set(payload, TAG_SIZE);
    return frame;
  }
  const enc = encoder ?? new Encoder();
  enc.reset(TAG_SIZE);
  enc.value(value);
  const frame = enc.bytes();
  frame.set(packTag(kind, codec, frame.length - TAG_SIZE, enc.hasArrays));
  return frame;
}
