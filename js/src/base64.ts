/** RFC 4648 base64 with padding, strict on decode (as Python's `b64decode(validate=True)`). */
import { MalformedFrameError } from "./errors.js";

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const ENC = new Uint8Array(64);
const DEC = new Int16Array(256).fill(-1);
for (let i = 0; i < 64; i++) {
  ENC[i] = ALPHABET.charCodeAt(i);
  DEC[ALPHABET.charCodeAt(i)] = i;
}

/** Standard padded base64 of `bytes`, as a string. */
export function encodeBase64(bytes: Uint8Array): string {
  const out = new Uint8Array(Math.ceil(bytes.length / 3) * 4);
  let o = 0;
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8) | bytes[i + 2]!;
    out[o++] = ENC[n >> 18]!;
    out[o++] = ENC[(n >> 12) & 63]!;
    out[o++] = ENC[(n >> 6) & 63]!;
    out[o++] = ENC[n & 63]!;
  }
  const rest = bytes.length - i;
  if (rest) {
    const n = (bytes[i]! << 16) | (rest === 2 ? bytes[i + 1]! << 8 : 0);
    out[o++] = ENC[n >> 18]!;
    out[o++] = ENC[(n >> 12) & 63]!;
    out[o++] = rest === 2 ? ENC[(n >> 6) & 63]! : 61;
    out[o++] = 61;
  }
  return latin1(out);
}

function latin1(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000) as unknown as number[]);
  }
  return s;
}

/** The bytes a base64 text length stands for (before decoding), or -1 if not a multiple of 4. */
export function decodedLength(text: string | Uint8Array): number {
  const n = text.length;
  if (n % 4) return -1;
  if (n === 0) return 0;
  const at = (k: number): number => (typeof text === "string" ? text.charCodeAt(k) : text[k]!);
  const pad = (at(n - 1) === 61 ? 1 : 0) + (at(n - 2) === 61 ? 1 : 0);
  return (n / 4) * 3 - pad;
}

/**
 * Decode standard padded base64 (a string or its ASCII bytes) into a fresh buffer.
 * @throws MalformedFrameError a character outside the alphabet, bad padding, bad length
 */
export function decodeBase64(text: string | Uint8Array, what = "base64"): Uint8Array {
  const size = decodedLength(text);
  if (size < 0) throw new MalformedFrameError(`${what}: length is not a multiple of 4`);
  const n = text.length;
  const at = (k: number): number => (typeof text === "string" ? text.charCodeAt(k) : text[k]!);
  const out = new Uint8Array(size);
  let o = 0;
  for (let i = 0; i < n; i += 4) {
    const c0 = at(i), c1 = at(i + 1), c2 = at(i + 2), c3 = at(i + 3);
    const a = DEC[c0 & 0xff]!, b = DEC[c1 & 0xff]!;
    let c = DEC[c2 & 0xff]!, d = DEC[c3 & 0xff]!;
    const last = i + 4 === n;
    if (c0 > 0xff || c1 > 0xff || c2 > 0xff || c3 > 0xff || a < 0 || b < 0) {
      throw new MalformedFrameError(`${what}: invalid character`);
    }
    if (c < 0 || d < 0) {
      if (!last || d >= 0 || c3 !== 61 || (c < 0 && c2 !== 61)) {
        throw new MalformedFrameError(`${what}: invalid character or padding`);
      }
      if (c < 0) c = 0;
      d = 0;
    }
    const v = (a << 18) | (b << 12) | (c << 6) | d;
    out[o++] = v >> 16;
    if (o < size) out[o++] = (v >> 8) & 0xff;
    if (o < size) out[o++] = v & 0xff;
  }
  return out;
}
