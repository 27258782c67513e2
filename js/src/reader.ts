/**
 * The stream reader, with the Python reader's semantics (docs/wire-format.md 1):
 * `readHeader()`, `readItems()` (an async iterator), `readFooter()`; order enforced
 * (a misordered call consumes nothing), END required by default, ERROR frames raised
 * as `RemoteStreamError`, truncation detected, frame sizes checked from the tag.
 *
 * `ReaderCore` is sans-IO (bytes in, values or NEED_DATA out); `StreamReader` is a
 * thin async loop moving chunks from a source into it.
 */
import { decodeError, decodePayload, remoteError } from "./codec.js";
import {
  MalformedFrameError,
  StreamConsumedError,
  StreamError,
  StreamOrderError,
  StreamTruncatedError,
  isAbort,
} from "./errors.js";
import { Codec, DEFAULT_MAX_FRAME_BYTES, type Frame, FrameDecoder, FrameKind, KIND_NAMES } from "./frames.js";
import { DEFAULT_MSGPACK_LIMITS, type MsgpackLimits } from "./msgpack.js";

export const NEED_DATA: unique symbol = Symbol("NEED_DATA");
export const DONE: unique symbol = Symbol("DONE");
type Step<T> = T | typeof NEED_DATA;

export interface ReaderOptions {
  /** A source that ends without END is truncated (default true; false only for truss_chains streams). */
  requireEnd?: boolean;
  /** Largest frame payload accepted, checked from the tag before buffering (default 256 MiB). */
  maxFrameBytes?: number;
  msgpackLimits?: Partial<MsgpackLimits>;
  /**
   * Whether the stream type has a header: false makes a HEADER frame a
   * MalformedFrameError (as Python's reader for a type without a header); true or
   * undefined allow one, as the first frame only.
   */
  header?: boolean;
  /** Whether the stream type has a footer: false makes a FOOTER frame a MalformedFrameError. */
  footer?: boolean;
  /** Turn JSON `{data_b64, shape, dtype}` objects into NDArrays (default true). */
  arrays?: boolean;
}

const END_FRAME: Frame = { kind: FrameKind.END, codec: Codec.JSON, arrayHint: false, payload: new Uint8Array(0) };

/** Order state machine and decoding over a FrameDecoder; no I/O. */
export class ReaderCore {
  private readonly decoder: FrameDecoder;
  private readonly limits: MsgpackLimits;
  private peeked: Frame | null = null;
  private headerRead = false;
  private itemsStarted = false;
  private footerRead = false;
  /** True once END (or, without requireEnd, a clean end of the source) was seen. */
  ended = false;

  constructor(readonly options: ReaderOptions = {}) {
    this.decoder = new FrameDecoder(options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES);
    this.limits = { ...DEFAULT_MSGPACK_LIMITS, ...options.msgpackLimits };
  }

  receiveData(chunk: Uint8Array): void {
    this.decoder.feed(chunk);
  }

  receiveEof(): void {
    this.decoder.feedEof();
  }

  private peek(): Step<Frame> {
    let frame = this.peeked;
    if (frame === null && this.ended) return END_FRAME; // never read past END
    if (frame === null) {
      frame = this.decoder.nextFrame();
      if (frame === null) {
        if (!this.decoder.ended) return NEED_DATA;
        if (this.options.requireEnd ?? true) {
          throw new StreamTruncatedError(
            `stream ended after ${this.decoder.frames} frames (${this.decoder.offset} bytes) without an END frame`,
          );
        }
        frame = END_FRAME;
      }
      this.peeked = frame;
    }
    if (frame.kind === FrameKind.ERROR) {
      throw remoteError(decodeError(frame.codec, frame.payload, this.limits));
    }
    return frame;
  }

  private decode(frame: Frame): unknown {
    this.peeked = null;
    return decodePayload(frame.codec, frame.payload, this.limits, this.options.arrays ?? true);
  }

  /** A HEADER anywhere but first, or on a stream type without one, is malformed. */
  private checkHeaderFrame(): void {
    if (this.headerRead || this.options.header === false || this.decoder.frames > 1) {
      throw new MalformedFrameError("a HEADER frame after the stream's first frame");
    }
  }

  readHeader(): Step<unknown> {
    if (this.options.header === false) throw new StreamOrderError("this stream type declares no header");
    if (this.headerRead) throw new StreamConsumedError("the header was already read");
    if (this.itemsStarted) throw new StreamOrderError("the header cannot be read after the items");
    const frame = this.peek();
    if (frame === NEED_DATA) return NEED_DATA;
    if (frame.kind !== FrameKind.HEADER) {
      throw new StreamOrderError(`expected the header, but the stream's next frame is ${KIND_NAMES[frame.kind]}`);
    }
    if (this.decoder.frames > 1) this.checkHeaderFrame();
    const header = this.decode(frame);
    this.headerRead = true;
    return header;
  }

  startItems(): void {
    if (this.itemsStarted) throw new StreamConsumedError("readItems() can be called only once per stream");
    if (this.footerRead) throw new StreamOrderError("the items cannot be read after the footer");
    this.itemsStarted = true;
  }

  /** The next item, NEED_DATA, or DONE at the footer or END. */
  nextItem(): Step<unknown> | typeof DONE {
    const frame = this.peek();
    if (frame === NEED_DATA) return NEED_DATA;
    switch (frame.kind) {
      case FrameKind.ITEM:
        return this.decode(frame);
      case FrameKind.FOOTER:
        if (this.options.footer === false) {
          throw new MalformedFrameError("a FOOTER frame on a stream type without a footer");
        }
        return DONE; // stays peeked for readFooter
      case FrameKind.END:
        this.peeked = null;
        this.ended = true;
        return DONE;
      default: // HEADER
        this.checkHeaderFrame();
        this.itemsStarted = false; // nothing consumed: readHeader() then readItems() work
        throw new StreamOrderError("the stream starts with a header: call readHeader() first");
    }
  }

  readFooter(): Step<unknown> {
    if (this.options.footer === false) throw new StreamOrderError("this stream type declares no footer");
    if (this.footerRead) throw new StreamConsumedError("the footer was already read");
    const frame = this.peek();
    if (frame === NEED_DATA) return NEED_DATA;
    if (frame.kind === FrameKind.HEADER) throw new StreamOrderError("the header is unread: call readHeader() first");
    if (frame.kind === FrameKind.ITEM) throw new StreamOrderError("items are unread: read them with readItems() first");
    if (frame.kind === FrameKind.END) throw new StreamOrderError("the stream ended without a footer");
    const footer = this.decode(frame);
    this.footerRead = true;
    return footer;
  }

  /** Consume the END frame after the footer. */
  readEnd(): Step<typeof DONE> {
    const frame = this.peek();
    if (frame === NEED_DATA) return NEED_DATA;
    if (frame.kind !== FrameKind.END) {
      throw new MalformedFrameError(`a ${KIND_NAMES[frame.kind]} frame after the footer`);
    }
    this.peeked = null;
    this.ended = true;
    return DONE;
  }
}

/** What a reader reads from: a fetch body, any async iterable of bytes, or a sync iterable. */
export type ByteSource =
  | ReadableStream<Uint8Array>
  | AsyncIterable<Uint8Array>
  | Iterable<Uint8Array>;

interface Pull {
  next(): Promise<IteratorResult<Uint8Array>>;
  close(): Promise<void>;
}

function puller(source: ByteSource): Pull {
  if (typeof (source as ReadableStream).getReader === "function") {
    const reader = (source as ReadableStream<Uint8Array>).getReader();
    return {
      next: () => reader.read() as Promise<IteratorResult<Uint8Array>>,
      close: async () => {
        await reader.cancel().catch(() => undefined);
      },
    };
  }
  const it =
    Symbol.asyncIterator in (source as object)
      ? (source as AsyncIterable<Uint8Array>)[Symbol.asyncIterator]()
      : (source as Iterable<Uint8Array>)[Symbol.iterator]();
  return {
    next: async () => await it.next(),
    close: async () => {
      await it.return?.();
    },
  };
}

/**
 * Reads one stream from a source of byte chunks.
 *
 * `H`, `I`, `F` are the header, item and footer types the caller expects; the
 * reader does not validate them (pass `validate` hooks to check shapes, e.g. with zod).
 */
export class StreamReader<H = unknown, I = unknown, F = unknown> {
  private readonly core: ReaderCore;
  private readonly pull: Pull;
  private closed = false;

  constructor(
    source: ByteSource,
    options: ReaderOptions = {},
    private readonly validate: {
      header?: (value: unknown) => H;
      item?: (value: unknown) => I;
      footer?: (value: unknown) => F;
    } = {},
  ) {
    this.core = new ReaderCore(options);
    this.pull = puller(source);
  }

  /** True once END was read. */
  get ended(): boolean {
    return this.core.ended;
  }

  private async more(): Promise<void> {
    let result: IteratorResult<Uint8Array>;
    try {
      result = await this.pull.next();
    } catch (err) {
      // A body that breaks off (connection reset, server killed) is a truncated stream;
      // our own errors (from an SSE source) and the caller's abort pass unchanged.
      if (err instanceof StreamError || isAbort(err)) throw err;
      throw new StreamTruncatedError(`the source failed before the END frame: ${(err as Error)?.message ?? err}`, {
        cause: err,
      });
    }
    if (result.done) this.core.receiveEof();
    else this.core.receiveData(result.value);
  }

  private async run<T>(step: () => Step<T>): Promise<T> {
    for (;;) {
      const value = step();
      if (value !== NEED_DATA) {
        if (this.core.ended) await this.close();
        return value;
      }
      await this.more();
    }
  }

  /**
   * Read the header; it must be the stream's first frame.
   * @throws StreamOrderError the next frame is not the header (nothing consumed)
   */
  async readHeader(): Promise<H> {
    const value = await this.run(() => this.core.readHeader());
    return this.validate.header ? this.validate.header(value) : (value as H);
  }

  /** Yield the items until the footer or END; call once per stream. */
  async *readItems(): AsyncGenerator<I, void, undefined> {
    this.core.startItems();
    for (;;) {
      const item = await this.run(() => this.core.nextItem());
      if (item === DONE) return;
      yield this.validate.item ? this.validate.item(item) : (item as I);
    }
  }

  /** Read the footer, after all items, and the END frame that follows it. */
  async readFooter(): Promise<F> {
    const footer = await this.run(() => this.core.readFooter());
    await this.run(() => this.core.readEnd());
    return this.validate.footer ? this.validate.footer(footer) : (footer as F);
  }

  /** Read the whole stream: the header if the first frame is one, the items, the footer if any. */
  async readAll(): Promise<{ header?: H; items: I[]; footer?: F }> {
    const out: { header?: H; items: I[]; footer?: F } = { items: [] };
    try {
      out.header = await this.readHeader();
    } catch (err) {
      if (!(err instanceof StreamOrderError)) throw err;
    }
    for await (const item of this.readItems()) out.items.push(item);
    if (!this.core.ended) out.footer = await this.readFooter();
    return out;
  }

  /** Stop reading and release the source (cancels a fetch body). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pull.close();
  }
}

/** A reader over `source` (a fetch body, an async iterable of Uint8Array, or a sync iterable). */
export function streamReader<H = unknown, I = unknown, F = unknown>(
  source: ByteSource,
  options: ReaderOptions = {},
): StreamReader<H, I, F> {
  return new StreamReader<H, I, F>(source, options);
}
