// Body framings of docs/protocol.md section 7: MTE (one item), MKE (fixed 64 KiB
// chunks) and MKR (length-prefixed records). Openers are incremental: each chunk or
// record is released the moment it authenticates, and nothing is released before it
// did, so a tampered stream errors instead of yielding forged bytes.

import { concat, u32 } from './encoding.js';
import { decodeFailed } from './errors.js';
import { KIND_BODY, openItem, sealItem } from './sealing.js';

export const CHUNK = 65536;
export const SEALED_CHUNK = CHUNK + 16;
export const MAX_MTE = 2 ** 30;

/** Sealed length of an n-byte body (section 7.1). */
export function sealedLength(mode, n) {
  if (mode === 'MTE') return n + 16;
  return n + 16 * Math.max(1, Math.ceil(n / CHUNK));
}

/** The inverse of sealedLength; null for impossible lengths. */
export function plainLength(mode, sealed) {
  if (mode === 'MTE') return sealed >= 16 ? sealed - 16 : null;
  if (sealed < 16) return null;
  const full = Math.floor(sealed / SEALED_CHUNK);
  const rest = sealed - full * SEALED_CHUNK;
  if (rest === 0) return full === 0 ? null : full * CHUNK;
  if (rest < 16 || (rest === 16 && full > 0)) return null;
  return full * CHUNK + rest - 16;
}

/** Seal a whole body held in memory in the given framing. */
export async function sealBody(key, header, direction, plaintext) {
  const mode = header.mode;
  if (mode === 'MTE') {
    if (plaintext.length > MAX_MTE) throw new RangeError('MTE body above 2^30 bytes');
    return sealItem(key, header, direction, KIND_BODY, 2, true, plaintext);
  }
  const parts = [];
  const count = Math.max(1, Math.ceil(plaintext.length / CHUNK));
  for (let i = 0; i < count; i++) {
    const piece = plaintext.subarray(i * CHUNK, (i + 1) * CHUNK);
    const final = i === count - 1;
    const sealed = await sealItem(key, header, direction, KIND_BODY, 2 + i, final, piece);
    parts.push(mode === 'MKR' ? concat(recordPrefix(final, piece.length), sealed) : sealed);
  }
  return concat(...parts);
}

export function recordPrefix(final, n) {
  return u32((final ? 0x80000000 : 0) + n);
}

/** Seals records one by one for a body whose end is known only when it comes. */
export class RecordSealer {
  constructor(key, header, direction) {
    this.key = key;
    this.header = header;
    this.direction = direction;
    this.index = 0;
    this.done = false;
  }

  /** Seal `data` (any length) as records; `final` closes the body. */
  async seal(data, final) {
    if (this.done) throw new Error('record body already final');
    const out = [];
    let offset = 0;
    do {
      const piece = data.subarray(offset, offset + CHUNK);
      offset += piece.length;
      const last = final && offset >= data.length;
      if (piece.length === 0 && !last) break;
      const sealed = await sealItem(this.key, this.header, this.direction, KIND_BODY,
        2 + this.index, last, piece);
      this.index += 1;
      out.push(recordPrefix(last, piece.length), sealed);
    } while (offset < data.length);
    if (final) this.done = true;
    return concat(...out);
  }
}

class Buffer {
  constructor() {
    this.parts = [];
    this.length = 0;
  }

  push(bytes) {
    if (bytes.length) {
      this.parts.push(bytes);
      this.length += bytes.length;
    }
  }

  take(n) {
    const out = new Uint8Array(n);
    let o = 0;
    while (o < n) {
      const head = this.parts[0];
      const k = Math.min(head.length, n - o);
      out.set(head.subarray(0, k), o);
      o += k;
      if (k === head.length) this.parts.shift();
      else this.parts[0] = head.subarray(k);
    }
    this.length -= n;
    return out;
  }

  peek(n) {
    const saved = this.parts.slice();
    const savedLength = this.length;
    const out = this.take(n);
    this.parts = saved;
    this.length = savedLength;
    return out;
  }
}

/**
 * Incremental opener of one sealed body. `push(bytes)` and `end()` resolve to the
 * plaintext pieces that authenticated; any failure rejects with a local 562 and every
 * later call fails too.
 */
export class BodyOpener {
  constructor(key, header, direction, { declaredLength = null } = {}) {
    this.key = key;
    this.header = header;
    this.direction = direction;
    this.mode = header.mode;
    this.buffer = new Buffer();
    this.index = 0;
    this.complete = false;
    this.failed = null;
    this.released = 0;
    this.declaredLength = this.mode === 'MKR' ? declaredLength : null;
  }

  fail(reason) {
    this.failed = decodeFailed(reason);
    throw this.failed;
  }

  async open(sealed, final) {
    const plain = await openItem(this.key, this.header, this.direction, KIND_BODY,
      2 + this.index, final, sealed);
    if (plain === null) this.fail(`body item ${this.index} did not authenticate`);
    this.index += 1;
    this.released += plain.length;
    if (this.declaredLength !== null && this.released > this.declaredLength) {
      this.fail('body longer than its declared length');
    }
    return plain;
  }

  async push(bytes) {
    if (this.failed) throw this.failed;
    if (this.complete) {
      if (bytes.length) this.fail('trailing bytes after the final item');
      return [];
    }
    this.buffer.push(bytes);
    const out = [];
    if (this.mode === 'MTE') {
      if (this.buffer.length > MAX_MTE + 16) this.fail('MTE body too large');
      return out;
    }
    if (this.mode === 'MKE') {
      while (this.buffer.length > SEALED_CHUNK) {
        out.push(await this.open(this.buffer.take(SEALED_CHUNK), false));
      }
      return out;
    }
    while (!this.complete && this.buffer.length >= 4) {
      const prefix = this.buffer.peek(4);
      const word = ((prefix[0] << 24) >>> 0) + (prefix[1] << 16) + (prefix[2] << 8) + prefix[3];
      const final = word >= 0x80000000;
      const n = word & 0x7fffffff;
      if (n > CHUNK) this.fail('oversize record length');
      if (n === 0 && !final) this.fail('empty non-final record');
      if (this.buffer.length < 4 + n + 16) break;
      this.buffer.take(4);
      const plain = await this.open(this.buffer.take(n + 16), final);
      if (final) {
        this.complete = true;
        if (this.declaredLength !== null && this.released !== this.declaredLength) {
          this.fail('body shorter than its declared length');
        }
      }
      out.push(plain);
    }
    if (this.complete && this.buffer.length) this.fail('trailing bytes after the final record');
    return out;
  }

  async end() {
    if (this.failed) throw this.failed;
    if (this.complete) return [];
    if (this.mode === 'MKR') this.fail('record body truncated');
    if (this.buffer.length < 16) this.fail('body truncated');
    if (this.mode === 'MKE' && this.buffer.length === 16 && this.index > 0) {
      this.fail('empty final chunk after data');
    }
    const plain = await this.open(this.buffer.take(this.buffer.length), true);
    this.complete = true;
    return [plain];
  }
}
