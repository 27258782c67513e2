/**
 * Errors raised by truss-stream, the same tree as the Python package's
 * (`truss_stream._errors`), with the same class names:
 *
 * ```
 * StreamError                 every error about a stream's bytes, order or remote failure
 * ├── StreamOrderError        a read or write call out of order; nothing is consumed
 * ├── StreamConsumedError     a part of the stream read a second time
 * ├── StreamTruncatedError    the source ended before END, or inside a frame
 * ├── FrameTooLargeError      a tag declares more than maxFrameBytes (checked before buffering)
 * ├── MalformedFrameError     bytes that are no valid frame, payload or array
 * │   ├── UnknownCodecError   reserved tag bits, or the array hint on a JSON frame
 * │   └── UnknownExtError     a msgpack ext code or array dtype this reader does not know
 * ├── RemoteStreamError       the producer failed and sent an ERROR frame
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
 * `remoteType` / `remoteMessage` are Python's `remote_type` / `remote_message`.
 */
export class RemoteStreamError extends StreamError {
  override name = "RemoteStreamError";
  constructor(
    readonly remoteType: string,
    readonly remoteMessage: string,
  ) {
    super(`remote ${remoteType}: ${remoteMessage}`);
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
