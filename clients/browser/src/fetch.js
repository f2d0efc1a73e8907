// mteFetch: fetch's signature and semantics over the relay protocol (docs/protocol.md
// section 8.1). Seals url, headers and body with a leased pair, opens the answer, and
// hands back a real Response whose body yields each chunk or record the moment it
// authenticated. Resends at most once, on a fresh pair, only as section 10.2 allows.

import { b64urlDecode, b64urlEncode, utf8Encoder } from './encoding.js';
import { decodeFailed, MteRelayError } from './errors.js';
import { formatRelayHeader, parseRelayHeader, responseHeaderFor } from './header.js';
import { decodeHeadersItem, encodeHeadersItem, NEVER_SEALED } from './headersitem.js';
import { BodyOpener, RecordSealer, sealBody } from './framing.js';
import { C2S, KIND_HEADERS, KIND_URL, openItem, requestBinding, responseBinding, S2C, sealItem } from './sealing.js';
import { relayErrorFrom } from './relay.js';

const RESEND_CODES = new Set([559, 560, 562, 563, 564, 566]);
const REPAIR_CODES = new Set([559, 560, 562, 563, 564]);
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);
const NULL_BODY_STATUS = new Set([101, 103, 204, 205, 304]);
const BODY_LENGTH = 'x-mte-body-length';
const DECLARED_RE = /^(0|[1-9][0-9]{0,15})$/;

/** Which request headers travel sealed, given the encodeHeaders option. */
function splitHeaders(headers, encodeHeaders) {
  const sealed = {};
  const clear = [];
  const list = Array.isArray(encodeHeaders) ? new Set(encodeHeaders.map((n) => String(n).toLowerCase())) : null;
  for (const [name, value] of headers) {
    if (NEVER_SEALED.has(name) || name.startsWith('x-mte-')) continue;
    const seal = encodeHeaders === true || name === 'content-type' || (list && list.has(name));
    if (seal) (sealed[name] ||= []).push(value);
    else clear.push([name, value]);
  }
  return { sealed, clear };
}

/** The target the url item seals: path and query, any clear pathPrefix removed. */
function plainTarget(url, pathPrefix) {
  let path = url.pathname;
  if (pathPrefix && (path === pathPrefix || path.startsWith(`${pathPrefix}/`))) {
    path = path.slice(pathPrefix.length) || '/';
  }
  return path + url.search;
}

/** Section 10.2's default when a relay says nothing about the upstream. */
function defaultReached(mode) {
  return mode === 'MKE' ? 'maybe' : 'no';
}

function isReplayable(body) {
  return body === null || body instanceof Uint8Array;
}

/**
 * The wire body of a streamed upload: each piece the source yields becomes a record.
 * Pulled only on demand (highWaterMark 0), so `state.pulled` tells whether the
 * platform read anything before it failed.
 */
function streamedRecords(source, sealer, state) {
  let reader = null;
  return new ReadableStream({
    async pull(controller) {
      reader ||= source.getReader();
      state.pulled = true;
      const { done, value } = await reader.read();
      if (done) {
        controller.enqueue(await sealer.seal(new Uint8Array(0), true));
        controller.close();
      } else if (value && value.length) {
        controller.enqueue(await sealer.seal(value instanceof Uint8Array ? value : utf8Encoder.encode(String(value)), false));
      }
    },
    cancel(reason) {
      return reader ? reader.cancel(reason) : undefined;
    },
  }, { highWaterMark: 0 });
}

/** The response body: the wire body through the opener, released as it authenticates. */
function openedStream(wireBody, opener, failure) {
  const reader = wireBody.getReader();
  return new ReadableStream({
    async pull(controller) {
      try {
        for (;;) {
          const { done, value } = await reader.read();
          const pieces = done ? await opener.end() : await opener.push(value);
          for (const p of pieces) if (p.length) controller.enqueue(p);
          if (done) {
            controller.close();
            return;
          }
          if (pieces.length) return;
        }
      } catch (error) {
        reader.cancel(error).catch(() => {});
        // An abort stays an AbortError (fetch semantics); a body cut short is a 562.
        const aborted = error && error.name === 'AbortError';
        failure.error = aborted || error instanceof MteRelayError ? error : decodeFailed(`body lost: ${error}`);
        controller.error(failure.error);
      }
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

async function attempt(relay, request, body, lease, opts) {
  const url = new URL(request.url);
  const method = request.method;
  const bodyEnc = body !== null;
  const keys = lease.pair.keys;
  const records = relay.records && !opts.fixedFraming;
  const mode = !bodyEnc ? 'MTE' : opts.encodeType === 'MTE' ? 'MTE' : records ? 'MKR' : 'MKE';
  const split = splitHeaders(request.headers, opts.encodeHeaders);
  const header = {
    clientId: lease.clientId, pairId: keys.pairId, mode, urlEnc: opts.encodeUrls,
    headersEnc: opts.encodeHeaders !== false, bodyEnc, streaming: records ? 2 : 1, seq: lease.seq,
  };
  let target = plainTarget(url, relay.options.pathPrefix);
  if (header.urlEnc) {
    const token = await sealItem(keys.c2s, header, C2S, KIND_URL, 0, true, utf8Encoder.encode(target));
    target = `/${b64urlEncode(token)}`;
  }
  const wireHeaders = new Headers(split.clear);
  // Section 5.2: the same sealed bytes, the token in a header, one URL (one preflight).
  const fixed = header.urlEnc && relay.fixedPath && !opts.perRequestForm ? relay.fixedPath : null;
  if (fixed) wireHeaders.set('x-mte-relay-url', target.slice(1));
  let wireBody = null;
  if (bodyEnc) {
    if (body instanceof Uint8Array) {
      if (mode === 'MKR') {
        if (header.headersEnc) split.sealed[BODY_LENGTH] = [String(body.length)];
        else wireHeaders.set(BODY_LENGTH, String(body.length));
      }
      wireBody = await sealBody(keys.c2s, header, C2S, body);
    } else {
      wireBody = streamedRecords(body, new RecordSealer(keys.c2s, header, C2S), opts.upload);
    }
    wireHeaders.set('content-type', 'application/octet-stream');
  }
  const binding = requestBinding(method, bodyEnc, target);
  const eh = await sealItem(keys.c2s, header, C2S, KIND_HEADERS, 1, true, encodeHeadersItem(split.sealed), binding);
  wireHeaders.set('x-mte-relay', formatRelayHeader(header));
  wireHeaders.set('x-mte-relay-eh', b64urlEncode(eh));
  const init = {
    method, headers: wireHeaders, body: wireBody, signal: request.signal,
    credentials: request.credentials, mode: request.mode === 'navigate' ? 'cors' : request.mode,
    redirect: 'manual', referrerPolicy: request.referrerPolicy, keepalive: request.keepalive,
  };
  if (wireBody && !(wireBody instanceof Uint8Array)) init.duplex = 'half';
  let wire;
  try {
    wire = await relay.fetch(`${relay.base}${fixed || target}`, init);
  } catch (error) {
    // Chromium streams a request body only over HTTP/2 and rejects it over HTTP/1.1
    // (a TypeError) without reading it: then the body can still be sent buffered.
    if (wireBody && !(wireBody instanceof Uint8Array) && error instanceof TypeError && !opts.upload.pulled
        && !(request.signal && request.signal.aborted)) {
      return { fallback: true };
    }
    throw error;
  }
  const outcome = await openResponse(relay, header, lease, wire, request);
  outcome.fixed = fixed !== null;
  return outcome;
}

/**
 * Chromium's json()/text()/arrayBuffer()/blob() reject an errored body with a plain
 * "TypeError: Failed to fetch", hiding the MteRelayError (code 562) a caller must see
 * to know the answer did not authenticate: the error the body stream failed with wins.
 */
function keepBodyError(response, failure) {
  for (const name of ['arrayBuffer', 'blob', 'bytes', 'formData', 'json', 'text']) {
    const native = response[name];
    if (typeof native !== 'function') continue;
    Object.defineProperty(response, name, {
      configurable: true,
      writable: true,
      value: (...args) => native.apply(response, args).catch((error) => {
        throw failure.error || error;
      }),
    });
  }
}

async function openResponse(relay, header, lease, wire, request) {
  const raw = wire.headers.get('x-mte-relay');
  if (raw === null) {
    return { error: await relayErrorFrom(wire, wire.status === 562 ? defaultReached(header.mode) : 'no') };
  }
  const lost = (reason) => {
    relay.pool.drop(lease.pair);
    wire.body?.cancel().catch(() => {});
    throw decodeFailed(reason);
  };
  let received;
  try {
    received = parseRelayHeader(raw);
  } catch {
    return lost('malformed response x-mte-relay');
  }
  const rh = responseHeaderFor(header, received);
  if (!rh) return lost('response header does not answer the request');
  const token = b64urlDecode(wire.headers.get('x-mte-relay-eh') || '');
  const plain = token && await openItem(lease.pair.keys.s2c, rh, S2C, KIND_HEADERS, 1, true, token,
    responseBinding(wire.status));
  const sealed = plain && decodeHeadersItem(plain);
  if (!sealed) return lost('response headers item did not authenticate');
  const headers = new Headers();
  let declared = null;
  for (const [name, values] of Object.entries(sealed)) {
    if (name === BODY_LENGTH) {
      if (rh.mode === 'MKR') {
        if (values.length !== 1 || !DECLARED_RE.test(values[0])) return lost('malformed declared length');
        declared = Number(values[0]);
      }
      continue;
    }
    for (const v of values) {
      try { headers.append(name, v); } catch { /* a name the platform refuses */ }
    }
  }
  let body = null;
  const failure = { error: null };
  if (rh.bodyEnc && !NULL_BODY_STATUS.has(wire.status) && request.method !== 'HEAD') {
    const opener = new BodyOpener(lease.pair.keys.s2c, rh, S2C, { declaredLength: declared });
    body = openedStream(wire.body || new ReadableStream({ start: (c) => c.close() }), opener, failure);
  } else {
    wire.body?.cancel().catch(() => {}); // clear bytes here would be unauthenticated
  }
  const response = new Response(body, { status: wire.status, statusText: wire.statusText, headers });
  try {
    Object.defineProperty(response, 'url', { value: request.url });
  } catch { /* read-only on some platforms */ }
  keepBodyError(response, failure);
  return { response };
}

/**
 * fetch(input, init) through the relay that `lookup(origin)` returns.
 * @returns {Promise<Response>}
 */
export async function relayFetch(lookup, input, init, mteOptions = {}) {
  const request = new Request(input, init);
  const signal = request.signal;
  if (signal && signal.aborted) throw signal.reason;
  const origin = new URL(request.url).origin;
  const relay = lookup(origin);
  if (!relay) throw new TypeError(`mteFetch: no relay client for ${origin}; call initMteRelayClient first`);
  const o = relay.options;
  const opts = {
    encodeType: mteOptions.encodeType ?? o.encodeType,
    encodeUrls: mteOptions.encodeUrls ?? o.encodeUrls,
    encodeHeaders: mteOptions.encodeHeaders ?? o.encodeHeaders,
    useStreaming: mteOptions.useStreaming ?? o.useStreaming,
    perRequestForm: mteOptions.fixedPath === false,
  };
  // A body is held (so it can be resent) unless the caller asked to stream it to a
  // relay that speaks records; a streamed body is never resent (section 10.2).
  // The first lease is taken first: only a validated relay says whether it speaks records.
  if (relay.revalidate) await relay.validateAgain();
  let first = await relay.pool.acquire(0, signal);
  let body = null;
  if (request.body !== null) {
    // A ReadableStream body streams unless useStreaming is false; any other body (a
    // File, say) streams only when this request asks for it (mteOptions.useStreaming).
    const stream = (init && init.body instanceof ReadableStream && opts.useStreaming !== false)
      || mteOptions.useStreaming === true;
    if (stream && relay.records && relay.streamUploads !== false
        && opts.encodeType !== 'MTE') body = request.body;
    else body = new Uint8Array(await request.arrayBuffer());
  }
  let after = 0;
  for (let tries = 0; ; tries++) {
    const lease = first || await relay.pool.acquire(after, signal);
    first = null;
    lease.records = relay.records && !opts.fixedFraming;
    opts.upload = { pulled: false };
    const { response, error, fallback, fixed } = await attempt(relay, request, body, lease, opts);
    if (response) return response;
    if (fallback) {
      // Nothing was read, nothing sent: buffer the body and send it on a new seq; and
      // buffer this origin's uploads from now on (section 7: MKR with Content-Length).
      relay.streamUploads = false;
      body = new Uint8Array(await new Response(body).arrayBuffer());
      tries -= 1;
      continue;
    }
    const code = error.code;
    const canResend = tries === 0 && RESEND_CODES.has(code) && isReplayable(body)
      && (error.upstreamReached === 'no' || IDEMPOTENT.has(request.method));
    if (REPAIR_CODES.has(code)) after = relay.pool.drop(lease.pair);
    if (code === 562 && fixed) {
      // A replica without the fixed path (section 5.2) cannot open it: the resend takes
      // the per-request form every relay accepts, and the origin is asked again (HEAD)
      // before its next request whether it still announces the fixed path.
      opts.perRequestForm = true;
      relay.revalidate = true;
    }
    if (code === 566) after = relay.forgetClient(lease.clientId);
    if (code === 568 && lease.records && tries === 0 && isReplayable(body)) {
      // An older replica (section 5.1): resend with fixed framing, then learn anew.
      relay.records = false;
      opts.fixedFraming = true;
      await relay.validate().catch(() => {});
      continue;
    }
    if (!canResend) throw error;
  }
}
