/**
 * Errors raised by truss-stream, the same tree as the Python package's
 * (`truss_stream._errors`), with the same class names:
 *
 * ```
 * StreamError                 every error about a stream's bytes, order or remote failure
 * ├── StreamOrderError        a read or write call out of order; nothing is consumed
 * ├── StreamConsumedError     a part of the stream read a second time
 * ├── StreamTruncatedError    the source ended before END, or inside a frame
 * │   └── StreamResumeError   an SSE reconnection that does not continue the same stream
 * ├── FrameTooLargeError      a tag declares more than maxFrameBytes (checked before buffering)
 * ├── MalformedFrameError     bytes that are no valid frame, payload or array
 * │   ├── UnknownCodecError   reserved tag bits, or the array hint on a JSON frame
 * │   └── UnknownExtError     a msgpack ext code or array dtype this reader does not know
 * ├── RemoteStreamError       the producer failed and sent an ERROR frame
 * │   └── ServerGoingAwayError  the server shut down mid-stream (retryable)
 * ├── UnsupportedValueError   the writer was given a value it cannot encode
 * └── StreamResponseError     an HTTP error status, or a response that is not a stream
 * ```
 */

/** Base of every error about a stream. */
export class StreamError extends Error {
  override name = "StreamError";
}

/** A read or write call came out of order; the frame looked at is still there. */
export class StreamOrderError extends StreamError {
  override name = "StreamOrderError";
}

/** The stream, or the part asked for, was already read. */
export class StreamConsumedError extends StreamError {
  override name = "StreamConsumedError";
}

/** The source ended before the END frame, or in the middle of a frame. */
export class StreamTruncatedError extends StreamError {
  override name = "StreamTruncatedError";
}

/** A frame tag declared more payload bytes than `maxFrameBytes`. */
export class FrameTooLargeError extends StreamError {
  override name = "FrameTooLargeError";
  constructor(
    readonly length: number,
    readonly limit: number,
    message?: string,
  ) {
    super(message ?? `frame declares ${length} bytes, above maxFrameBytes=${limit}`);
  }
}

/** Bytes that do not form a valid frame, payload or array. */
export class MalformedFrameError extends StreamError {
  override name = "MalformedFrameError";
}

/** A frame tag names a codec this reader does not implement. */
export class UnknownCodecError extends MalformedFrameError {
  override name = "UnknownCodecError";
}

/** A msgpack ext type code, or an array dtype, this reader does not know. */
export class UnknownExtError extends MalformedFrameError {
  override name = "UnknownExtError";
}

/** The writer was given a value it cannot put on the wire. */
export class UnsupportedValueError extends StreamError {
  override name = "UnsupportedValueError";
}

/**
 * The producer failed; its ERROR frame carried the failure to the reader.
 * `remoteType` / `remoteMessage` / `errorId` are Python's `remote_type` /
 * `remote_message` / `error_id` (the id the server logged the failure under, if it sent one).
 */
export class RemoteStreamError extends StreamError {
  override name = "RemoteStreamError";
  constructor(
    readonly remoteType: string,
    readonly remoteMessage: string,
    readonly errorId: string | null = null,
  ) {
    super(
      `remote ${remoteType}: ${remoteMessage}` +
        (errorId !== null && !remoteMessage.includes(errorId) ? ` (error id ${errorId})` : ""),
    );
  }
}

/**
 * The server is shutting down and ended the stream early (an ERROR frame with
 * `"reason": "going_away"`); nothing failed in the request, which may be retried.
 * An SSE client with resume attempts left reconnects instead of raising it.
 */
export class ServerGoingAwayError extends RemoteStreamError {
  override name = "ServerGoingAwayError";
  static readonly REASON = "going_away";
}

/**
 * A reconnection did not continue the same stream where the reader stopped
 * (another `Truss-Stream-Id`, or another position). Raised before any frame of the
 * new response reaches the reader.
 */
export class StreamResumeError extends StreamTruncatedError {
  override name = "StreamResumeError";
  constructor(
    message: string,
    readonly expectedStreamId: string | null,
    readonly streamId: string | null,
    readonly expectedPosition: number,
    readonly position: number | null,
  ) {
    super(message);
  }
}

/** The server answered with an error status, or with a body that is not the expected stream. */
export class StreamResponseError extends StreamError {
  override name = "StreamResponseError";
  constructor(
    message: string,
    readonly status: number,
    readonly contentType: string,
    readonly body: string,
  ) {
    super(message);
  }
}

/** A caller's abort (AbortController, AbortSignal.timeout): passed on unchanged, never a truncation. */
export function isAbort(err: unknown): boolean {
  const name = (err as { name?: unknown } | null)?.name;
  return name === "AbortError" || name === "TimeoutError";
}
