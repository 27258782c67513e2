/**
 * truss-stream for JavaScript: read and write typed model-serving streams
 * (docs/wire-format.md, version 2) over fetch() bodies, SSE over fetch() and any
 * async iterable of bytes.
 */
export * from "./errors.js";
export {
  ARRAY_HINT,
  Codec,
  type CodecName,
  DEFAULT_MAX_FRAME_BYTES,
  type Frame,
  FrameDecoder,
  FrameKind,
  TAG_SIZE,
  WIRE_FORMAT_VERSION,
  packTag,
  parseTagByte,
} from "./frames.js";
export {
  type DType,
  type Float8Format,
  ML_DTYPES,
  MAX_NDIM,
  NDARRAY_EXT_CODE,
  NDArray,
  type NDArrayData,
  type NumericData,
  bfloat16ToFloat32,
  float16ToFloat32,
  float8ToFloat32,
  fromJsonForm,
  int4ToInt8,
  ndarray,
  parseDType,
  toFloat64,
  toJsonForm,
  uint4ToUint8,
} from "./ndarray.js";
export { DEFAULT_MSGPACK_LIMITS, type MsgpackLimits, decodeMsgpack } from "./msgpack.js";
export { type ErrorBody, JSON_BIGINT_EXACT, decodeError, decodeJson, encodeFrame, remoteError, toJsonText } from "./codec.js";
export { type ByteSource, DONE, NEED_DATA, ReaderCore, type ReaderOptions, StreamReader, streamReader } from "./reader.js";
export { StreamWriter, streamWriter } from "./writer.js";
export { type FetchOptions, MEDIA_TYPE, checkResponse, fetchStream, readResponse } from "./http.js";
export {
  SSE_MEDIA_TYPE,
  SSEEventTooLargeError,
  SSEFrameDecoder,
  type SSEOptions,
  POSITION_HEADER,
  STREAM_ID_HEADER,
  fetchSSE,
  maxEventBytesFor,
} from "./sse.js";
