/**
 * Binary chunked HTTP (docs/transports.md): the response body is the frames back to
 * back, media type `application/vnd.truss-stream`.
 */
import { StreamResponseError } from "./errors.js";
import { type ReaderOptions, StreamReader } from "./reader.js";

export const MEDIA_TYPE = "application/vnd.truss-stream";
const MAX_BODY = 4096;

export interface FetchOptions extends ReaderOptions {
  /** The fetch to use (default: globalThis.fetch). */
  fetch?: typeof fetch;
}

function mediaType(response: Response): string {
  return (response.headers.get("content-type") ?? "").split(";", 1)[0]!.trim().toLowerCase();
}

/**
 * Check a response's status and media type; on a mismatch read the start of its
 * body and raise StreamResponseError (`status`, `contentType`, `body`).
 */
export async function checkResponse(response: Response, expected: string): Promise<void> {
  if (response.ok && mediaType(response) === expected) return;
  let body = "";
  try {
    const reader = response.body?.getReader();
    const parts: Uint8Array[] = [];
    let size = 0;
    while (reader !== undefined && size < MAX_BODY) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
      size += value.length;
    }
    await reader?.cancel().catch(() => undefined);
    const all = new Uint8Array(size);
    let at = 0;
    for (const p of parts) {
      all.set(p, at);
      at += p.length;
    }
    body = new TextDecoder().decode(all.subarray(0, MAX_BODY));
  } catch {
    body = "";
  }
  const contentType = response.headers.get("content-type") ?? "";
  const message = response.ok
    ? `expected ${expected}, got ${contentType || "no content type"}`
    : `HTTP ${response.status} ${response.statusText}`.trim();
  throw new StreamResponseError(message, response.status, contentType, body);
}

export function withAccept(init: RequestInit | undefined, accept: string, extra: Record<string, string> = {}): RequestInit {
  const headers = new Headers(init?.headers);
  if (!headers.has("accept")) headers.set("accept", accept);
  for (const [k, v] of Object.entries(extra)) headers.set(k, v);
  return { ...init, headers };
}

/** A reader over a binary stream response (its status and media type checked first). */
export async function readResponse<H = unknown, I = unknown, F = unknown>(
  response: Response,
  options: ReaderOptions = {},
): Promise<StreamReader<H, I, F>> {
  await checkResponse(response, MEDIA_TYPE);
  if (response.body === null) throw new StreamResponseError("the response has no body", response.status, MEDIA_TYPE, "");
  return new StreamReader<H, I, F>(response.body, options);
}

/**
 * Send a request (any method, headers and body, as fetch takes them) and read the
 * binary chunked stream it answers with.
 * @throws StreamResponseError an error status or another media type
 */
export async function fetchStream<H = unknown, I = unknown, F = unknown>(
  input: string | URL | Request,
  init?: RequestInit,
  options: FetchOptions = {},
): Promise<StreamReader<H, I, F>> {
  const doFetch = options.fetch ?? globalThis.fetch;
  const response = await doFetch(input, withAccept(init, MEDIA_TYPE));
  return readResponse<H, I, F>(response, options);
}
