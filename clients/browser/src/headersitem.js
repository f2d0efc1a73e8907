// The headers item's plaintext (docs/protocol.md section 6.3): the sender spelling
// (compact JSON, names sorted, non-ASCII literal) and the checks a client makes on a
// response's item after JSON.parse, so nothing malformed reaches the caller.

import { decodeUtf8, utf8Encoder } from './encoding.js';

// RFC 9110 tchar, lowercase. (The regex printed in section 6.3 lacks "-", which would
// refuse content-type itself; the token grammar the section names includes it.)
const NAME_RE = /^[!#$%&'*+\-.^_`|~0-9a-z]+$/;
const BAD_VALUE_RE = /[\x00-\x08\x0a-\x1f\x7f]/;
const LONE_SURROGATE_RE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** Hop-by-hop and framing names never sealed (section 8.3). */
export const NEVER_SEALED = new Set(['connection', 'keep-alive', 'proxy-connection',
  'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding',
  'upgrade', 'content-length', 'host']);

/** Serialize {name: [values]} in the reference's sender spelling. */
export function encodeHeadersItem(obj) {
  const names = Object.keys(obj).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const parts = names.map((n) => `${JSON.stringify(n)}:[${obj[n].map((v) => JSON.stringify(v)).join(',')}]`);
  // JSON.stringify escapes only ", \\ and controls (HTAB as \t): the reference spelling.
  return utf8Encoder.encode(`{${parts.join(',')}}`);
}

function wellFormed(s) {
  return typeof s.isWellFormed === 'function' ? s.isWellFormed() : !LONE_SURROGATE_RE.test(s);
}

/** Parse a response headers item; null when it does not meet section 6.3. */
export function decodeHeadersItem(bytes) {
  let value;
  try {
    value = JSON.parse(decodeUtf8(bytes));
  } catch {
    return null;
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return null;
  for (const [name, values] of Object.entries(value)) {
    if (!NAME_RE.test(name) || !Array.isArray(values) || values.length === 0) return null;
    for (const v of values) {
      if (typeof v !== 'string' || BAD_VALUE_RE.test(v) || !wellFormed(v)) return null;
    }
  }
  return value;
}
