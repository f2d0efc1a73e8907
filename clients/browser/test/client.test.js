// Unit tests of the pool, the storage and the resend rules (docs/protocol.md 9, 10),
// against the scripted relay of fakerelay.js.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeRelay } from './fakerelay.js';
import { RelayOrigin } from '../src/relay.js';
import { relayFetch } from '../src/fetch.js';
import { PairPool } from '../src/pool.js';
import { memoryStorage, defaultStorage, STORAGE_PREFIX } from '../src/storage.js';
import { decodeHeadersItem } from '../src/headersitem.js';
import { MteRelayError } from '../src/errors.js';
import { initMteRelayClient } from '../src/index.js';

const ORIGIN = 'http://relay.test';

function setup({ records = true, numberOfPairs = 2, storage = memoryStorage(), encodeType = 'MKE', encodeHeaders = true,
  fixedPath = null, acceptsFixedPath = true, pathPrefix = '', clientFixedPath = true } = {}) {
  const fake = new FakeRelay({ records, fixedPath, acceptsFixedPath, prefix: pathPrefix });
  const relay = new RelayOrigin({ origin: ORIGIN, pathPrefix, numberOfPairs, encodeType, encodeUrls: true,
    encodeHeaders, useStreaming: true, storage, fetch: fake.fetch, fixedPath: clientFixedPath });
  const f = (input, init, mte) => relayFetch((o) => (o === ORIGIN ? relay : null), input, init, mte || {});
  return { fake, relay, f, storage };
}

const pairings = (fake) => fake.log.filter((e) => e.path === '/api/mte-pair').length;
const messages = (fake) => fake.log.filter((e) => e.relayHeader);

test('headers item: lowercase token names with "-" are accepted (content-type)', () => {
  const ok = decodeHeadersItem(new TextEncoder().encode('{"content-type":["text/plain"],"x-a":[""]}'));
  assert.deepEqual(ok, { 'content-type': ['text/plain'], 'x-a': [''] });
  for (const bad of ['{"Content-Type":["a"]}', '{"a":[]}', '{"a":["\\n"]}', '[]', 'null', '{"a":"b"}', '{"a":[1]}']) {
    assert.equal(decodeHeadersItem(new TextEncoder().encode(bad)), null, bad);
  }
  assert.equal(decodeHeadersItem(Uint8Array.of(0x7b, 0xff, 0x7d)), null);
});

test('pool: one pairing in flight, concurrent requests share pairs, seqs never repeat', async () => {
  const { fake, f } = setup({ numberOfPairs: 3 });
  const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => f(`${ORIGIN}/n/${i}`).then((r) => r.json())));
  answers.forEach((a, i) => assert.equal(a.url, `/n/${i}`));
  assert.equal(pairings(fake), 1);
  assert.equal(fake.log.filter((e) => e.path === '/api/mte-relay').length, 1);
  const used = messages(fake).map((e) => `${e.relayHeader.pairId}/${e.relayHeader.seq}`);
  assert.equal(new Set(used).size, used.length);
  assert.equal(new Set(messages(fake).map((e) => e.relayHeader.pairId)).size, 3);
});

test('pool: a dropped pair is replaced only by a batch started after the drop', async () => {
  let batches = 0;
  const pool = new PairPool({ size: 1, validate: async () => 'id', makePairs: async (_id, n) => { batches += 1; return Array.from({ length: n }, (_, i) => ({ pairId: `b${batches}-${i}` })); } });
  const first = await pool.acquire(0);
  assert.equal(first.seq, 0);
  assert.equal((await pool.acquire(0)).seq, 1);
  const mark = pool.drop(first.pair);
  const next = await pool.acquire(mark);
  assert.equal(next.pair.keys.pairId, 'b2-0');
  assert.equal(next.seq, 0);
});

test('pool: a pair whose seq space is used up is replaced', async () => {
  let n = 0;
  const pool = new PairPool({ size: 1, maxSeq: 2, validate: async () => 'id', makePairs: async () => [{ pairId: `p${n++}` }] });
  const seen = [];
  for (let i = 0; i < 5; i++) { const l = await pool.acquire(0); seen.push(`${l.pair.keys.pairId}:${l.seq}`); }
  assert.deepEqual(seen, ['p0:0', 'p0:1', 'p0:2', 'p1:0', 'p1:1']);
});

test('pool: a 429 holds pairing until Retry-After, held pairs keep serving', async () => {
  let now = 0;
  let calls = 0;
  const pool = new PairPool({ size: 2, now: () => now, validate: async () => 'id', makePairs: async () => {
    calls += 1;
    const e = new MteRelayError(429, 'Too many pairings'); e.retryAfter = 5; throw e;
  } });
  await assert.rejects(pool.acquire(0), (e) => e.code === 429);
  await assert.rejects(pool.acquire(0), (e) => e.code === 429);
  assert.equal(calls, 1);
  now = 6000;
  await assert.rejects(pool.acquire(0), (e) => e.code === 429);
  assert.equal(calls, 2);
});

test('pool: numberOfPairs outside 1..64 is refused', () => {
  assert.throws(() => new PairPool({ size: 0 }), RangeError);
  assert.throws(() => new PairPool({ size: 65 }), RangeError);
});

test('storage: the client id is kept per origin and presented again', async () => {
  const storage = memoryStorage();
  const a = setup({ storage });
  await (await a.f(`${ORIGIN}/x`)).text();
  const stored = storage.getItem(STORAGE_PREFIX + ORIGIN);
  assert.match(stored, /\.[0-9a-f]{64}$/);
  const b = setup({ storage });
  b.fake.validIds.add(stored);
  await (await b.f(`${ORIGIN}/x`)).text();
  const head = b.fake.log.find((e) => e.path === '/api/mte-relay');
  assert.equal(head.headers.get('x-mte-relay'), stored);
  assert.equal(storage.getItem(STORAGE_PREFIX + ORIGIN), stored);
  assert.equal(typeof defaultStorage().getItem, 'function'); // memory in Node
  await assert.rejects(initMteRelayClient({ relayUrl: ORIGIN, storage: {} }), TypeError);
});

test('storage: a stored id the relay refuses (566) is dropped and a new one asked without it', async () => {
  const storage = memoryStorage();
  storage.setItem(STORAGE_PREFIX + ORIGIN, `${'0'.repeat(8)}-0000-4000-8000-${'9'.repeat(12)}.${'b'.repeat(64)}`);
  const { fake, f } = setup({ storage });
  await (await f(`${ORIGIN}/x`)).text();
  const heads = fake.log.filter((e) => e.path === '/api/mte-relay');
  assert.equal(heads.length, 2);
  assert.equal(heads[1].headers.get('x-mte-relay'), null);
  assert.notEqual(storage.getItem(STORAGE_PREFIX + ORIGIN), heads[0].headers.get('x-mte-relay'));
});

test('resend: 560 on a POST re-pairs and resends once, on a new pair from seq 0', async () => {
  const { fake, f } = setup();
  await (await f(`${ORIGIN}/warm`)).text();
  fake.script.push({ status: 560, body: { upstreamReached: 'no' } });
  const r = await f(`${ORIGIN}/p`, { method: 'POST', body: 'hello' });
  assert.equal((await r.json()).body, 'hello');
  const [failed, resent] = messages(fake).slice(-2);
  assert.notEqual(failed.relayHeader.pairId, resent.relayHeader.pairId);
  assert.equal(resent.relayHeader.seq, 0);
  assert.equal(pairings(fake), 2);
});

test('resend: a second relay error after the resend fails the request', async () => {
  const { fake, f } = setup();
  fake.script.push({ status: 559, body: { upstreamReached: 'no' } }, { status: 560, body: { upstreamReached: 'no' } });
  await assert.rejects(f(`${ORIGIN}/p`, { method: 'POST', body: 'x' }), (e) => e instanceof MteRelayError && e.code === 560);
  assert.equal(messages(fake).length, 2);
});

test('resend: 562 "maybe" on a POST fails (never sent twice), on a PUT resends', async () => {
  const { fake, f } = setup();
  fake.script.push({ status: 562, body: { upstreamReached: 'maybe' } });
  await assert.rejects(f(`${ORIGIN}/p`, { method: 'POST', body: 'x' }),
    (e) => e.code === 562 && e.upstreamReached === 'maybe' && e.forwarded === true);
  assert.equal(messages(fake).length, 1);
  fake.script.push({ status: 562, body: { upstreamReached: 'maybe' } });
  const r = await f(`${ORIGIN}/p`, { method: 'PUT', body: 'y' });
  assert.equal((await r.json()).body, 'y');
  assert.equal(messages(fake).length, 3);
});

test('resend: 562 from a relay that says nothing, MKE body: "maybe", so a POST fails', async () => {
  const { fake, f } = setup({ records: false });
  fake.script.push({ status: 562, body: {} });
  await assert.rejects(f(`${ORIGIN}/p`, { method: 'POST', body: 'x' }), (e) => e.code === 562 && e.upstreamReached === 'maybe');
  assert.equal(messages(fake).at(-1).relayHeader.mode, 'MKE');
  fake.script.push({ status: 562, body: {}, headers: { 'x-mte-upstream-reached': 'no' } });
  const r = await f(`${ORIGIN}/p`, { method: 'POST', body: 'z' });
  assert.equal((await r.json()).body, 'z');
});

test('resend: 566 drops the id and every pair, validates without it, resends once', async () => {
  const { fake, f, storage } = setup();
  await (await f(`${ORIGIN}/warm`)).text();
  const oldId = storage.getItem(STORAGE_PREFIX + ORIGIN);
  fake.validIds.delete(oldId);
  fake.script.push({ status: 566, body: { upstreamReached: 'no' } });
  const r = await f(`${ORIGIN}/p`, { method: 'POST', body: 'again' });
  assert.equal((await r.json()).body, 'again');
  const heads = fake.log.filter((e) => e.path === '/api/mte-relay');
  assert.equal(heads.length, 2);
  assert.equal(heads[1].headers.get('x-mte-relay'), null);
  const newId = storage.getItem(STORAGE_PREFIX + ORIGIN);
  assert.notEqual(newId, oldId);
  assert.equal(messages(fake).at(-1).relayHeader.clientId, newId);
});

test('resend: 561, 567, 568, 569 and 400 fail at once', async () => {
  for (const status of [561, 567, 568, 569, 400]) {
    const { fake, f } = setup({ records: false });
    fake.script.push({ status, body: { upstreamReached: 'no' } });
    await assert.rejects(f(`${ORIGIN}/g`), (e) => e instanceof MteRelayError && e.code === status);
    assert.equal(messages(fake).length, 1, String(status));
  }
});

test('resend: 568 to an MKR request is resent once with fixed framing', async () => {
  const { fake, f } = setup({ records: true });
  await (await f(`${ORIGIN}/warm`)).text();
  fake.script.push({ status: 568, body: { upstreamReached: 'no' } });
  const r = await f(`${ORIGIN}/p`, { method: 'POST', body: 'fixed' });
  assert.equal((await r.json()).body, 'fixed');
  const [first, second] = messages(fake).slice(-2);
  assert.equal(first.relayHeader.mode, 'MKR');
  assert.equal(second.relayHeader.mode, 'MKE');
  assert.equal(second.relayHeader.streaming, 1);
});

test('resend: a streamed request body is never resent', async () => {
  const { fake, f } = setup();
  await (await f(`${ORIGIN}/warm`)).text();
  fake.script.push({ status: 560, body: { upstreamReached: 'no' } });
  const body = new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode('stream')); c.close(); } });
  await assert.rejects(f(`${ORIGIN}/s`, { method: 'POST', body, duplex: 'half' }), (e) => e.code === 560);
  assert.equal(messages(fake).length, 2);
  const r = await f(`${ORIGIN}/s`, { method: 'POST', body: new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode('streamed')); c.close(); } }), duplex: 'half' });
  assert.equal((await r.json()).body, 'streamed');
  assert.equal(messages(fake).at(-1).relayHeader.mode, 'MKR');
});

test('a tampered answer body errors the stream and is never resent', async () => {
  const { fake, f } = setup();
  fake.script.push({ tamper: (b) => { const c = b.slice(); c[c.length - 1] ^= 1; return c; } });
  const r = await f(`${ORIGIN}/t`, { method: 'POST', body: 'once' });
  await assert.rejects(r.arrayBuffer(), (e) => e.code === 562 && e.local === true);
  assert.equal(fake.upstream.length, 1);
});

test('encodeHeaders false / list: only the chosen headers travel sealed', async () => {
  const { fake, f } = setup({ encodeHeaders: ['x-secret'] });
  await (await f(`${ORIGIN}/h`, { headers: { 'x-secret': 's', 'x-clear': 'c' } })).text();
  const sent = messages(fake).at(-1);
  assert.equal(sent.headers.get('x-secret'), null);
  assert.equal(sent.headers.get('x-clear'), 'c');
  assert.deepEqual(fake.upstream.at(-1).headers, { 'x-secret': ['s'] });
  const g = setup({ encodeHeaders: false });
  await (await g.f(`${ORIGIN}/h`, { method: 'POST', body: 'b', headers: { 'x-a': '1', 'content-type': 'text/plain' } })).text();
  const m = messages(g.fake).at(-1);
  assert.equal(m.relayHeader.headersEnc, false);
  assert.equal(m.headers.get('x-a'), '1');
  assert.deepEqual(Object.keys(g.fake.upstream.at(-1).headers), ['content-type']);
});

test('declared length is not shown to the caller; encodeUrls false keeps the path clear', async () => {
  const { fake, f } = setup();
  const r = await f(`${ORIGIN}/clear?x=1`, {}, { encodeUrls: false });
  assert.equal(r.headers.get('x-mte-body-length'), null);
  await r.text();
  assert.equal(messages(fake).at(-1).path, '/clear?x=1');
});

test('an aborted signal rejects before anything is sent', async () => {
  const { fake, f } = setup();
  const c = new AbortController();
  c.abort();
  await assert.rejects(f(`${ORIGIN}/a`, { signal: c.signal }), (e) => e.name === 'AbortError');
  assert.equal(fake.log.length, 0);
});

test('a streamed upload the platform refuses unread (HTTP/1.1 in Chromium) is sent buffered', async () => {
  const { fake, relay } = setup();
  const refusing = async (url, init) => {
    if (init.body instanceof ReadableStream) throw new TypeError('Failed to fetch (ERR_ALPN_NEGOTIATION_FAILED)');
    return fake.fetch(url, init);
  };
  relay.fetch = refusing;
  const f = (input, init) => relayFetch(() => relay, input, init, {});
  const mk = (text) => new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode(text)); c.close(); } });
  const r = await f(`${ORIGIN}/up`, { method: 'POST', body: mk('fallback body'), duplex: 'half' });
  assert.equal((await r.json()).body, 'fallback body');
  const sent = messages(fake).at(-1);
  assert.equal(sent.relayHeader.mode, 'MKR');
  assert.equal(relay.streamUploads, false);
  const again = await f(`${ORIGIN}/up`, { method: 'POST', body: mk('second'), duplex: 'half' });
  assert.equal((await again.json()).body, 'second');
  // A TypeError after the body was read is the caller's (the upstream may have it).
  relay.streamUploads = true;
  relay.fetch = async (url, init) => {
    if (init.body instanceof ReadableStream) { await new Response(init.body).arrayBuffer(); throw new TypeError('network'); }
    return fake.fetch(url, init);
  };
  await assert.rejects(f(`${ORIGIN}/up`, { method: 'POST', body: mk('lost'), duplex: 'half' }), TypeError);
});

test('pairing: a 409 is answered once with fresh ids, a second 409 fails', async () => {
  const { fake, f } = setup();
  const conflict = () => fake.json(409, { code: 409, error: 'Pair id in use', field: '[0].pairId', upstreamReached: 'no' });
  fake.pairScript.push(conflict);
  await (await f(`${ORIGIN}/a`)).text();
  const bodies = fake.log.filter((e) => e.path === '/api/mte-pair').map((e) => JSON.parse(new TextDecoder().decode(e.body)));
  assert.equal(bodies.length, 2);
  assert.notEqual(bodies[0][0].pairId, bodies[1][0].pairId);
  const g = setup();
  g.fake.pairScript.push(conflict, conflict);
  await assert.rejects(g.f(`${ORIGIN}/a`), (e) => e instanceof MteRelayError && e.code === 409);
});

test('pairing: a 429 is not retried before Retry-After; an answer of the wrong size fails', async () => {
  const { fake, f } = setup();
  fake.pairScript.push(() => fake.json(429, { code: 429, error: 'Too many pairings', upstreamReached: 'no' }, { 'retry-after': '30' }));
  await assert.rejects(f(`${ORIGIN}/a`), (e) => e.code === 429 && e.retryAfter === 30);
  await assert.rejects(f(`${ORIGIN}/a`), (e) => e.code === 429);
  assert.equal(pairings(fake), 1);
  const g = setup();
  g.fake.pairScript.push(() => g.fake.json(200, []));
  await assert.rejects(g.f(`${ORIGIN}/a`), (e) => e.code === 562);
});

test('the wire request never asks the HTTP cache to skip (it would defeat the preflight cache)', async () => {
  const { fake, relay } = setup();
  const inits = [];
  relay.fetch = (url, init) => { inits.push(init); return fake.fetch(url, init); };
  await (await relayFetch(() => relay, `${ORIGIN}/c`, { cache: 'no-store' }, {})).text();
  assert.ok(inits.every((i) => !('cache' in i)));
});

const FIXED = '/api/mte-relay/request';
const heads = (fake) => fake.log.filter((e) => e.path === '/api/mte-relay').length;

test('fixed path: announced, every sealed-URL request goes to it with the token in x-mte-relay-url', async () => {
  const { fake, f } = setup({ fixedPath: FIXED });
  for (const [method, url] of [['GET', '/a/b?q=1'], ['POST', '/c'], ['PUT', '/d'], ['DELETE', '/e?x=%20']]) {
    const body = method === 'POST' || method === 'PUT' ? '{"k":1}' : undefined;
    const answer = await (await f(`${ORIGIN}${url}`, { method, body })).json();
    assert.equal(answer.url, url);
    assert.equal(answer.method, method);
  }
  const sent = messages(fake);
  assert.equal(sent.length, 4);
  for (const e of sent) {
    assert.equal(e.path, FIXED);
    const token = e.headers.get('x-mte-relay-url');
    assert.match(token, /^[A-Za-z0-9_-]+$/);
    assert.equal(e.relayHeader.urlEnc, true);
  }
  assert.equal(new Set(sent.map((e) => e.headers.get('x-mte-relay-url'))).size, 4);
});

test('fixed path: not taken when absent, malformed, turned off, per request off, or urls in clear', async () => {
  for (const [opts, mte] of [[{}, {}], [{ fixedPath: '/a/../b' }, {}], [{ fixedPath: '/a?q' }, {}],
    [{ fixedPath: `/${'a'.repeat(130)}` }, {}], [{ fixedPath: FIXED, clientFixedPath: false }, {}],
    [{ fixedPath: FIXED }, { fixedPath: false }]]) {
    const { fake, f } = setup(opts);
    const answer = await (await f(`${ORIGIN}/p?q=2`, {}, mte)).json();
    assert.equal(answer.url, '/p?q=2');
    const [e] = messages(fake);
    assert.notEqual(e.path, FIXED, JSON.stringify(opts));
    assert.equal(e.headers.get('x-mte-relay-url'), null);
  }
  const { fake, f } = setup({ fixedPath: FIXED });
  await (await f(`${ORIGIN}/clear`, {}, { encodeUrls: false })).arrayBuffer();
  const [e] = messages(fake);
  assert.equal(e.path, '/clear');
  assert.equal(e.headers.get('x-mte-relay-url'), null);
});

test('fixed path: kept after the clear pathPrefix, which is not sealed', async () => {
  const { fake, f } = setup({ fixedPath: FIXED, pathPrefix: '/edge' });
  const answer = await (await f(`${ORIGIN}/edge/api/x?y=1`)).json();
  assert.equal(answer.url, '/api/x?y=1');
  const [e] = messages(fake);
  assert.equal(e.wirePath, `/edge${FIXED}`);
});

test('fixed path: a replica without it answers 562; resent once in the per-request form, then HEAD again', async () => {
  const { fake, f } = setup({ fixedPath: FIXED, acceptsFixedPath: false, numberOfPairs: 1 });
  const answer = await (await f(`${ORIGIN}/first`, { method: 'POST', body: 'x' })).json();
  assert.equal(answer.url, '/first');
  assert.equal(answer.body, 'x');
  const sent = messages(fake);
  assert.equal(sent.length, 2);
  assert.equal(sent[0].path, FIXED);
  assert.notEqual(sent[1].path, FIXED);
  assert.equal(sent[1].headers.get('x-mte-relay-url'), null);
  assert.notEqual(sent[0].relayHeader.pairId, sent[1].relayHeader.pairId); // re-paired
  assert.equal(fake.upstream.length, 1);
  // The next request validates first; the replicas now agree there is no fixed path.
  assert.equal(heads(fake), 1);
  fake.fixedPath = null;
  await (await f(`${ORIGIN}/second`)).arrayBuffer();
  assert.equal(heads(fake), 2);
  const last = messages(fake).at(-1);
  assert.notEqual(last.path, FIXED);
  assert.equal(fake.upstream.length, 2);
  await (await f(`${ORIGIN}/third`)).arrayBuffer();
  assert.equal(heads(fake), 2); // once, not per request
});

test('fixed path: a second 562 after the per-request resend is the caller\'s error', async () => {
  const { fake, f } = setup({ fixedPath: FIXED, acceptsFixedPath: false, numberOfPairs: 1 });
  fake.script.push(null, { status: 562, body: { upstreamReached: 'no' } });
  await assert.rejects(f(`${ORIGIN}/x`), (e) => e instanceof MteRelayError && e.code === 562);
  assert.equal(messages(fake).length, 2);
  assert.equal(fake.upstream.length, 0);
});

test('useStreaming per request streams any body as records; a stream body stays buffered when it is false', async () => {
  const { fake, relay } = setup();
  const streamed = [];
  relay.fetch = (url, init) => { streamed.push(init.body instanceof ReadableStream); return fake.fetch(url, init); };
  const f = (input, init, mte) => relayFetch(() => relay, input, init, mte || {});
  const file = new Blob(['file ', 'contents']);
  const r = await f(`${ORIGIN}/up`, { method: 'POST', body: file }, { useStreaming: true });
  assert.equal((await r.json()).body, 'file contents');
  const again = await f(`${ORIGIN}/up`, { method: 'POST', body: 'plain' });
  assert.equal((await again.json()).body, 'plain');
  const mk = () => new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode('s')); c.close(); } });
  const off = await f(`${ORIGIN}/up`, { method: 'POST', body: mk(), duplex: 'half' }, { useStreaming: false });
  assert.equal((await off.json()).body, 's');
  const sent = messages(fake).slice(-3);
  assert.deepEqual(streamed.slice(-3), [true, false, false]);
  assert.deepEqual(sent.map((e) => e.relayHeader.mode), ['MKR', 'MKR', 'MKR']);
  // Only the buffered ones declare their length.
  assert.equal(sent[0].headers.get('content-length'), null);
});
