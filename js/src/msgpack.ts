/**
 * A small msgpack codec for truss-stream payloads (docs/wire-format.md 4).
 *
 * Written here rather than taken from a package so that the rules are the
 * spec's, not a library's: ext 1 is an NDArray (a view of the frame), ext -1
 * the msgpack timestamp (a Date), every other ext code is `UnknownExtError`;
 * integers beyond 2^53 decode as BigInt; `bin` values are Uint8Array views; the
 * same length limits as the Python reader; no dependency for browsers to bundle.
 */
import { MalformedFrameError, UnknownExtError, UnsupportedValueError } from "./errors.js";
import { NDARRAY_EXT_CODE, NDArray, arrayBytes, decodeExt, extHeader } from "./ndarray.js";

/** Limits on msgpack payloads, as `truss_stream.MsgpackLimits`. */
export interface MsgpackLimits {
  maxArrayLen: number;
  maxMapLen: number;
  maxStrLen: number;
  maxBinLen: number;
  maxExtLen: number;
  /** Deepest nesting of arrays and maps (Python's msgpack stops at 1024 too). */
  maxDepth: number;
}

export const DEFAULT_MSGPACK_LIMITS: MsgpackLimits = {
  maxArrayLen: 1_000_000,
  maxMapLen: 100_000,
  maxStrLen: 64 * 1024 * 1024,
  maxBinLen: 2 ** 31,
  maxExtLen: 2 ** 31,
  maxDepth: 1024,
};

const utf8 = new TextDecoder("utf-8", { fatal: true });
const utf8Encoder = new TextEncoder();
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

class Decoder {
  pos = 0;
  readonly view: DataView;
  constructor(
    readonly bytes: Uint8Array,
    readonly limits: MsgpackLimits,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  need(n: number): number {
    const at = this.pos;
    if (at + n > this.bytes.length) throw new MalformedFrameError("invalid msgpack payload: value runs past the end");
    this.pos = at + n;
    return at;
  }

  value(depth: number): unknown {
    const b = this.bytes[this.need(1)]!;
    if (b <= 0x7f) return b;
    if (b >= 0xe0) return b - 0x100;
    if (b <= 0x8f) return this.map(b & 0x0f, depth);
    if (b <= 0x9f) return this.array(b & 0x0f, depth);
    if (b <= 0xbf) return this.str(b & 0x1f);
    const v = this.view;
    switch (b) {
      case 0xc0:
        return null;
      case 0xc2:
        return false;
      case 0xc3:
        return true;
      case 0xc4:
        return this.bin(this.bytes[this.need(1)]!);
      case 0xc5:
        return this.bin(v.getUint16(this.need(2)));
      case 0xc6:
        return this.bin(v.getUint32(this.need(4)));
      case 0xc7:
        return this.ext(this.bytes[this.need(1)]!);
      case 0xc8:
        return this.ext(v.getUint16(this.need(2)));
      case 0xc9:
        return this.ext(v.getUint32(this.need(4)));
      case 0xca:
        return v.getFloat32(this.need(4));
      case 0xcb:
        return v.getFloat64(this.need(8));
      case 0xcc:
        return this.bytes[this.need(1)]!;
      case 0xcd:
        return v.getUint16(this.need(2));
      case 0xce:
        return v.getUint32(this.need(4));
      case 0xcf: {
        const n = v.getBigUint64(this.need(8));
        return n <= MAX_SAFE ? Number(n) : n;
      }
      case 0xd0:
        return v.getInt8(this.need(1));
      case 0xd1:
        return v.getInt16(this.need(2));
      case 0xd2:
        return v.getInt32(this.need(4));
      case 0xd3: {
        const n = v.getBigInt64(this.need(8));
        return n <= MAX_SAFE && n >= -MAX_SAFE ? Number(n) : n;
      }
      case 0xd4:
      case 0xd5:
      case 0xd6:
      case 0xd7:
      case 0xd8:
        return this.ext(1 << (b - 0xd4));
      case 0xd9:
        return this.str(this.bytes[this.need(1)]!);
      case 0xda:
        return this.str(v.getUint16(this.need(2)));
      case 0xdb:
        return this.str(v.getUint32(this.need(4)));
      case 0xdc:
        return this.array(v.getUint16(this.need(2)), depth);
      case 0xdd:
        return this.array(v.getUint32(this.need(4)), depth);
      case 0xde:
        return this.map(v.getUint16(this.need(2)), depth);
      case 0xdf:
        return this.map(v.getUint32(this.need(4)), depth);
      default:
        throw new MalformedFrameError(`invalid msgpack payload: type byte 0x${b.toString(16)}`);
    }
  }

  str(n: number): string {
    if (n > this.limits.maxStrLen) throw new MalformedFrameError(`invalid msgpack payload: ${n} exceeds max_str_len(${this.limits.maxStrLen})`);
    const at = this.need(n);
    const bytes = this.bytes;
    if (n < 32) {
      let s = "";
      for (let i = at; i < at + n; i++) {
        const c = bytes[i]!;
        if (c > 0x7f) return this.utf8(at, n);
        s += String.fromCharCode(c);
      }
      return s;
    }
    return this.utf8(at, n);
  }

  utf8(at: number, n: number): string {
    try {
      return utf8.decode(this.bytes.subarray(at, at + n));
    } catch {
      throw new MalformedFrameError("invalid msgpack payload: a string is not valid UTF-8");
    }
  }

  bin(n: number): Uint8Array {
    if (n > this.limits.maxBinLen) throw new MalformedFrameError(`invalid msgpack payload: ${n} exceeds max_bin_len(${this.limits.maxBinLen})`);
    const at = this.need(n);
    return this.bytes.subarray(at, at + n);
  }

  array(n: number, depth: number): unknown[] {
    if (n > this.limits.maxArrayLen) throw new MalformedFrameError(`invalid msgpack payload: ${n} exceeds max_array_len(${this.limits.maxArrayLen})`);
    if (depth >= this.limits.maxDepth) throw new MalformedFrameError("invalid msgpack payload: nested too deeply");
    if (n > this.bytes.length - this.pos) throw new MalformedFrameError("invalid msgpack payload: value runs past the end");
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = this.value(depth + 1);
    return out;
  }

  map(n: number, depth: number): Record<string, unknown> {
    if (n > this.limits.maxMapLen) throw new MalformedFrameError(`invalid msgpack payload: ${n} exceeds max_map_len(${this.limits.maxMapLen})`);
    if (depth >= this.limits.maxDepth) throw new MalformedFrameError("invalid msgpack payload: nested too deeply");
    if (2 * n > this.bytes.length - this.pos) throw new MalformedFrameError("invalid msgpack payload: value runs past the end");
    const out: Record<string, unknown> = {};
    for (let i = 0; i < n; i++) {
      const key = this.value(depth + 1);
      const t = typeof key;
      if (t !== "string" && t !== "number" && t !== "bigint" && t !== "boolean" && key !== null) {
        throw new MalformedFrameError(`invalid msgpack payload: a map key of type ${t}`);
      }
      const value = this.value(depth + 1);
      const name = String(key);
      if (name === "__proto__") Object.defineProperty(out, name, { value, enumerable: true, writable: true, configurable: true });
      else out[name] = value;
    }
    return out;
  }

  ext(n: number): unknown {
    if (n > this.limits.maxExtLen) throw new MalformedFrameError(`invalid msgpack payload: ${n} exceeds max_ext_len(${this.limits.maxExtLen})`);
    const code = this.view.getInt8(this.need(1));
    const at = this.need(n);
    const data = this.bytes.subarray(at, at + n);
    if (code === NDARRAY_EXT_CODE) return decodeExt(data);
    if (code === -1) return timestamp(data);
    throw new UnknownExtError(code === 127 ? "msgpack ext code 127 is reserved" : `unknown msgpack ext code ${code}`);
  }
}

/** The msgpack timestamp ext (-1): 4, 8 or 12 bytes; a Date (milliseconds kept). */
function timestamp(data: Uint8Array): Date {
  const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let seconds: number;
  let nanos = 0;
  if (data.length === 4) seconds = v.getUint32(0);
  else if (data.length === 8) {
    const hi = v.getUint32(0);
    nanos = hi >>> 2;
    seconds = (hi & 3) * 2 ** 32 + v.getUint32(4);
  } else if (data.length === 12) {
    nanos = v.getUint32(0);
    seconds = Number(v.getBigInt64(4));
  } else throw new MalformedFrameError(`invalid msgpack timestamp of ${data.length} bytes`);
  if (nanos > 999_999_999) throw new MalformedFrameError("invalid msgpack timestamp nanoseconds");
  return new Date(seconds * 1000 + Math.floor(nanos / 1e6));
}

/**
 * Decode one msgpack value that must fill `bytes` exactly.
 * @throws MalformedFrameError invalid msgpack, limits exceeded, extra bytes
 * @throws UnknownExtError an ext code other than 1 (NDArray) and -1 (timestamp)
 */
export function decodeMsgpack(bytes: Uint8Array, limits: MsgpackLimits = DEFAULT_MSGPACK_LIMITS): unknown {
  const decoder = new Decoder(bytes, limits);
  let value: unknown;
  try {
    value = decoder.value(0);
  } catch (err) {
    if (err instanceof RangeError) throw new MalformedFrameError(`invalid msgpack payload: ${err.message}`);
    throw err;
  }
  if (decoder.pos !== bytes.length) {
    throw new MalformedFrameError(`${bytes.length - decoder.pos} bytes of extra data after the msgpack value`);
  }
  return value;
}

// Encoding --------------------------------------------------------------------------------

/** Packs values into one growing buffer whose offset 0 is the frame's first byte. */
export class Encoder {
  private buf = new Uint8Array(256);
  private view = new DataView(this.buf.buffer);
  pos = 0;
  hasArrays = false;

  /** Start a new frame, leaving `reserve` bytes for its tag. */
  reset(reserve: number): void {
    this.pos = reserve;
    this.hasArrays = false;
  }

  bytes(): Uint8Array {
    return this.buf.slice(0, this.pos);
  }

  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  private u8(b: number): void {
    this.ensure(1);
    this.buf[this.pos++] = b;
  }

  private head(b: number, n: number, width: 1 | 2 | 4): void {
    this.ensure(1 + width);
    this.buf[this.pos++] = b;
    if (width === 1) this.buf[this.pos] = n;
    else if (width === 2) this.view.setUint16(this.pos, n);
    else this.view.setUint32(this.pos, n);
    this.pos += width;
  }

  raw(bytes: Uint8Array): void {
    this.ensure(bytes.length);
    this.buf.set(bytes, this.pos);
    this.pos += bytes.length;
  }

  value(value: unknown, depth = 0): void {
    if (depth > 1024) throw new UnsupportedValueError("value nested too deeply (or circular)");
    if (value === null || value === undefined) return this.u8(0xc0);
    switch (typeof value) {
      case "boolean":
        return this.u8(value ? 0xc3 : 0xc2);
      case "number":
        return this.number(value);
      case "bigint":
        return this.bigint(value);
      case "string":
        return this.string(value);
      case "object":
        break;
      default:
        throw new UnsupportedValueError(`cannot encode a ${typeof value} value with msgpack`);
    }
    if (value instanceof NDArray) return this.ndarray(value);
    if (value instanceof Uint8Array) return this.bin(value);
    if (value instanceof ArrayBuffer) return this.bin(new Uint8Array(value));
    if (ArrayBuffer.isView(value)) {
      throw new UnsupportedValueError(`a bare ${value.constructor.name}: wrap it in ndarray(dtype, shape, data)`);
    }
    if (value instanceof Date) return this.string(value.toISOString());
    if (Array.isArray(value)) {
      this.length(0x90, 0xdc, value.length, 15);
      for (const v of value) this.value(v, depth + 1);
      return;
    }
    const entries = value instanceof Map ? [...value.entries()] : Object.entries(value as object);
    const kept = entries.filter(([, v]) => v !== undefined);
    this.length(0x80, 0xde, kept.length, 15);
    for (const [k, v] of kept) {
      this.string(String(k));
      this.value(v, depth + 1);
    }
  }

  private length(fix: number, base16: number, n: number, fixMax: number): void {
    if (n <= fixMax) this.u8(fix | n);
    else if (n <= 0xffff) this.head(base16, n, 2);
    else this.head(base16 + 1, n, 4);
  }

  private number(n: number): void {
    if (Number.isSafeInteger(n) && !Object.is(n, -0)) {
      if (n >= 0) {
        if (n <= 0x7f) return this.u8(n);
        if (n <= 0xff) return this.head(0xcc, n, 1);
        if (n <= 0xffff) return this.head(0xcd, n, 2);
        if (n <= 0xffffffff) return this.head(0xce, n, 4);
        return this.bigint(BigInt(n));
      }
      if (n >= -32) return this.u8(n + 0x100);
      if (n >= -0x80000000) {
        this.ensure(5);
        this.buf[this.pos++] = 0xd2;
        this.view.setInt32(this.pos, n);
        this.pos += 4;
        return;
      }
      return this.bigint(BigInt(n));
    }
    this.ensure(9);
    this.buf[this.pos++] = 0xcb;
    this.view.setFloat64(this.pos, n);
    this.pos += 8;
  }

  private bigint(n: bigint): void {
    this.ensure(9);
    if (n >= 0n && n < 2n ** 64n) {
      this.buf[this.pos++] = 0xcf;
      this.view.setBigUint64(this.pos, n);
    } else if (n < 0n && n >= -(2n ** 63n)) {
      this.buf[this.pos++] = 0xd3;
      this.view.setBigInt64(this.pos, n);
    } else throw new UnsupportedValueError(`integer ${n} does not fit in 64 bits`);
    this.pos += 8;
  }

  private string(s: string): void {
    const bytes = utf8Encoder.encode(s);
    if (bytes.length <= 31) this.u8(0xa0 | bytes.length);
    else if (bytes.length <= 0xff) this.head(0xd9, bytes.length, 1);
    else if (bytes.length <= 0xffff) this.head(0xda, bytes.length, 2);
    else this.head(0xdb, bytes.length, 4);
    this.raw(bytes);
  }

  private bin(b: Uint8Array): void {
    if (b.length <= 0xff) this.head(0xc4, b.length, 1);
    else if (b.length <= 0xffff) this.head(0xc5, b.length, 2);
    else this.head(0xc6, b.length, 4);
    this.raw(b);
  }

  /** ext 32 (as the Python writer), raw bytes aligned to 8 from the frame's start. */
  private ndarray(array: NDArray): void {
    const { descr, bytes } = arrayBytes(array);
    const header = extHeader(array, descr, this.pos + 6);
    const length = header.length + bytes.length;
    if (length > 0xffffffff) throw new UnsupportedValueError("an array above 4 GiB cannot be sent in one frame");
    this.ensure(6 + length);
    this.buf[this.pos++] = 0xc9;
    this.view.setUint32(this.pos, length);
    this.pos += 4;
    this.buf[this.pos++] = NDARRAY_EXT_CODE;
    this.raw(header);
    this.raw(bytes);
    this.hasArrays = true;
  }
}
