/**
 * Frame layout (docs/wire-format.md section 2) and the sans-IO frame decoder.
 *
 * A frame is a 5-byte tag (1 byte kind/codec/hint, 4-byte big-endian payload
 * length) and its payload. `FrameDecoder` splits any chunking of a byte stream
 * into frames: `feed()` chunks, `nextFrame()` gives a frame or `null` ("need data").
 */
import { FrameTooLargeError, MalformedFrameError, StreamTruncatedError, UnknownCodecError } from "./errors.js";

/** The wire format version this package implements. */
export const WIRE_FORMAT_VERSION = 2;
export const TAG_SIZE = 5;
/** Default limit on one frame's payload (256 MiB), as in the Python reader. */
export const DEFAULT_MAX_FRAME_BYTES = 256 * 1024 * 1024;
/** Frames up to this size get their buffer when their tag arrives; bigger ones at half. */
const EAGER_ASSEMBLY_BYTES = 16 * 1024 * 1024;

export const FrameKind = { HEADER: 2, ITEM: 3, FOOTER: 4, END: 5, ERROR: 6 } as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];
export const Codec = { JSON: 0x00, MSGPACK: 0x10 } as const;
export type Codec = (typeof Codec)[keyof typeof Codec];
export type CodecName = "json" | "msgpack";
export const ARRAY_HINT = 0x20;
const RESERVED_MASK = 0xc0;

export const KIND_NAMES: Record<number, string> = {
  2: "HEADER",
  3: "ITEM",
  4: "FOOTER",
  5: "END",
  6: "ERROR",
};

/** One frame; `payload` is a view of the received bytes where one chunk held it. */
export interface Frame {
  kind: FrameKind;
  codec: Codec;
  arrayHint: boolean;
  payload: Uint8Array;
}

/** Split a tag byte into (kind, codec, hint), raising the spec's error for an invalid one. */
export function parseTagByte(byte: number): [FrameKind, Codec, boolean] {
  const kind = byte & 0x0f;
  if (!(kind in KIND_NAMES)) {
    throw new MalformedFrameError(
      `unknown frame kind ${kind} in tag byte 0x${byte.toString(16).padStart(2, "0")}`,
    );
  }
  if (byte & RESERVED_MASK) {
    throw new UnknownCodecError(
      `reserved codec bits set in tag byte 0x${byte.toString(16).padStart(2, "0")}`,
    );
  }
  const codec = (byte & 0x10) as Codec;
  const hint = (byte & ARRAY_HINT) !== 0;
  if (hint && codec === Codec.JSON) {
    throw new UnknownCodecError(
      `array hint on a JSON frame (tag byte 0x${byte.toString(16).padStart(2, "0")})`,
    );
  }
  return [kind as FrameKind, codec, hint];
}

/** The 5-byte tag of a frame of `length` payload bytes. */
export function packTag(kind: FrameKind, codec: Codec, length: number, arrayHint = false): Uint8Array {
  if (!Number.isInteger(length) || length < 0 || length > 0xffffffff) {
    throw new MalformedFrameError(`frame payload of ${length} bytes exceeds the 4 GiB wire limit`);
  }
  const tag = new Uint8Array(TAG_SIZE);
  tag[0] = kind | codec | (arrayHint ? ARRAY_HINT : 0);
  new DataView(tag.buffer).setUint32(1, length, false);
  return tag;
}

function readLength(chunk: Uint8Array, at: number): number {
  return (
    ((chunk[at]! << 24) >>> 0) + ((chunk[at + 1]! << 16) | (chunk[at + 2]! << 8) | chunk[at + 3]!)
  );
}

/**
 * Splits a byte stream, chunked any way, into frames. Chunks are kept by
 * reference (no copy): a source must not refill a chunk it has handed over
 * (fetch bodies and Node streams never do).
 */
export class FrameDecoder {
  private chunks: Uint8Array[] = [];
  private buffered = 0;
  private tag: [FrameKind, Codec, boolean, number] | null = null;
  private assembly: Uint8Array | null = null;
  private filled = 0;
  private eof = false;
  /** Bytes consumed into whole frames so far. */
  offset = 0;
  /** Frames decoded so far. */
  frames = 0;

  constructor(readonly maxFrameBytes: number = DEFAULT_MAX_FRAME_BYTES) {
    if (!(maxFrameBytes >= 0)) throw new RangeError("maxFrameBytes must be >= 0");
  }

  get ended(): boolean {
    return this.eof;
  }

  /** Add the next chunk. */
  feed(data: Uint8Array): void {
    if (this.eof) throw new Error("feed() after feedEof()");
    let view = data;
    if (view.length === 0) return;
    if (this.assembly !== null) {
      const take = Math.min(this.assembly.length - TAG_SIZE - this.filled, view.length);
      this.assembly.set(view.subarray(0, take), TAG_SIZE + this.filled);
      this.filled += take;
      view = view.subarray(take);
      if (view.length === 0) return;
    }
    this.chunks.push(view);
    this.buffered += view.length;
  }

  /** Mark the end of the source. */
  feedEof(): void {
    this.eof = true;
  }

  /** Remove `n` buffered bytes: a view when one chunk holds them, else a copy placed `lead` bytes in. */
  private take(n: number, lead = 0): Uint8Array {
    if (n === 0) return new Uint8Array(0);
    const first = this.chunks[0]!;
    if (first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.buffered -= n;
      return first.subarray(0, n);
    }
    const out = new Uint8Array(lead + n).subarray(lead);
    let filled = 0;
    while (filled < n) {
      const chunk = this.chunks[0]!;
      const take = Math.min(n - filled, chunk.length);
      out.set(chunk.subarray(0, take), filled);
      filled += take;
      if (take === chunk.length) this.chunks.shift();
      else this.chunks[0] = chunk.subarray(take);
    }
    this.buffered -= n;
    return out;
  }

  /**
   * The next whole frame, or null when more data is needed.
   * @throws FrameTooLargeError a tag declares more than maxFrameBytes (before any payload is buffered)
   * @throws MalformedFrameError an invalid tag, or END with a payload
   * @throws StreamTruncatedError the source ended inside a frame
   */
  nextFrame(): Frame | null {
    let tag = this.tag;
    if (tag === null) {
      if (this.buffered < TAG_SIZE) {
        if (this.eof && this.buffered) {
          throw new StreamTruncatedError(
            `stream ended inside a frame tag at byte ${this.offset} (${this.buffered} of ${TAG_SIZE} tag bytes)`,
          );
        }
        return null;
      }
      const raw = this.take(TAG_SIZE);
      const [kind, codec, hint] = parseTagByte(raw[0]!);
      const length = readLength(raw, 1);
      if (kind === FrameKind.END && length) {
        throw new MalformedFrameError(`END frame with a ${length}-byte payload (must be empty)`);
      }
      if (length > this.maxFrameBytes) throw new FrameTooLargeError(length, this.maxFrameBytes);
      tag = this.tag = [kind, codec, hint, length];
    }
    const [kind, codec, arrayHint, length] = tag;
    let payload: Uint8Array;
    if (this.assembly === null) {
      if (this.buffered >= length) {
        payload = this.take(length, TAG_SIZE); // copied: keep the frame's alignment
      } else if (this.eof) {
        throw this.truncated(length, this.buffered);
      } else if (length > EAGER_ASSEMBLY_BYTES && this.buffered * 2 < length) {
        return null; // what a tag merely claims costs no memory
      } else {
        // Room for the tag in front: the payload then sits where it sits in the frame,
        // so arrays the writer aligned from the frame's start stay aligned (views).
        this.assembly = new Uint8Array(TAG_SIZE + length);
        this.filled = 0;
        for (const chunk of this.chunks) {
          this.assembly.set(chunk, TAG_SIZE + this.filled);
          this.filled += chunk.length;
        }
        this.chunks = [];
        this.buffered = 0;
        return null;
      }
    } else {
      if (this.filled < length) {
        if (this.eof) throw this.truncated(length, this.filled);
        return null;
      }
      payload = this.assembly.subarray(TAG_SIZE);
      this.assembly = null;
    }
    this.tag = null;
    this.offset += TAG_SIZE + length;
    this.frames += 1;
    return { kind, codec, arrayHint, payload };
  }

  private truncated(length: number, have: number): StreamTruncatedError {
    return new StreamTruncatedError(
      `stream ended inside frame ${this.frames + 1} at byte ${this.offset}: ` +
        `${have} of ${length} payload bytes arrived`,
    );
  }
}
