// End to end in Node against a real relay process (twistd mterelay) in front of a
// real recording upstream, both on 127.0.0.1. MTERELAY_TWISTD names the twistd of the
// project's venv (the trial wrapper sets it; then nothing here is skipped).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { initMteRelayClient, mteFetch, MteRelayError, memoryStorage, closeMteRelayClient } from '../src/index.js';

const here = fileURLToPath(new URL('.', import.meta.url));
const TWISTD = process.env.MTERELAY_TWISTD || `${here}../../../.venv/bin/twistd`;
const required = Boolean(process.env.MTERELAY_TWISTD);
const available = existsSync(TWISTD);
const SECRET = 'browser-client-e2e-secret-0123456789abcdef';
const skip = !available && !required ? 'no .venv/bin/twistd (run make install)' : false;

let upstream;
let upstreamPort;
let relayPort;
let relay;
const seen = [];
const wire = [];

function bigBody(n) {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + 7) & 0xff;
  return b;
}

function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

async function startRelay() {
  const env = { ...process.env, UPSTREAM: `http://127.0.0.1:${upstreamPort}`, CLIENT_ID_SECRET: SECRET,
    LISTEN: `tcp:${relayPort}:interface=127.0.0.1`, SHUTDOWN_GRACE: '1' };
  const proc = spawn(TWISTD, ['-n', '--pidfile=', '--logfile=-', 'mterelay'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  proc.stdout.on('data', (d) => { log += d; });
  proc.stderr.on('data', (d) => { log += d; });
  const deadline = Date.now() + 20000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`relay exited: ${log}`);
    try {
      const r = await fetch(`http://127.0.0.1:${relayPort}/api/mte-echo/up`);
      if (r.status === 200) break;
    } catch { /* not yet */ }
    if (Date.now() > deadline) throw new Error(`relay did not start: ${log}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return proc;
}

function stopRelay(proc) {
  return new Promise((resolve) => {
    if (proc.exitCode !== null) { resolve(); return; }
    proc.once('exit', resolve);
    proc.kill('SIGTERM');
  });
}

function recordingFetch(url, init) {
  wire.push({ url, headers: Object.fromEntries(new Headers(init.headers)), body: init.body });
  return fetch(url, init);
}

before(async () => {
  if (skip) return;
  upstream = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      seen.push({ method: req.method, url: req.url, headers: req.headers, body: body.toString() });
      if (req.url.startsWith('/big')) {
        const n = Number(new URL(req.url, 'http://x').searchParams.get('n'));
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(n) });
        res.end(bigBody(n));
        return;
      }
      if (req.url.startsWith('/hash')) {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ length: body.length, sha256: createHash('sha256').update(body).digest('hex'),
          chunked: req.headers['transfer-encoding'] === 'chunked', contentLength: req.headers['content-length'] || null }));
        return;
      }
      if (req.url.startsWith('/stream')) {
        res.writeHead(200, { 'content-type': 'application/x-ndjson' });
        res.write('{"n":1}\n');
        setTimeout(() => { res.write('{"n":2}\n'); }, 300);
        setTimeout(() => { res.end('{"n":3}\n'); }, 600);
        return;
      }
      res.writeHead(req.url.startsWith('/missing') ? 404 : 200,
        { 'content-type': 'application/json', 'x-upstream': 'yes' });
      res.end(JSON.stringify({ method: req.method, url: req.url, body: body.toString(),
        apiKey: req.headers['x-api-key'] || null }));
    });
  });
  await new Promise((r) => upstream.listen(0, '127.0.0.1', r));
  upstreamPort = upstream.address().port;
  relayPort = await freePort();
  relay = await startRelay();
  const info = await initMteRelayClient({ relayUrl: `http://127.0.0.1:${relayPort}`, storage: memoryStorage(),
    numberOfPairs: 3, fetch: recordingFetch });
  assert.match(info.clientId, /^[0-9a-f-]{36}\.[0-9a-f]{64}$/);
  assert.equal(info.records, true);
});

after(async () => {
  closeMteRelayClient();
  if (relay) await stopRelay(relay);
  if (upstream) upstream.close();
});

const base = () => `http://127.0.0.1:${relayPort}`;

test('GET with a query: sealed on the wire, plain at the upstream', { skip }, async () => {
  wire.length = 0;
  const r = await mteFetch(`${base()}/api/items?q=secret-query&n=1`, { headers: { 'x-api-key': 'k-123' } });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('x-upstream'), 'yes');
  assert.equal(r.headers.get('content-type'), 'application/json');
  const json = await r.json();
  assert.deepEqual(json, { method: 'GET', url: '/api/items?q=secret-query&n=1', body: '', apiKey: 'k-123' });
  const sent = wire.at(-1);
  assert.ok(!sent.url.includes('secret-query') && !sent.url.includes('/api/items'), sent.url);
  assert.equal(sent.headers['x-api-key'], undefined);
  assert.ok(r.url.endsWith('/api/items?q=secret-query&n=1'));
});

test('POST JSON: body sealed, answer opened', { skip }, async () => {
  wire.length = 0;
  const payload = JSON.stringify({ user: 'alice', password: 'correct horse' });
  const r = await mteFetch(`${base()}/api/login`, { method: 'POST', body: payload, headers: { 'content-type': 'application/json' } });
  const json = await r.json();
  assert.equal(json.body, payload);
  assert.equal(seen.at(-1).headers['content-type'], 'application/json');
  const sent = wire.at(-1);
  assert.ok(!Buffer.from(sent.body).toString('latin1').includes('alice'));
  assert.equal(sent.headers['content-type'], 'application/octet-stream');
});

test('PUT, DELETE and an upstream 404 pass through sealed', { skip }, async () => {
  const put = await mteFetch(`${base()}/api/items/1`, { method: 'PUT', body: 'x'.repeat(200000) });
  assert.equal((await put.json()).body.length, 200000);
  const del = await mteFetch(`${base()}/api/items/1`, { method: 'DELETE' });
  assert.equal((await del.json()).method, 'DELETE');
  const missing = await mteFetch(`${base()}/missing`);
  assert.equal(missing.status, 404);
  assert.equal(missing.ok, false);
});

test('a streamed response yields its first record before the upstream ended', { skip }, async () => {
  const t0 = Date.now();
  const r = await mteFetch(`${base()}/stream`);
  const reader = r.body.getReader();
  const first = await reader.read();
  const firstAt = Date.now() - t0;
  assert.equal(new TextDecoder().decode(first.value), '{"n":1}\n');
  assert.ok(firstAt < 500, `first record after ${firstAt} ms`);
  let rest = '';
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    rest += new TextDecoder().decode(value);
  }
  assert.equal(rest, '{"n":2}\n{"n":3}\n');
  assert.ok(Date.now() - t0 >= 550);
});

test('50 concurrent requests on the pool, none fails', { skip }, async () => {
  const all = await Promise.all(Array.from({ length: 50 }, (_, i) =>
    mteFetch(`${base()}/api/n/${i}`, { method: 'POST', body: String(i) }).then((r) => r.json())));
  all.forEach((j, i) => assert.equal(j.body, String(i)));
});

test('a tampered response never yields its bytes: the body stream errors', { skip }, async () => {
  const origin = `http://localhost:${relayPort}`;
  await initMteRelayClient({ relayUrl: origin, storage: memoryStorage(), numberOfPairs: 1,
    fetch: async (url, init) => {
      const r = await fetch(url, init);
      if (!r.headers.get('x-mte-relay') || init.method === 'HEAD') return r;
      const bytes = new Uint8Array(await r.arrayBuffer());
      bytes[bytes.length - 1] ^= 1;
      return new Response(bytes, { status: r.status, headers: r.headers });
    } });
  const before = seen.length;
  const r = await mteFetch(`${origin}/api/tamper`, { method: 'POST', body: 'once' });
  await assert.rejects(r.text(), (e) => e instanceof MteRelayError && e.code === 562 && e.upstreamReached === 'maybe');
  assert.equal(seen.length, before + 1); // executed once, never resent
});

test('relay restarted: pairs are gone (560), the client re-pairs and resends once', { skip }, async () => {
  await stopRelay(relay);
  relay = await startRelay();
  const before = seen.length;
  const r = await mteFetch(`${base()}/api/after-restart`, { method: 'POST', body: 'again' });
  assert.equal((await r.json()).body, 'again');
  assert.equal(seen.length, before + 1);
});

test('HEAD: status and sealed headers, no body', { skip }, async () => {
  const r = await mteFetch(`${base()}/api/head-me`, { method: 'HEAD' });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('x-upstream'), 'yes');
  assert.equal(r.body, null);
});

test('a 5 MiB download streams and arrives intact (SHA-256)', { skip }, async () => {
  const n = 5 * 1024 * 1024;
  const r = await mteFetch(`${base()}/big?n=${n}`);
  assert.equal(r.headers.get('content-length'), null); // framing, never the upstream's
  const got = Buffer.from(await r.arrayBuffer());
  assert.equal(got.length, n);
  assert.equal(createHash('sha256').update(got).digest('hex'), createHash('sha256').update(bigBody(n)).digest('hex'));
});

test('uploads: a 3 MiB buffered body and a streamed (MKR, chunked) body arrive intact', { skip }, async () => {
  const n = 3 * 1024 * 1024;
  const data = bigBody(n);
  const want = createHash('sha256').update(data).digest('hex');
  const buffered = await (await mteFetch(`${base()}/hash`, { method: 'POST', body: data })).json();
  assert.equal(buffered.sha256, want);
  assert.equal(buffered.contentLength, String(n)); // the declared length reached the upstream
  let offset = 0;
  const stream = new ReadableStream({
    pull(c) {
      if (offset >= n) { c.close(); return; }
      c.enqueue(new Uint8Array(data.subarray(offset, offset + 100000)));
      offset += 100000;
    },
  });
  const streamed = await (await mteFetch(`${base()}/hash`, { method: 'PUT', body: stream, duplex: 'half' })).json();
  assert.equal(streamed.sha256, want);
  assert.equal(streamed.chunked, true);
});

test('pathPrefix: kept in clear before the sealed path, stripped from what is sealed', { skip }, async () => {
  // A reverse proxy in front of the relay strips /edge (here a fetch wrapper plays it).
  const origin = `http://localhost:${relayPort}`;
  const seenUrls = [];
  await initMteRelayClient({ relayUrl: origin, pathPrefix: '/edge', storage: memoryStorage(), numberOfPairs: 1, replace: true,
    fetch: (url, init) => { seenUrls.push(url); return fetch(url.replace('/edge/', '/'), init); } });
  const r = await mteFetch(`${origin}/edge/api/prefixed?x=1`);
  assert.equal((await r.json()).url, '/api/prefixed?x=1');
  assert.ok(seenUrls.every((u) => u.startsWith(`${origin}/edge/`)), seenUrls.join(' '));
  assert.ok(!seenUrls.at(-1).includes('prefixed'));
});

test('an aborted request rejects with the abort reason', { skip }, async () => {
  const controller = new AbortController();
  const p = mteFetch(`${base()}/stream`, { signal: controller.signal });
  controller.abort();
  await assert.rejects(p, (e) => e.name === 'AbortError');
});

test('fetch TypeErrors: a GET with a body, an unknown origin', { skip }, async () => {
  await assert.rejects(mteFetch(`${base()}/x`, { method: 'GET', body: 'no' }), TypeError);
  await assert.rejects(mteFetch('http://127.0.0.1:1/x'), TypeError);
});

test('required relay present when MTERELAY_TWISTD is set', () => {
  if (required) assert.ok(available, `MTERELAY_TWISTD=${TWISTD} does not exist`);
});
