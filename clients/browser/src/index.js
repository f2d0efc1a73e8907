// Public API of the browser client, named as in the product it replaces:
// initMteRelayClient(options) once per relay origin, then mteFetch(input, init?,
// mteOptions?) wherever fetch would be called.

import { MteRelayError } from './errors.js';
import { relayFetch } from './fetch.js';
import { RelayOrigin } from './relay.js';
import { checkStorage, defaultStorage, memoryStorage } from './storage.js';

const relays = new Map();

function checkOptions(options) {
  if (!options || typeof options !== 'object') throw new TypeError('initMteRelayClient: options object required');
  const relayUrl = options.relayUrl ?? options.origin;
  if (typeof relayUrl !== 'string') throw new TypeError('initMteRelayClient: relayUrl (string) required');
  const base = typeof location !== 'undefined' ? location.href : undefined;
  const url = new URL(relayUrl, base); // TypeError for a bad URL, as fetch
  const numberOfPairs = options.numberOfPairs ?? 5;
  if (!Number.isInteger(numberOfPairs) || numberOfPairs < 1 || numberOfPairs > 64) {
    throw new TypeError('initMteRelayClient: numberOfPairs must be an integer 1..64');
  }
  const encodeType = options.encodeType ?? 'MKE';
  if (encodeType !== 'MKE' && encodeType !== 'MTE') throw new TypeError('initMteRelayClient: encodeType must be "MKE" or "MTE"');
  const encodeHeaders = options.encodeHeaders ?? true;
  if (typeof encodeHeaders !== 'boolean' && !(Array.isArray(encodeHeaders) && encodeHeaders.every((n) => typeof n === 'string'))) {
    throw new TypeError('initMteRelayClient: encodeHeaders must be true, false or a list of header names');
  }
  let pathPrefix = options.pathPrefix ?? '';
  if (typeof pathPrefix !== 'string' || (pathPrefix && !/^\/[\x21-\x7e]*$/.test(pathPrefix))) {
    throw new TypeError('initMteRelayClient: pathPrefix must start with "/"');
  }
  pathPrefix = pathPrefix.replace(/\/+$/, '');
  const fixedPath = options.fixedPath ?? true;
  if (typeof fixedPath !== 'boolean') throw new TypeError('initMteRelayClient: fixedPath must be a boolean');
  const fetchImpl = options.fetch ?? globalThis.fetch;
  if (typeof fetchImpl !== 'function') throw new TypeError('initMteRelayClient: no fetch available');
  return {
    origin: url.origin,
    numberOfPairs,
    encodeType,
    encodeUrls: options.encodeUrls ?? true,
    encodeHeaders,
    pathPrefix,
    fixedPath,
    useStreaming: options.useStreaming ?? true,
    storage: checkStorage(options.storage ?? defaultStorage()),
    fetch: (...args) => fetchImpl(...args),
  };
}

/**
 * Register a relay origin (several may be registered in one page). Validates and
 * pairs in the background; resolves once the first pairs are ready, so a caller
 * may await it or not.
 */
export async function initMteRelayClient(options) {
  const checked = checkOptions(options);
  let relay = relays.get(checked.origin);
  if (!relay || options.replace) {
    relay = new RelayOrigin(checked);
    relays.set(checked.origin, relay);
  }
  const lease = await relay.pool.acquire(0);
  // The lease's seq is simply skipped: seqs need only be unique, not dense.
  return { origin: checked.origin, clientId: lease.clientId, records: relay.records };
}

/** fetch(input, init) through the relay of the URL's origin; see relayFetch. */
export function mteFetch(input, init = undefined, mteOptions = undefined) {
  return relayFetch((origin) => relays.get(origin), input, init, mteOptions || {});
}

/** Forget one origin's client (or every one): its pairs are dropped, the id stays stored. */
export function closeMteRelayClient(origin = null) {
  if (origin === null) relays.clear();
  else relays.delete(new URL(origin).origin);
}

export { MteRelayError, memoryStorage };
