// One relay origin: its options, its client id (validated by HEAD /api/mte-relay and
// persisted in storage), whether it announced record framing, and its pool of pairs
// (POST /api/mte-pair). Reactions follow docs/protocol.md sections 2, 10.3 and 10.4.

import { announcesRecords, clientUuid, isClientId, parseFixedPath } from './header.js';
import { MteRelayError } from './errors.js';
import { completePairing, makePairRequest, newPairId } from './pairing.js';
import { PairPool } from './pool.js';
import { clientIdStore } from './storage.js';

/** Read a relay-made error answer (section 10.1) into an MteRelayError. */
export async function relayErrorFrom(response, fallbackReached = 'no') {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const code = body && Number.isInteger(body.code) ? body.code : response.status;
  let reached = body && (body.upstreamReached === 'no' || body.upstreamReached === 'maybe')
    ? body.upstreamReached : null;
  if (!reached) {
    const h = response.headers.get('x-mte-upstream-reached');
    reached = h === 'no' || h === 'maybe' ? h : fallbackReached;
  }
  const reason = body && typeof body.reason === 'string' ? body.reason
    : body && typeof body.info === 'string' ? body.info : undefined;
  const error = new MteRelayError(code, body && typeof body.error === 'string' ? body.error : undefined,
    { upstreamReached: reached, reason, status: response.status, body });
  if (response.status === 429) {
    const seconds = Number.parseInt(response.headers.get('retry-after') || '', 10);
    error.retryAfter = Number.isFinite(seconds) && seconds > 0 ? seconds : 1;
  }
  return error;
}

export class RelayOrigin {
  constructor(options) {
    this.options = options;
    this.origin = options.origin;
    this.base = options.origin + options.pathPrefix;
    this.ids = clientIdStore(options.storage, options.origin);
    this.records = false;
    // The announced fixed path (section 5.2), null for the per-request form; and
    // whether a 562 on it asks for a fresh HEAD before the next request.
    this.fixedPath = null;
    this.revalidate = false;
    this.fetch = options.fetch;
    this.pool = new PairPool({
      size: options.numberOfPairs,
      validate: () => this.validate(),
      makePairs: (clientId, count) => this.makePairs(clientId, count),
    });
  }

  /** HEAD /api/mte-relay, presenting the stored id if any; a refused id is dropped. */
  async validate() {
    let stored = this.ids.get();
    if (stored !== null && !isClientId(stored)) {
      this.ids.remove();
      stored = null;
    }
    for (const present of stored ? [stored, null] : [null]) {
      const headers = present ? { 'x-mte-relay': present } : {};
      const response = await this.fetch(`${this.base}/api/mte-relay`, { method: 'HEAD', headers });
      if (response.status === 566 && present) {
        this.ids.remove();
        continue;
      }
      if (response.status !== 200) throw await relayErrorFrom(response);
      const id = response.headers.get('x-mte-relay');
      if (!isClientId(id)) {
        throw new MteRelayError(566, 'Relay answered no valid client id', { reason: 'HEAD /api/mte-relay' });
      }
      this.records = announcesRecords(response.headers.get('x-mte-relay-framing'));
      this.fixedPath = this.options.fixedPath === false ? null
        : parseFixedPath(response.headers.get('x-mte-relay-fixed-path'));
      this.revalidate = false;
      this.ids.set(id);
      return id;
    }
    throw new MteRelayError(566);
  }

  /** validate() once for every request waiting on a revalidation; a failure keeps what was known. */
  validateAgain() {
    this.again ||= this.validate().catch(() => { this.revalidate = false; })
      .finally(() => { this.again = null; });
    return this.again;
  }

  /** POST /api/mte-pair for `count` fresh pairs; a 409 is answered once with new ids. */
  async makePairs(clientId, count) {
    for (let attempt = 0; attempt < 2; attempt++) {
      const requests = [];
      for (let i = 0; i < count; i++) requests.push(await makePairRequest(newPairId()));
      const response = await this.fetch(`${this.base}/api/mte-pair`, {
        method: 'POST',
        headers: { 'x-mte-relay': clientId, 'content-type': 'application/json' },
        body: JSON.stringify(requests.map((r) => r.entry)),
      });
      if (response.status === 409 && attempt === 0) {
        await response.body?.cancel();
        continue;
      }
      if (response.status !== 200) {
        const error = await relayErrorFrom(response);
        if (![400, 405, 409, 413, 429, 500, 503, 566, 567, 569].includes(response.status)) {
          error.code = 503; // not a relay answer (a proxy): as 503, section 10.3
        }
        throw error;
      }
      let answer;
      try {
        answer = await response.json();
      } catch {
        answer = null;
      }
      if (!Array.isArray(answer) || answer.length !== requests.length) {
        throw new MteRelayError(562, 'Pairing answer malformed', { reason: 'not an array of the batch size' });
      }
      const uuid = clientUuid(clientId);
      const keys = [];
      for (let i = 0; i < requests.length; i++) {
        const k = await completePairing(uuid, requests[i].secrets, answer[i]);
        if (!k) throw new MteRelayError(562, 'Pairing answer malformed', { reason: `entry ${i}` });
        keys.push(k);
      }
      return keys;
    }
    throw new MteRelayError(409, 'Pair id in use');
  }

  /** The relay refused the client id (566): forget it and every pair (section 10.4). */
  forgetClient(clientId) {
    if (this.ids.get() === clientId) this.ids.remove();
    return this.pool.forgetClient(clientId);
  }
}
