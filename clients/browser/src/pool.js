// Per-origin pairs (docs/protocol.md sections 9, 10): one pairing batch in flight
// per origin, pairs shared round-robin by concurrent requests, every lease taking the
// pair's next seq (never reused, even after a failure: a reused seq is a reused
// AES-GCM nonce). A retry waits for a pair of a batch started after its failure, so a
// restarted relay's dead pairs are not tried again. A 429 holds pairing until its
// Retry-After has passed, while pairs already held keep being used.

import { MAX_SEQ } from './header.js';

export class PairPool {
  /**
   * @param {{size: number, validate: () => Promise<string>,
   *   makePairs: (clientId: string, count: number) => Promise<object[]>,
   *   now?: () => number, maxSeq?: number}} options
   */
  constructor({ size, validate, makePairs, now = () => Date.now(), maxSeq = MAX_SEQ }) {
    if (!Number.isInteger(size) || size < 1 || size > 64) {
      throw new RangeError('numberOfPairs must be an integer 1..64');
    }
    this.size = size;
    this.validate = validate;
    this.makePairs = makePairs;
    this.now = now;
    this.maxSeq = maxSeq;
    this.clientId = null;
    this.pairs = [];
    this.batches = 0;
    this.pairing = false;
    this.waiters = [];
    this.turn = 0;
    this.holdUntil = 0;
    this.hold = null;
  }

  /** A lease {pair, seq, clientId} on a pair from a batch numbered above `after`. */
  acquire(after = 0, signal = null) {
    const lease = this.lease(after);
    const held = this.held();
    if (lease) {
      if (this.pairs.length < this.size && !this.pairing && !held) this.startBatch();
      return Promise.resolve(lease);
    }
    if (held) return Promise.reject(held);
    return new Promise((resolve, reject) => {
      const waiter = { after, resolve, reject };
      if (signal) {
        if (signal.aborted) { reject(signal.reason); return; }
        signal.addEventListener('abort', () => {
          this.waiters = this.waiters.filter((w) => w !== waiter);
          reject(signal.reason);
        }, { once: true });
      }
      this.waiters.push(waiter);
      if (!this.pairing) this.startBatch();
    });
  }

  lease(after) {
    const usable = this.pairs.filter((p) => p.batch > after);
    if (usable.length === 0) return null;
    this.turn += 1;
    const pair = usable[this.turn % usable.length];
    const seq = pair.nextSeq;
    pair.nextSeq += 1;
    if (pair.nextSeq > this.maxSeq) this.pairs = this.pairs.filter((p) => p !== pair);
    return { pair, seq, clientId: pair.clientId };
  }

  /** Forget a pair the relay refused; returns the mark a retry passes to acquire(). */
  drop(pair) {
    this.pairs = this.pairs.filter((p) => p !== pair);
    return this.batches;
  }

  /** The relay refused `clientId` (566): drop it and every pair bound to it. */
  forgetClient(clientId) {
    if (this.clientId === clientId) {
      this.clientId = null;
      this.pairs = [];
    }
    return this.batches;
  }

  held() {
    if (this.hold && this.now() < this.holdUntil) return this.hold;
    this.hold = null;
    return null;
  }

  async client() {
    if (this.clientId !== null) return this.clientId;
    this.clientId = await this.validate();
    return this.clientId;
  }

  startBatch() {
    this.batches += 1;
    const batch = this.batches;
    this.pairing = true;
    const count = Math.max(1, this.size - this.pairs.length);
    let used = null;
    const run = async () => {
      used = await this.client();
      return this.makePairs(used, count);
    };
    run().then((keys) => this.batchDone(null, keys, batch, used),
      (error) => this.batchDone(error, null, batch, used));
  }

  batchDone(error, keys, batch, clientId) {
    this.pairing = false;
    if (error) {
      if (error.code === 566 && clientId) this.forgetClient(clientId);
      if (error.retryAfter) {
        this.hold = error;
        this.holdUntil = this.now() + error.retryAfter * 1000;
      }
      const failed = this.waiters.filter((w) => w.after < batch);
      this.waiters = this.waiters.filter((w) => w.after >= batch);
      for (const w of failed) w.reject(error);
    } else if (clientId && clientId === this.clientId) {
      for (const k of keys) this.pairs.push({ keys: k, clientId, batch, nextSeq: 0 });
    }
    this.serve();
    if (this.waiters.length && !this.pairing) {
      const held = this.held();
      if (!held) {
        this.startBatch();
        return;
      }
      const waiters = this.waiters;
      this.waiters = [];
      for (const w of waiters) w.reject(held);
    }
  }

  serve() {
    const still = [];
    for (const w of this.waiters) {
      const lease = this.lease(w.after);
      if (lease) w.resolve(lease);
      else still.push(w);
    }
    this.waiters = still;
  }
}
