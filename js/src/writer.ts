/**
 * The stream writer, sans-IO like Python's `StreamWriter`: every call returns one
 * whole frame (a Uint8Array) for the caller to send; the order header, items,
 * footer, then END (or ERROR) is enforced, and a call out of order changes nothing.
 */
import { encodeFrame } from "./codec.js";
import { StreamOrderError } from "./errors.js";
import { Codec, type CodecName, FrameKind, packTag } from "./frames.js";
import { Encoder } from "./msgpack.js";

const State = { START: 0, HEADER: 1, ITEMS: 2, FOOTER: 3, CLOSED: 4 } as const;

export class StreamWriter<H = unknown, I = unknown, F = unknown> {
  readonly codec: Codec;
  private state: number = State.START;
  private readonly encoder = new Encoder();

  /** @param codec "msgpack" (default: NDArrays as raw bytes) or "json" (truss_chains-compatible) */
  constructor(codec: CodecName = "msgpack") {
    if (codec !== "msgpack" && codec !== "json") throw new TypeError(`codec must be "msgpack" or "json", got ${codec}`);
    this.codec = codec === "json" ? Codec.JSON : Codec.MSGPACK;
  }

  /** True once END or ERROR was written. */
  get closed(): boolean {
    return this.state === State.CLOSED;
  }

  private frame(kind: FrameKind, value: unknown): Uint8Array {
    return encodeFrame(kind, this.codec, value, this.encoder);
  }

  /** The HEADER frame; only as the stream's first frame. */
  header(header: H): Uint8Array {
    if (this.state !== State.START) throw new StreamOrderError("the header must be the first frame of a stream");
    const frame = this.frame(FrameKind.HEADER, header);
    this.state = State.HEADER;
    return frame;
  }

  /** An ITEM frame. */
  item(item: I): Uint8Array {
    if (this.state >= State.FOOTER) throw new StreamOrderError("cannot write an item after the footer, END or ERROR");
    const frame = this.frame(FrameKind.ITEM, item);
    this.state = State.ITEMS;
    return frame;
  }

  /** The FOOTER frame; after the items, at most once. */
  footer(footer: F): Uint8Array {
    if (this.state >= State.FOOTER) throw new StreamOrderError("cannot write a footer after the footer, END or ERROR");
    const frame = this.frame(FrameKind.FOOTER, footer);
    this.state = State.FOOTER;
    return frame;
  }

  /** The END frame that closes the stream. */
  end(): Uint8Array {
    if (this.state === State.CLOSED) throw new StreamOrderError("the stream is already closed");
    this.state = State.CLOSED;
    return packTag(FrameKind.END, this.codec, 0);
  }

  /**
   * The ERROR frame carrying a failure: `{type, message}`; `type` is the error's
   * `name` ("TypeError", ...) unless given. `errorId` adds the id the failure was
   * logged under; `goingAway` marks a server shutting down (`"reason": "going_away"`).
   */
  error(error: unknown, options: { type?: string; errorId?: string; goingAway?: boolean } = {}): Uint8Array {
    if (this.state === State.CLOSED) throw new StreamOrderError("the stream is already closed");
    const err = error as { name?: unknown; message?: unknown };
    const body: Record<string, string> = {
      type: options.type ?? (typeof err?.name === "string" ? err.name : "Error"),
      message: typeof err?.message === "string" ? err.message : String(error),
    };
    if (options.goingAway) body.reason = "going_away";
    if (options.errorId !== undefined) body.error_id = options.errorId;
    this.state = State.CLOSED;
    return this.frame(FrameKind.ERROR, body);
  }
}

/** A writer for one stream in `codec`. */
export function streamWriter<H = unknown, I = unknown, F = unknown>(codec: CodecName = "msgpack"): StreamWriter<H, I, F> {
  return new StreamWriter<H, I, F>(codec);
}
