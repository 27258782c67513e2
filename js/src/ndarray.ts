/**
 * NDArray: NumPy arrays as `{dtype, shape, data}` (docs/wire-format.md 3 and 4.1).
 *
 * `data` is a TypedArray *view* of the received bytes where their alignment allows
 * (a copy otherwise), in C order, little-endian:
 *
 * | dtype                                   | data                                    |
 * |-----------------------------------------|-----------------------------------------|
 * | bool                                    | Uint8Array (0 or 1)                     |
 * | int8 int16 int32 / uint8 uint16 uint32  | Int8Array ... / Uint8Array ...          |
 * | int64 / uint64                          | BigInt64Array / BigUint64Array          |
 * | float16                                 | Float16Array where the runtime has it, else Uint16Array (raw bits; `float16ToFloat32`) |
 * | float32 / float64                       | Float32Array / Float64Array             |
 * | complex64 / complex128                  | Float32Array / Float64Array, interleaved re, im (length 2 x size) |
 * | bfloat16                                | Uint16Array, raw bits (`bfloat16ToFloat32`) |
 * | float8_* (five formats)                 | Uint8Array, raw bits (`float8ToFloat32`) |
 * | int4 / uint4                            | Uint8Array, one element per byte in the low nibble (`int4ToInt8`) |
 * | `<Un` / `\|Sn`                          | string[] (trailing NULs stripped; S bytes as Latin-1) |
 */
import { decodeBase64, decodedLength, encodeBase64 } from "./base64.js";
import { MalformedFrameError, UnknownExtError, UnsupportedValueError } from "./errors.js";

export type NumericData =
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | BigInt64Array
  | BigUint64Array
  | Float32Array
  | Float64Array;
/** What `NDArray.data` holds: a TypedArray (Float16Array too, where it exists) or strings. */
export type NDArrayData = NumericData | string[] | ArrayBufferView;

/** The NDArray ext type code in msgpack payloads. */
export const NDARRAY_EXT_CODE = 1;
export const MAX_NDIM = 64;
const EXT_VERSION = 1;
const ALIGNMENT = 8;

type Ctor = {
  new (buffer: ArrayBufferLike, byteOffset: number, length: number): ArrayBufferView & ArrayLike<unknown>;
  new (length: number): ArrayBufferView & ArrayLike<unknown>;
  BYTES_PER_ELEMENT: number;
};

const Float16 = (globalThis as { Float16Array?: Ctor }).Float16Array;

interface Numeric {
  name: string;
  /** Descriptor written in msgpack ext values. */
  descr: string;
  itemsize: number;
  ctor: Ctor;
  /** Elements of `ctor` per array element (2 for complex). */
  lanes: number;
}

function numeric(name: string, descr: string, itemsize: number, ctor: Ctor, lanes = 1): Numeric {
  return { name, descr, itemsize, ctor, lanes };
}

const U8 = Uint8Array as unknown as Ctor;
const U16 = Uint16Array as unknown as Ctor;
/** Every numeric dtype, by its NumPy name. */
const NUMERIC: Record<string, Numeric> = {
  bool: numeric("bool", "|b1", 1, U8),
  int8: numeric("int8", "|i1", 1, Int8Array as unknown as Ctor),
  uint8: numeric("uint8", "|u1", 1, U8),
  int16: numeric("int16", "<i2", 2, Int16Array as unknown as Ctor),
  uint16: numeric("uint16", "<u2", 2, U16),
  int32: numeric("int32", "<i4", 4, Int32Array as unknown as Ctor),
  uint32: numeric("uint32", "<u4", 4, Uint32Array as unknown as Ctor),
  int64: numeric("int64", "<i8", 8, BigInt64Array as unknown as Ctor),
  uint64: numeric("uint64", "<u8", 8, BigUint64Array as unknown as Ctor),
  float16: numeric("float16", "<f2", 2, Float16 ?? U16),
  float32: numeric("float32", "<f4", 4, Float32Array as unknown as Ctor),
  float64: numeric("float64", "<f8", 8, Float64Array as unknown as Ctor),
  complex64: numeric("complex64", "<c8", 8, Float32Array as unknown as Ctor, 2),
  complex128: numeric("complex128", "<c16", 16, Float64Array as unknown as Ctor, 2),
  // ml_dtypes: raw bits, by name (docs/wire-format.md 4.1 has the full list).
  bfloat16: numeric("bfloat16", "bfloat16", 2, U16),
  float8_e4m3fn: numeric("float8_e4m3fn", "float8_e4m3fn", 1, U8),
  float8_e4m3fnuz: numeric("float8_e4m3fnuz", "float8_e4m3fnuz", 1, U8),
  float8_e4m3b11fnuz: numeric("float8_e4m3b11fnuz", "float8_e4m3b11fnuz", 1, U8),
  float8_e5m2: numeric("float8_e5m2", "float8_e5m2", 1, U8),
  float8_e5m2fnuz: numeric("float8_e5m2fnuz", "float8_e5m2fnuz", 1, U8),
  int4: numeric("int4", "int4", 1, U8),
  uint4: numeric("uint4", "uint4", 1, U8),
};
/** The ml_dtypes names the format carries, each with its itemsize. */
export const ML_DTYPES: Readonly<Record<string, number>> = {
  bfloat16: 2,
  float8_e4m3fn: 1,
  float8_e4m3fnuz: 1,
  float8_e4m3b11fnuz: 1,
  float8_e5m2: 1,
  float8_e5m2fnuz: 1,
  int4: 1,
  uint4: 1,
};
const BY_KIND_SIZE: Record<string, string> = {
  b1: "bool",
  i1: "int8",
  u1: "uint8",
  i2: "int16",
  u2: "uint16",
  i4: "int32",
  u4: "uint32",
  i8: "int64",
  u8: "uint64",
  f2: "float16",
  f4: "float32",
  f8: "float64",
  c8: "complex64",
  c16: "complex128",
};
const DESCR_RE = /^([<>|])([biufcUS])(0|[1-9][0-9]{0,8})$/;
const JSON_NAMES = new Set(Object.keys(BY_KIND_SIZE).map((k) => BY_KIND_SIZE[k]!));

/** A parsed dtype: its canonical name, its itemsize, and whether its bytes are big-endian. */
export interface DType {
  /** NumPy name ("float32"), ml_dtypes name ("bfloat16"), or "<Un" / "|Sn" for strings. */
  name: string;
  kind: "numeric" | "U" | "S";
  itemsize: number;
  bigEndian: boolean;
  numeric?: Numeric;
  /** Characters per element, for U and S. */
  chars?: number;
}

/**
 * Parse a wire dtype descriptor or name. `json` also accepts the NumPy names
 * ("float32", ...) the JSON codec uses.
 * @throws UnknownExtError a descriptor the format does not define
 */
export function parseDType(descr: string, json = false): DType {
  if (descr in ML_DTYPES || (json && JSON_NAMES.has(descr))) {
    const named = NUMERIC[descr]!;
    return { name: named.name, kind: "numeric", itemsize: named.itemsize, bigEndian: false, numeric: named };
  }
  const m = DESCR_RE.exec(descr);
  if (m === null) throw new UnknownExtError(`unsupported array dtype descriptor '${descr}'`);
  const order = m[1]!, kind = m[2]!, size = Number(m[3]);
  if (kind === "U" || kind === "S") {
    if (kind === "U" && order === "|") throw new UnknownExtError(`unsupported array dtype descriptor '${descr}'`);
    const itemsize = kind === "U" ? size * 4 : size;
    return {
      name: kind === "U" ? `<U${size}` : `|S${size}`,
      kind,
      itemsize,
      bigEndian: order === ">" && kind === "U",
      chars: size,
    };
  }
  const name = BY_KIND_SIZE[kind + size];
  if (name === undefined || (order === "|" && size > 1)) {
    throw new UnknownExtError(`unsupported array dtype descriptor '${descr}'`);
  }
  const info = NUMERIC[name]!;
  return { name, kind: "numeric", itemsize: info.itemsize, bigEndian: order === ">" && size > 1, numeric: info };
}

/** An n-dimensional array: NumPy's dtype name, its shape, and its elements in C order. */
export class NDArray<T extends NDArrayData = NDArrayData> {
  /**
   * @param dtype a NumPy or ml_dtypes name ("float32", "bfloat16"), or "<Un" / "|Sn"
   * @param shape the dimensions (empty for a 0-d array)
   * @param data the elements, C order (complex: interleaved re, im)
   * @throws UnsupportedValueError an unknown dtype, or data that does not fit the shape
   */
  constructor(
    readonly dtype: string,
    readonly shape: readonly number[],
    readonly data: T,
  ) {
    const info = dtypeOf(dtype);
    const size = shape.reduce((a, b) => a * b, 1);
    if (!shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new UnsupportedValueError(`shape must be non-negative integers, got [${shape.join(", ")}]`);
    }
    const lanes = info.numeric?.lanes ?? 1;
    const length = (data as ArrayLike<unknown>).length;
    if (length !== size * lanes) {
      throw new UnsupportedValueError(
        `an NDArray of shape [${shape.join(", ")}] and dtype ${dtype} needs ${size * lanes} data elements, got ${length}`,
      );
    }
  }

  /** Number of elements. */
  get size(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  toJSON(): { data_b64: string; shape: number[]; dtype: string } {
    return toJsonForm(this);
  }
}

/** Build an NDArray (the writer sends NDArray instances as arrays). */
export function ndarray<T extends NDArrayData>(dtype: string, shape: readonly number[], data: T): NDArray<T> {
  return new NDArray(dtype, shape, data);
}

function dtypeOf(name: string): DType {
  try {
    return parseDType(name, true);
  } catch {
    throw new UnsupportedValueError(`unknown dtype '${name}'`);
  }
}

// Decoding ------------------------------------------------------------------------------

function checkedCount(shape: number[], itemsize: number, have: number, what: string): number {
  let count = 1n;
  for (const d of shape) count *= BigInt(d);
  if (count * BigInt(itemsize) !== BigInt(have)) {
    throw new MalformedFrameError(
      `NDArray of shape (${shape.join(", ")}) and dtype ${what} needs ${count * BigInt(itemsize)} bytes, the data holds ${have}`,
    );
  }
  return Number(count);
}

/** Elements from raw little- or big-endian bytes: a view when aligned, a copy otherwise. */
function elements(dtype: DType, raw: Uint8Array, count: number): NDArrayData {
  if (dtype.kind === "U") return decodeUnicode(raw, count, dtype.chars!, dtype.bigEndian);
  if (dtype.kind === "S") return decodeBytes(raw, count, dtype.chars!);
  const info = dtype.numeric!;
  const lane = info.itemsize / info.lanes;
  let bytes = raw;
  if (dtype.bigEndian) {
    bytes = raw.slice();
    for (let i = 0; i < bytes.length; i += lane) bytes.subarray(i, i + lane).reverse();
  } else if (bytes.byteOffset % lane !== 0) {
    bytes = raw.slice();
  }
  return new info.ctor(bytes.buffer, bytes.byteOffset, count * info.lanes);
}

function decodeUnicode(raw: Uint8Array, count: number, chars: number, bigEndian: boolean): string[] {
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const out: string[] = new Array(count);
  const codes: number[] = [];
  for (let e = 0; e < count; e++) {
    codes.length = 0;
    let end = 0;
    for (let c = 0; c < chars; c++) {
      const cp = view.getUint32((e * chars + c) * 4, !bigEndian);
      if (cp > 0x10ffff) {
        throw new MalformedFrameError(`NDArray of dtype <U${chars} holds a code point above U+10FFFF`);
      }
      codes.push(cp);
      if (cp !== 0) end = c + 1;
    }
    codes.length = end; // trailing NULs are padding
    let s = "";
    for (let i = 0; i < codes.length; i += 4096) s += String.fromCodePoint(...codes.slice(i, i + 4096));
    out[e] = s;
  }
  return out;
}

function decodeBytes(raw: Uint8Array, count: number, chars: number): string[] {
  const out: string[] = new Array(count);
  for (let e = 0; e < count; e++) {
    let end = chars;
    while (end > 0 && raw[e * chars + end - 1] === 0) end--;
    let s = "";
    for (let c = 0; c < end; c++) s += String.fromCharCode(raw[e * chars + c]!);
    out[e] = s;
  }
  return out;
}

/**
 * Decode one NDArray ext payload (4.1). `data` is a view of the received frame.
 * @throws UnknownExtError an unknown ext version or dtype
 * @throws MalformedFrameError a header that does not fit the bytes present
 */
export function decodeExt(data: Uint8Array): NDArray {
  if (data.length < 4) throw new MalformedFrameError("NDArray ext payload shorter than its fixed header");
  const version = data[0]!, ndim = data[1]!, descrLen = data[2]!, pad = data[3]!;
  if (version !== EXT_VERSION) throw new UnknownExtError(`NDArray ext version ${version} is not supported`);
  if (ndim > MAX_NDIM) throw new MalformedFrameError(`NDArray ext declares ${ndim} dimensions (at most ${MAX_NDIM})`);
  const start = 4 + 8 * ndim + descrLen + pad;
  if (data.length < start) throw new MalformedFrameError("NDArray ext payload shorter than its declared header");
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const shape: number[] = [];
  const raw = data.subarray(start);
  for (let i = 0; i < ndim; i++) {
    const d = view.getBigUint64(4 + 8 * i, true);
    if (d > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new MalformedFrameError(`NDArray dimension ${d} does not fit the ${raw.length} bytes present`);
    }
    shape.push(Number(d));
  }
  let descr = "";
  for (let i = 0; i < descrLen; i++) {
    const c = data[4 + 8 * ndim + i]!;
    if (c > 0x7f) throw new MalformedFrameError("NDArray dtype descriptor is not ASCII");
    descr += String.fromCharCode(c);
  }
  const dtype = parseDType(descr);
  const count = checkedCount(shape, dtype.itemsize, raw.length, descr);
  if (dtype.itemsize === 0 && count) {
    throw new MalformedFrameError(`NDArray of zero-width dtype ${descr} must be empty`);
  }
  return new NDArray(dtype.name, shape, elements(dtype, raw, count));
}

/**
 * The JSON form `{data_b64, shape, dtype}` (3) as an NDArray.
 * @throws MalformedFrameError bad base64, shape or size; UnknownExtError an unknown dtype
 */
export function fromJsonForm(value: { data_b64: unknown; shape: unknown; dtype: unknown }): NDArray {
  const { data_b64: b64, shape, dtype: name } = value;
  if (typeof b64 !== "string" || typeof name !== "string") {
    throw new MalformedFrameError("NDArray JSON form: data_b64 and dtype must be strings");
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0) || shape.length > MAX_NDIM) {
    throw new MalformedFrameError("NDArray JSON form: shape must be a list of non-negative integers");
  }
  const dtype = parseDType(name, true);
  let expected = BigInt(dtype.itemsize);
  for (const d of shape as number[]) expected *= BigInt(d);
  if (BigInt(decodedLength(b64)) !== expected) {
    throw new MalformedFrameError(
      `NDArray JSON form: data_b64 holds about ${decodedLength(b64)} bytes, shape and dtype need ${expected}`,
    );
  }
  const raw = decodeBase64(b64, "NDArray data_b64");
  const count = checkedCount(shape as number[], dtype.itemsize, raw.length, name);
  if (dtype.itemsize === 0 && count) throw new MalformedFrameError("a zero-width dtype needs an empty shape");
  return new NDArray(dtype.name, shape as number[], elements(dtype, raw, count));
}

// Encoding ------------------------------------------------------------------------------

/** The little-endian bytes of an NDArray's elements, and the descriptor the ext value names. */
export function arrayBytes(array: NDArray): { descr: string; jsonName: string; bytes: Uint8Array } {
  const dtype = dtypeOf(array.dtype);
  const data = array.data;
  if (dtype.kind === "numeric") {
    if (!ArrayBuffer.isView(data)) throw new UnsupportedValueError(`${array.dtype} data must be a TypedArray`);
    const info = dtype.numeric!;
    const lane = info.itemsize / info.lanes;
    const per = (data as unknown as { BYTES_PER_ELEMENT?: number }).BYTES_PER_ELEMENT ?? 1;
    if (per !== lane) {
      throw new UnsupportedValueError(
        `${array.dtype} data must have ${lane}-byte elements, got ${data.constructor.name}`,
      );
    }
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    return { descr: info.descr, jsonName: info.name, bytes };
  }
  const strings = data as string[];
  const chars = dtype.chars!;
  const out = new Uint8Array(strings.length * dtype.itemsize);
  const view = new DataView(out.buffer);
  strings.forEach((s, e) => {
    if (typeof s !== "string") throw new UnsupportedValueError(`${array.dtype} data must be strings`);
    let c = 0;
    for (const ch of s) {
      const cp = ch.codePointAt(0)!;
      if (c >= chars) throw new UnsupportedValueError(`'${s}' is longer than ${array.dtype} allows`);
      if (dtype.kind === "U") view.setUint32((e * chars + c) * 4, cp, true);
      else {
        if (cp > 0xff) throw new UnsupportedValueError(`${array.dtype} holds bytes: '${s}' has a character above U+00FF`);
        out[e * chars + c] = cp;
      }
      c++;
    }
  });
  return { descr: dtype.name, jsonName: dtype.name, bytes: out };
}

/** The NDArray ext payload's header (before the raw bytes), aligned for `offset` in the frame. */
export function extHeader(array: NDArray, descr: string, offset: number): Uint8Array {
  const ndim = array.shape.length;
  if (ndim > MAX_NDIM) throw new UnsupportedValueError(`arrays may have at most ${MAX_NDIM} dimensions`);
  const unpadded = 4 + 8 * ndim + descr.length;
  const pad = (ALIGNMENT - ((offset + unpadded) % ALIGNMENT)) % ALIGNMENT;
  const out = new Uint8Array(unpadded + pad);
  const view = new DataView(out.buffer);
  out[0] = EXT_VERSION;
  out[1] = ndim;
  out[2] = descr.length;
  out[3] = pad;
  array.shape.forEach((d, i) => view.setBigUint64(4 + 8 * i, BigInt(d), true));
  for (let i = 0; i < descr.length; i++) out[4 + 8 * ndim + i] = descr.charCodeAt(i);
  return out;
}

/** The JSON codec's form of an array, as truss_chains writes it. */
export function toJsonForm(array: NDArray): { data_b64: string; shape: number[]; dtype: string } {
  const { jsonName, bytes } = arrayBytes(array);
  return { data_b64: encodeBase64(bytes), shape: [...array.shape], dtype: jsonName };
}

// Decode helpers for raw-bit dtypes -------------------------------------------------------

/** bfloat16 raw bits (Uint16Array) to Float32Array: the top half of a float32, exactly. */
export function bfloat16ToFloat32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  const outBits = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) outBits[i] = bits[i]! << 16;
  return out;
}

/** IEEE half-precision raw bits to Float32Array (for runtimes without Float16Array). */
export function float16ToFloat32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) {
    const h = bits[i]!;
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const mant = h & 0x3ff;
    if (exp === 0) out[i] = sign * mant * 2 ** -24;
    else if (exp === 31) out[i] = mant ? NaN : sign * Infinity;
    else out[i] = sign * (1 + mant / 1024) * 2 ** (exp - 15);
  }
  return out;
}

export type Float8Format =
  | "float8_e4m3fn"
  | "float8_e4m3fnuz"
  | "float8_e4m3b11fnuz"
  | "float8_e5m2"
  | "float8_e5m2fnuz";

const FP8: Record<Float8Format, { exp: number; bias: number; style: "ieee" | "fn" | "fnuz" }> = {
  float8_e5m2: { exp: 5, bias: 15, style: "ieee" }, // inf and NaN as in IEEE 754
  float8_e4m3fn: { exp: 4, bias: 7, style: "fn" }, // no inf; S.1111.111 is NaN
  float8_e4m3fnuz: { exp: 4, bias: 8, style: "fnuz" }, // no inf, no -0; 0x80 is NaN
  float8_e4m3b11fnuz: { exp: 4, bias: 11, style: "fnuz" },
  float8_e5m2fnuz: { exp: 5, bias: 16, style: "fnuz" },
};

/** float8 raw bits (Uint8Array) of one of ml_dtypes' five formats to Float32Array. */
export function float8ToFloat32(bits: Uint8Array, format: Float8Format): Float32Array {
  const spec = FP8[format];
  if (spec === undefined) throw new UnsupportedValueError(`unknown float8 format '${format}'`);
  const table = new Float32Array(256);
  const mantBits = 7 - spec.exp;
  const expMax = (1 << spec.exp) - 1;
  for (let b = 0; b < 256; b++) {
    const sign = b & 0x80 ? -1 : 1;
    const exp = (b >> mantBits) & expMax;
    const mant = b & ((1 << mantBits) - 1);
    let v: number;
    if (spec.style === "fnuz" && b === 0x80) v = NaN;
    else if (spec.style === "ieee" && exp === expMax) v = mant ? NaN : sign * Infinity;
    else if (spec.style === "fn" && exp === expMax && mant === (1 << mantBits) - 1) v = NaN;
    else if (exp === 0) v = sign * mant * 2 ** (1 - spec.bias - mantBits);
    else v = sign * (1 + mant / (1 << mantBits)) * 2 ** (exp - spec.bias);
    table[b] = v;
  }
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = table[bits[i]!]!;
  return out;
}

/** int4 elements (one per byte, low nibble, two's complement) to Int8Array. */
export function int4ToInt8(bits: Uint8Array): Int8Array {
  const out = new Int8Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = ((bits[i]! & 0x0f) << 28) >> 28;
  return out;
}

/** uint4 elements (one per byte, low nibble) to Uint8Array. */
export function uint4ToUint8(bits: Uint8Array): Uint8Array {
  return bits.map((b) => b & 0x0f);
}

/**
 * Any numeric NDArray's elements as a Float64Array (complex: interleaved), decoding
 * raw-bit dtypes; 64-bit integers are converted with Number() (exact below 2^53).
 */
export function toFloat64(array: NDArray): Float64Array {
  const d = array.data;
  switch (array.dtype) {
    case "bfloat16":
      return Float64Array.from(bfloat16ToFloat32(d as Uint16Array));
    case "float16":
      return Float16 !== undefined && !(d instanceof Uint16Array)
        ? Float64Array.from(d as unknown as ArrayLike<number>)
        : Float64Array.from(float16ToFloat32(d as Uint16Array));
    case "int4":
      return Float64Array.from(int4ToInt8(d as Uint8Array));
    case "uint4":
      return Float64Array.from(uint4ToUint8(d as Uint8Array));
    case "int64":
    case "uint64":
      return Float64Array.from(d as BigInt64Array, (x) => Number(x));
    default:
      if (array.dtype.startsWith("float8_")) {
        return Float64Array.from(float8ToFloat32(d as Uint8Array, array.dtype as Float8Format));
      }
      if (!ArrayBuffer.isView(d)) throw new UnsupportedValueError(`${array.dtype} is not numeric`);
      return Float64Array.from(d as unknown as ArrayLike<number>);
  }
}
