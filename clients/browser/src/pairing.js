// Pairing of docs/protocol.md section 4: per direction an X25519 key pair (WebCrypto)
// and an ML-KEM-768 key pair (@noble/post-quantum), combined by HKDF-SHA256 over both
// shared secrets with the SHA-256 of the whole transcript as salt, so a break of
// either primitive alone, or any change to the exchange, yields unrelated keys.

import { ml_kem768 } from '@noble/post-quantum/ml-kem.js';
import { ascii, b64urlDecode, b64urlEncode, concat, hexDecode, lp32, u16 } from './encoding.js';
import { importAesKey } from './sealing.js';

const DIRECTIONS = ['c2s', 's2c'];
const PKCS8_X25519 = hexDecode('302e020100300506032b656e04220420');

function randomBytes(n) {
  return crypto.getRandomValues(new Uint8Array(n));
}

/** A fresh pair id: base64url of 16 random bytes (section 4). */
export function newPairId() {
  return b64urlEncode(randomBytes(16));
}

async function x25519KeyPair(privateRaw) {
  const subtle = crypto.subtle;
  if (!privateRaw) {
    const pair = await subtle.generateKey({ name: 'X25519' }, false, ['deriveBits']);
    const pub = new Uint8Array(await subtle.exportKey('raw', pair.publicKey));
    return { privateKey: pair.privateKey, publicRaw: pub };
  }
  // Injected secrets (test vectors): the public key is read from the JWK form.
  const key = await subtle.importKey('pkcs8', concat(PKCS8_X25519, privateRaw), { name: 'X25519' },
    true, ['deriveBits']);
  const jwk = await subtle.exportKey('jwk', key);
  return { privateKey: key, publicRaw: b64urlDecode(jwk.x) };
}

/**
 * Build one pair request entry. `inputs` (tests only) injects the randomness the
 * vectors fix: {c2s: {x25519Private, mlkemSeed, personalization}, s2c: ...}.
 */
export async function makePairRequest(pairId, inputs = null) {
  const entry = { version: 1, pairId };
  const secrets = { pairId, dirs: {} };
  for (const d of DIRECTIONS) {
    const given = inputs ? inputs[d] : null;
    const x = await x25519KeyPair(given ? given.x25519Private : null);
    const kem = ml_kem768.keygen(given ? given.mlkemSeed : randomBytes(64));
    const personalization = given ? given.personalization : randomBytes(32);
    entry[d] = {
      x25519: b64urlEncode(x.publicRaw),
      mlkem768: b64urlEncode(kem.publicKey),
      personalization: b64urlEncode(personalization),
    };
    secrets.dirs[d] = { x25519: x, mlkemSecret: kem.secretKey, mlkemPublic: kem.publicKey, personalization };
  }
  return { entry, secrets };
}

const SIZES = { x25519: 32, mlkem768: 1088, nonce: 32 };

function sameKeys(obj, keys) {
  const got = Object.keys(obj).sort();
  return got.length === keys.length && keys.slice().sort().every((k, i) => k === got[i]);
}

/** Section 4.2 checks of one answer entry; returns decoded bytes or null. */
export function checkPairResponse(entry, pairId) {
  if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) return null;
  if (!sameKeys(entry, ['version', 'pairId', 'c2s', 's2c'])) return null;
  if (entry.version !== 1 || entry.pairId !== pairId) return null;
  const out = {};
  for (const d of DIRECTIONS) {
    const v = entry[d];
    if (v === null || typeof v !== 'object' || Array.isArray(v)) return null;
    if (!sameKeys(v, ['x25519', 'mlkem768', 'nonce'])) return null;
    out[d] = {};
    for (const [k, size] of Object.entries(SIZES)) {
      const bytes = b64urlDecode(v[k]);
      if (bytes === null || bytes.length !== size) return null;
      out[d][k] = bytes;
    }
  }
  return out;
}

/** Transcript T of section 4.3. */
export function transcript(clientUuidText, pairId, secrets, answer) {
  const parts = [lp32(ascii('mterelay pairing')), lp32(u16(1)), lp32(ascii(clientUuidText)),
    lp32(ascii(pairId))];
  for (const d of DIRECTIONS) {
    const s = secrets.dirs[d];
    parts.push(lp32(ascii(d)), lp32(s.x25519.publicRaw), lp32(s.mlkemPublic),
      lp32(s.personalization), lp32(answer[d].x25519), lp32(answer[d].mlkem768),
      lp32(answer[d].nonce));
  }
  return concat(...parts);
}

/**
 * Finish a pairing from the relay's answer entry. Resolves {pairId, c2s, s2c} with
 * AES-GCM CryptoKeys (non-extractable unless `extractable`, for the vectors), or null
 * when the answer fails the section 4.2 checks.
 */
export async function completePairing(clientUuidText, secrets, responseEntry, { extractable = false, trace = null } = {}) {
  const answer = checkPairResponse(responseEntry, secrets.pairId);
  if (!answer) return null;
  const subtle = crypto.subtle;
  const t = transcript(clientUuidText, secrets.pairId, secrets, answer);
  const salt = new Uint8Array(await subtle.digest('SHA-256', t));
  const keys = { pairId: secrets.pairId };
  for (const d of DIRECTIONS) {
    const s = secrets.dirs[d];
    let ssX;
    try {
      const relayPub = await subtle.importKey('raw', answer[d].x25519, { name: 'X25519' }, true, []);
      ssX = new Uint8Array(await subtle.deriveBits({ name: 'X25519', public: relayPub },
        s.x25519.privateKey, 256));
    } catch {
      return null; // WebCrypto refuses a low-order point (an all-zero shared secret)
    }
    if (ssX.every((b) => b === 0)) return null;
    const ssK = ml_kem768.decapsulate(answer[d].mlkem768, s.mlkemSecret);
    const ikm = await subtle.importKey('raw', concat(ssK, ssX), 'HKDF', false, ['deriveBits']);
    const raw = new Uint8Array(await subtle.deriveBits(
      { name: 'HKDF', hash: 'SHA-256', salt, info: ascii(`mterelay ${d}`) }, ikm, 256));
    keys[d] = await importAesKey(raw, extractable);
    if (trace) trace[d] = { x25519Shared: ssX.slice(), mlkemShared: ssK.slice(), key: raw.slice() };
    raw.fill(0);
    ssX.fill(0);
    ssK.fill(0);
  }
  if (trace) {
    trace.transcript = t;
    trace.salt = salt;
  }
  return keys;
}
