// The clear x-mte-relay header (docs/protocol.md section 5) and the framing
// announcement (5.1). Its flags are bound into every item's AAD, so parsing must
// follow the spec's order exactly and the flags byte must come from the header of
// the message being sealed or opened.

import { MteRelayError } from './errors.js';

export const MAX_SEQ = Number.MAX_SAFE_INTEGER; // 2^53 - 1
export const MODES = ['MTE', 'MKE', 'MKR'];
const CLIENT_ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\.[0-9a-f]{64}$/;
const PAIR_ID_RE = /^[A-Za-z0-9_-]{16,64}$/;
const SEQ_RE = /^(0|[1-9][0-9]{0,15})$/;

export function isClientId(value) {
  return typeof value === 'string' && CLIENT_ID_RE.test(value);
}

export function isPairId(value) {
  return typeof value === 'string' && PAIR_ID_RE.test(value);
}

/** The bare uuid of a signed client id: pairing binds only this (section 3). */
export function clientUuid(clientId) {
  return clientId.slice(0, 36);
}

/**
 * @typedef {{clientId: string, pairId: string, mode: string, urlEnc: boolean,
 *   headersEnc: boolean, bodyEnc: boolean, streaming: 0|1|2, seq: number}} RelayHeader
 */

/** Parse per section 5 "Parsing"; throws MteRelayError 566/568 like the relay would. */
export function parseRelayHeader(raw) {
  const bad = (code, reason) => new MteRelayError(code, undefined, { reason });
  if (typeof raw !== 'string' || raw.length > 256) throw bad(568, 'header too long');
  if (/[^\x00-\x7f]/.test(raw)) throw bad(568, 'non-ASCII header');
  const value = raw.replace(/^[ \t]+|[ \t]+$/g, '');
  const fields = value.split(',');
  if (fields.length !== 8) throw bad(568, 'not 8 fields');
  const [clientId, pairId, mode, urlEnc, headersEnc, bodyEnc, streaming, seq] = fields;
  if (!isClientId(clientId)) throw bad(566, 'client id');
  if (!isPairId(pairId)) throw bad(568, 'pairId');
  if (!MODES.includes(mode)) throw bad(568, 'mode');
  for (const f of [urlEnc, headersEnc, bodyEnc]) {
    if (f !== '0' && f !== '1') throw bad(568, 'flag');
  }
  if (streaming !== '0' && streaming !== '1' && streaming !== '2') throw bad(568, 'streaming');
  if (!SEQ_RE.test(seq) || Number(seq) > MAX_SEQ) throw bad(568, 'seq');
  return {
    clientId, pairId, mode,
    urlEnc: urlEnc === '1', headersEnc: headersEnc === '1', bodyEnc: bodyEnc === '1',
    streaming: Number(streaming), seq: Number(seq),
  };
}

export function formatRelayHeader(h) {
  const b = (x) => (x ? '1' : '0');
  return [h.clientId, h.pairId, h.mode, b(h.urlEnc), b(h.headersEnc), b(h.bodyEnc),
    String(h.streaming), String(h.seq)].join(',');
}

/** The AAD flags byte of section 5. */
export function flagsByte(h) {
  return (h.mode === 'MKE' ? 0x01 : 0) | (h.urlEnc ? 0x02 : 0) | (h.headersEnc ? 0x04 : 0)
    | (h.bodyEnc ? 0x08 : 0) | (h.streaming !== 0 ? 0x10 : 0) | (h.mode === 'MKR' ? 0x20 : 0)
    | (h.streaming === 2 ? 0x40 : 0);
}

/**
 * The response header a request expects, taking only mode and bodyEnc from the
 * received one (section 5, "Opening a response"). Throws a local 562 on mismatch.
 */
export function responseHeaderFor(request, received) {
  const ok = received.clientId === request.clientId && received.pairId === request.pairId
    && received.seq === request.seq && received.streaming === request.streaming
    && !received.urlEnc && received.headersEnc
    && (received.mode !== 'MKE' || request.streaming >= 1)
    && (received.mode !== 'MKR' || request.streaming === 2);
  if (!ok) return null;
  return { ...request, urlEnc: false, headersEnc: true, mode: received.mode, bodyEnc: received.bodyEnc };
}

/** Whether an x-mte-relay-framing value announces record framing (5.1). */
export function announcesRecords(value) {
  if (value === null || value === undefined) return false;
  return value.split(',').some((t) => t.replace(/^[ \t]+|[ \t]+$/g, '') === 'MKR');
}

const FIXED_PATH_RE = /^(\/[A-Za-z0-9_~-][A-Za-z0-9._~-]*){1,8}$/;

/**
 * The fixed path an `x-mte-relay-fixed-path` value announces (section 5.2), or null:
 * anything but a plain absolute path keeps the per-request form, which every relay accepts.
 */
export function parseFixedPath(value) {
  if (typeof value !== 'string') return null;
  const path = value.replace(/^[ \t]+|[ \t]+$/g, '');
  if (path.length > 128 || !FIXED_PATH_RE.test(path)) return null;
  return path.split('/').some((s) => s === '.' || s === '..') ? null : path;
}
