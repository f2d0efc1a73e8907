// Item sealing of docs/protocol.md section 6: AES-256-GCM (WebCrypto), nonce =
// u64(seq) || u32(index), and an AAD that binds version, direction, kind, final flag,
// the flags byte of this message's header, seq and pair id, so no item can be moved
// between messages, directions, pairs or positions.

import { ascii, concat, lp32, lp8, u16, u32, u64, u8, toBytes } from './encoding.js';
import { flagsByte } from './header.js';

export const VERSION = 1;
export const C2S = 1;
export const S2C = 2;
export const KIND_URL = 1;
export const KIND_HEADERS = 2;
export const KIND_BODY = 3;
const MAGIC = ascii('mterelay');

export function nonce(seq, index) {
  return concat(u64(seq), u32(index));
}

/** AAD of section 6.1 for one item; `binding` only for the headers item. */
export function aad(header, direction, kind, final, binding = new Uint8Array(0)) {
  return concat(MAGIC, u16(VERSION), u8(direction), u8(kind), u8(final ? 1 : 0),
    u8(flagsByte(header)), u64(header.seq), lp8(ascii(header.pairId)), binding);
}

export function requestBinding(method, hasBody, target) {
  return concat(lp8(ascii(method)), u8(hasBody ? 1 : 0), lp32(ascii(target)));
}

export function responseBinding(status) {
  return u16(status);
}

export async function sealRaw(key, nonceBytes, aadBytes, plaintext) {
  const out = await crypto.subtle.encrypt(
    { name: 'AES-GCM', iv: nonceBytes, additionalData: aadBytes, tagLength: 128 }, key,
    toBytes(plaintext));
  return new Uint8Array(out);
}

/** Open one item; resolves null when the tag does not authenticate. */
export async function openRaw(key, nonceBytes, aadBytes, sealed) {
  if (sealed.length < 16) return null;
  try {
    const out = await crypto.subtle.decrypt(
      { name: 'AES-GCM', iv: nonceBytes, additionalData: aadBytes, tagLength: 128 }, key, sealed);
    return new Uint8Array(out);
  } catch {
    return null;
  }
}

export function sealItem(key, header, direction, kind, index, final, plaintext, binding) {
  return sealRaw(key, nonce(header.seq, index), aad(header, direction, kind, final, binding), plaintext);
}

export function openItem(key, header, direction, kind, index, final, sealed, binding) {
  return openRaw(key, nonce(header.seq, index), aad(header, direction, kind, final, binding), sealed);
}

export function importAesKey(raw, extractable = false) {
  return crypto.subtle.importKey('raw', raw, { name: 'AES-GCM' }, extractable, ['encrypt', 'decrypt']);
}
