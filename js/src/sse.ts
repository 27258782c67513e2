/**
 * Server-sent events over fetch() (docs/transports.md, "SSE encoding"): unlike
 * EventSource, a request can carry auth headers and a body, use any method, and
 * read binary (msgpack) frames. One event per frame:
 *
 * ```
 * event: item            header | item | footer | end | error
 * id: 7                  the frame's position in the stream
 * data: {"score":0.5}    the JSON payload, or base64 of the whole binary frame
 * ```
 *
 * After a dropped connection the client reconnects (`resumeAttempts`) with
 * `Last-Event-ID`, discarding a partly received event, and checks that the server
 * resumed exactly after that id.
 */
import { decodeBase64 } from "./base64.js";
import { decodeError } from "./codec.js";
import {
  FrameTooLargeError,
  MalformedFrameError,
  ServerGoingAwayError,
  StreamError,
  StreamResponseError,
  StreamResumeError,
  StreamTruncatedError,
  isAbort,
} from "./errors.js";
import { Codec, DEFAULT_MAX_FRAME_BYTES, FrameKind, TAG_SIZE, packTag, parseTagByte } from "./frames.js";
import { type FetchOptions, checkResponse, withAccept } from "./http.js";
import { StreamReader } from "./reader.js";

export const SSE_MEDIA_TYPE = "text/event-stream";
const EVENT_OVERHEAD = 64 * 1024;
const KINDS: Record<string, FrameKind> = {
  header: FrameKind.HEADER,
  item: FrameKind.ITEM,
  footer: FrameKind.FOOTER,
  end: FrameKind.END,
  error: FrameKind.ERROR,
};

/** The SSE event size that carries a frame of `maxFrameBytes` (as base64), as in Python. */
export function maxEventBytesFor(maxFrameBytes: number): number {
  return Math.ceil(maxFrameBytes / 3) * 4 + EVENT_OVERHEAD;
}

/** An SSE event grew past `maxEventBytes` before its closing blank line. */
export class SSEEventTooLargeError extends FrameTooLargeError {
  override name = "SSEEventTooLargeError";
  constructor(length: number, limit: number) {
    super(length, limit, `SSE event of more than ${length} bytes, above maxEventBytes=${limit}`);
  }
}

const LF = 0x0a;
const CR = 0x0d;

/**
 * Sans-IO SSE parser giving back the frames the server encoded. Accepts LF, CR
 * and CRLF line ends (the SSE standard's), comment lines, and events without data.
 */
export class SSEFrameDecoder {
  private buf = new Uint8Array(1024);
  private len = 0;
  private start = 0; // first byte of the line being read
  private eventBytes = 0;
  private eventName = "";
  private data: Uint8Array[] = [];
  private eventId: string | null = null;
  private skipLF = false;
  /** The `id:` of the last whole event decoded (for Last-Event-ID). */
  lastEventId: string | null = null;
  /** True once an `end` or `error` event was decoded. */
  ended = false;
  /** The server's `retry:` (reconnection delay, ms), if it sent one. */
  retryMs: number | null = null;

  constructor(readonly maxEventBytes: number = maxEventBytesFor(DEFAULT_MAX_FRAME_BYTES)) {}

  /** Add `chunk`; return the frames it completed. */
  feed(chunk: Uint8Array): Uint8Array[] {
    return this.feedEvents(chunk).map((e) => e.frame);
  }

  /** Add `chunk`; return the frames it completed, each with its event's `id:` (or the last one). */
  feedEvents(chunk: Uint8Array): { frame: Uint8Array; id: string | null }[] {
    if (this.len + chunk.length > this.buf.length) {
      const live = this.len - this.start;
      let size = this.buf.length;
      while (size < live + chunk.length) size *= 2;
      if (size === this.buf.length) this.buf.copyWithin(0, this.start, this.len);
      else {
        const next = new Uint8Array(size);
        next.set(this.buf.subarray(this.start, this.len));
        this.buf = next;
      }
      this.len = live;
      this.start = 0;
    }
    this.buf.set(chunk, this.len);
    this.len += chunk.length;
    if (this.skipLF && this.len > this.start) {
      // The previous chunk ended with CR: an LF right after it belongs to that line end.
      if (this.buf[this.start] === LF) this.start += 1;
      this.skipLF = false;
    }
    const frames: { frame: Uint8Array; id: string | null }[] = [];
    const buf = this.buf.subarray(0, this.len);
    for (;;) {
      const i = this.start;
      let end = buf.indexOf(LF, i);
      const cr = buf.subarray(i, end < 0 ? this.len : end).indexOf(CR);
      let next: number;
      if (cr >= 0) {
        end = i + cr;
        if (end + 1 >= this.len) {
          next = end + 1; // CR ends the line; an LF in the next chunk is skipped
          this.skipLF = true;
        } else next = buf[end + 1] === LF ? end + 2 : end + 1;
      } else if (end >= 0) next = end + 1;
      else break;
      const frame = this.line(buf.subarray(i, end));
      this.eventBytes += next - i;
      this.start = next;
      if (frame !== null) frames.push({ frame, id: this.lastEventId });
    }
    if (this.eventBytes + (this.len - this.start) > this.maxEventBytes) {
      throw new SSEEventTooLargeError(this.eventBytes + (this.len - this.start), this.maxEventBytes);
    }
    return frames;
  }

  private line(line: Uint8Array): Uint8Array | null {
    if (line.length === 0) return this.dispatch();
    if (line[0] === 0x3a) return null; // ": ping"
    let colon = line.indexOf(0x3a);
    let value: Uint8Array;
    if (colon < 0) {
      colon = line.length;
      value = new Uint8Array(0);
    } else {
      value = line.subarray(line[colon + 1] === 0x20 ? colon + 2 : colon + 1);
    }
    const field = String.fromCharCode(...line.subarray(0, Math.min(colon, 8)));
    if (colon > 8) return null;
    if (field === "data") this.data.push(value.slice());
    else if (field === "event") this.eventName = new TextDecoder().decode(value);
    else if (field === "id" && !value.includes(0)) this.eventId = new TextDecoder().decode(value);
    else if (field === "retry" && value.length && value.every((c) => c >= 0x30 && c <= 0x39)) {
      this.retryMs = Number(new TextDecoder().decode(value));
    }
    return null;
  }

  private dispatch(): Uint8Array | null {
    const name = this.eventName || "message";
    const parts = this.data;
    const id = this.eventId;
    this.eventName = "";
    this.data = [];
    this.eventBytes = 0;
    if (id !== null) this.lastEventId = id;
    this.eventId = null;
    if (parts.length === 0 && name === "message") return null;
    let data: Uint8Array;
    if (parts.length === 1) data = parts[0]!;
    else {
      const size = parts.reduce((n, p) => n + p.length, 0) + Math.max(parts.length - 1, 0);
      data = new Uint8Array(size);
      let at = 0;
      parts.forEach((p, k) => {
        if (k) data[at++] = LF;
        data.set(p, at);
        at += p.length;
      });
    }
    const frame = eventFrame(name, data);
    if (name === "end" || name === "error") this.ended = true;
    return frame;
  }

  /** Drop a partly received event (before reading a resumed connection). */
  discardPartial(): void {
    this.skipLF = false;
    this.len = this.start = this.eventBytes = 0;
    this.eventName = "";
    this.data = [];
    this.eventId = null;
  }
}

function eventFrame(name: string, data: Uint8Array): Uint8Array {
  const kind = KINDS[name];
  if (kind === undefined) throw new MalformedFrameError(`unexpected SSE event '${name.slice(0, 40)}'`);
  if (data.length && data[0]! >= 0x41 && data[0]! <= 0x5a) {
    // A-Z: base64 of a whole binary frame (JSON never starts with an uppercase letter)
    let frame: Uint8Array;
    try {
      frame = decodeBase64(data);
    } catch {
      throw new MalformedFrameError(`bad base64 in SSE ${name} event`);
    }
    if (frame.length < TAG_SIZE || parseTagByte(frame[0]!)[0] !== kind) {
      throw new MalformedFrameError(`SSE ${name} event holds another frame kind`);
    }
    return frame;
  }
  if (kind === FrameKind.END) return packTag(FrameKind.END, Codec.JSON, 0);
  const frame = new Uint8Array(TAG_SIZE + data.length);
  frame.set(packTag(kind, Codec.JSON, data.length));
  frame.set(data, TAG_SIZE);
  return frame;
}

export interface SSEOptions extends FetchOptions {
  /** Reconnections allowed after the connection drops (or the server goes away) mid-stream (default 0). */
  resumeAttempts?: number;
  /** Bounds one event; default fits a frame of maxFrameBytes as base64. */
  maxEventBytes?: number;
  /** First reconnection delay in ms (doubling, at most 2 s; default 100); a server's `retry:` wins. */
  resumeDelayMs?: number;
}

/** Response headers a resumable server sends (docs/transports.md, "Resume integrity"). */
export const STREAM_ID_HEADER = "Truss-Stream-Id";
export const POSITION_HEADER = "Truss-Stream-Position";

class GoingAway extends Error {}

function isGoingAway(frame: Uint8Array): boolean {
  if ((frame[0]! & 0x0f) !== FrameKind.ERROR) return false;
  try {
    return decodeError((frame[0]! & 0x10) as Codec, frame.subarray(TAG_SIZE)).reason === ServerGoingAwayError.REASON;
  } catch {
    return false; // malformed: the reader reports it
  }
}

/**
 * The frames of one SSE stream across reconnections, with the Python client's
 * integrity checks: a resumed response must carry the first response's
 * `Truss-Stream-Id` (both absent counts as equal) and start at the number of frames
 * already delivered (its `Truss-Stream-Position`, or for servers without it the first
 * event's decimal `id:`); otherwise StreamResumeError before any of its frames is
 * handed on. A going-away ERROR (server shutdown) with attempts left is not delivered:
 * the client reconnects.
 */
async function* sseFrames(
  input: string | URL | Request,
  init: RequestInit | undefined,
  options: SSEOptions,
  decoder: SSEFrameDecoder,
  first: Response,
): AsyncGenerator<Uint8Array, void, undefined> {
  const doFetch = options.fetch ?? globalThis.fetch;
  let left = options.resumeAttempts ?? 0;
  let failures = 0;
  let response = first;
  const expectedId = first.headers.get(STREAM_ID_HEADER);
  let delivered = 0;
  let lastId: string | null = null;
  let checkId = false;
  const mismatch = (message: string, streamId: string | null, position: number | null): StreamResumeError =>
    new StreamResumeError(message, expectedId, streamId, delivered, position);
  const firstPosition = first.headers.get(POSITION_HEADER);
  if (firstPosition !== null && firstPosition !== "0") {
    throw mismatch(`the stream's first response starts at ${firstPosition.slice(0, 40)}, not 0`, expectedId, null);
  }
  for (;;) {
    let failure: unknown;
    try {
      const reader = response.body!.getReader();
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          for (const { frame, id } of decoder.feedEvents(value)) {
            if (checkId) {
              checkId = false;
              if (id !== String(delivered)) {
                throw mismatch(
                  `cannot verify the resumed position: its first id is ${JSON.stringify(id)}, expected "${delivered}" (and no ${POSITION_HEADER} header)`,
                  expectedId,
                  id !== null && /^[0-9]{1,18}$/.test(id) ? Number(id) : null,
                );
              }
            }
            if (left > 0 && isGoingAway(frame)) throw new GoingAway();
            delivered += 1;
            lastId = id;
            yield frame;
          }
          if (decoder.ended) return;
        }
      } finally {
        reader.releaseLock();
        await response.body?.cancel().catch(() => undefined);
      }
      failure = new StreamTruncatedError("the SSE response ended before the end event");
    } catch (err) {
      if (err instanceof GoingAway) {
        failure = err;
        decoder.ended = false;
      } else if (err instanceof StreamError || isAbort(err)) throw err;
      else failure = new StreamTruncatedError(`the SSE connection failed: ${(err as Error)?.message ?? err}`, { cause: err });
    }
    if (left <= 0 || decoder.ended) {
      if (failure instanceof GoingAway) throw new StreamTruncatedError("the server went away");
      throw failure;
    }
    for (;;) {
      left -= 1;
      failures += 1;
      decoder.discardPartial();
      const delay =
        decoder.retryMs !== null
          ? Math.min(decoder.retryMs, 30000)
          : Math.min((options.resumeDelayMs ?? 100) * 2 ** (failures - 1), 2000);
      await new Promise((r) => setTimeout(r, delay));
      const extra: Record<string, string> = {};
      if (lastId !== null) extra["Last-Event-ID"] = lastId;
      if (expectedId !== null) extra[STREAM_ID_HEADER] = expectedId;
      try {
        response = await doFetch(input, withAccept(init, SSE_MEDIA_TYPE, extra));
        await checkResponse(response, SSE_MEDIA_TYPE);
      } catch (err) {
        if (err instanceof StreamResponseError || isAbort(err) || left <= 0) throw err;
        continue;
      }
      const streamId = response.headers.get(STREAM_ID_HEADER);
      const raw = response.headers.get(POSITION_HEADER);
      const position = raw !== null && /^[0-9]{1,18}$/.test(raw) ? Number(raw) : null;
      await (async () => {
        if (streamId !== expectedId) {
          throw mismatch(
            `the resumed response is another stream (${STREAM_ID_HEADER} ${JSON.stringify(streamId)}, expected ${JSON.stringify(expectedId)})`,
            streamId,
            position,
          );
        }
        if (raw !== null && position === null) throw mismatch(`bad ${POSITION_HEADER} ${JSON.stringify(raw.slice(0, 40))}`, streamId, null);
        if (position !== null && position !== delivered) {
          throw mismatch(`the resumed response starts at frame ${position}, expected ${delivered}`, streamId, position);
        }
      })().catch(async (err) => {
        await response.body?.cancel().catch(() => undefined);
        throw err;
      });
      checkId = position === null; // an older server: its ids are positions
      break;
    }
  }
}

/**
 * Send a request and read the SSE stream it answers with (JSON or msgpack frames).
 * @throws StreamResponseError an error status or a response that is not text/event-stream
 */
export async function fetchSSE<H = unknown, I = unknown, F = unknown>(
  input: string | URL | Request,
  init?: RequestInit,
  options: SSEOptions = {},
): Promise<StreamReader<H, I, F>> {
  const doFetch = options.fetch ?? globalThis.fetch;
  const response = await doFetch(input, withAccept(init, SSE_MEDIA_TYPE));
  await checkResponse(response, SSE_MEDIA_TYPE);
  const decoder = new SSEFrameDecoder(
    options.maxEventBytes ?? maxEventBytesFor(options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES),
  );
  return new StreamReader<H, I, F>(sseFrames(input, init, options, decoder, response), options);
}
