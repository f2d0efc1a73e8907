// The typed error of the client. A relay error carries its code and whether the
// request may have reached the upstream, so a caller can decide whether a resend is
// safe (docs/protocol.md section 10.2); a local failure to authenticate is code 562
// with upstreamReached "maybe".

export const RELAY_MESSAGES = {
  559: 'Repair is required.',
  560: 'State not found.',
  561: 'Failed to encode.',
  562: 'Failed to decode.',
  563: 'Failed to get state from encoder or decoder.',
  564: 'DRBG reseed is required.',
  565: 'MTE Status was not successful.',
  566: 'Invalid Client ID header.',
  567: 'Unsupported protocol version.',
  568: 'Malformed relay header.',
  569: 'Missing required header.',
};

export class MteRelayError extends Error {
  /**
   * @param {number} code relay status code (55x, or the status of a failed handshake)
   * @param {string} message
   * @param {{upstreamReached?: 'no'|'maybe', reason?: string, status?: number, body?: unknown, local?: boolean}} [details]
   */
  constructor(code, message, details = {}) {
    super(message || RELAY_MESSAGES[code] || `Relay error ${code}`);
    this.name = 'MteRelayError';
    this.code = code;
    this.upstreamReached = details.upstreamReached || 'no';
    this.forwarded = this.upstreamReached !== 'no';
    this.reason = details.reason;
    this.status = details.status ?? code;
    this.body = details.body;
    this.local = Boolean(details.local);
  }
}

/** A local authentication failure (section 10.5): the upstream may have run the request. */
export function decodeFailed(reason) {
  return new MteRelayError(562, RELAY_MESSAGES[562], {
    upstreamReached: 'maybe', reason, local: true,
  });
}
