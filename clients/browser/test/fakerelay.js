// A scripted relay in JS for the unit tests of the pool and the resend rules: it pairs
// for real (relay side of section 4), opens requests and seals answers, and can be
// told to answer any 55x. Not a substitute for the real relay (relay.e2e.test.js).
import { ml_kem768 } from '@noble/post-quantum/ml-kem.js';
import { b64urlDecode, b64urlEncode, concat, decodeUtf8 } from '../src/encoding.js';
import { parseRelayHeader, formatRelayHeader } from '../src/header.js';
import { transcript } from '../src/pairing.js';
import { BodyOpener, sealBody } from '../src/framing.js';
import { C2S, S2C, KIND_HEADERS, KIND_URL, openItem, requestBinding, responseBinding, sealItem, importAesKey } from '../src/sealing.js';
import { encodeHeadersItem } from '../src/headersitem.js';

const CLIENT = (n) => `${String(n).padStart(8, '0')}-0000-4000-8000-000000000000.${'a'.repeat(64)}`;

export class FakeRelay {
  constructor({ records = true, fixedPath = null, acceptsFixedPath = true, prefix = '' } = {}) {
    this.prefix = prefix; // a reverse proxy's clear prefix, stripped before routing
    this.records = records;
    // fixedPath: announced on HEAD; acceptsFixedPath false plays a replica that lacks
    // section 5.2 behind one that announces it (it takes the path for the token).
    this.fixedPath = fixedPath;
    this.acceptsFixedPath = acceptsFixedPath;
    this.pairs = new Map();
    this.log = [];
    this.script = [];       // answers to give to encrypted requests, in order
    this.pairScript = [];   // answers to give to pairings
    this.ids = 1;
    this.validIds = new Set([CLIENT(1)]);
    this.upstream = [];
  }

  newId() { this.ids += 1; const id = CLIENT(this.ids); this.validIds.add(id); return id; }

  fetch = async (url, init = {}) => {
    const u = new URL(url);
    const headers = new Headers(init.headers);
    const body = init.body instanceof Uint8Array ? init.body : init.body instanceof ReadableStream
      ? new Uint8Array(await new Response(init.body).arrayBuffer()) : init.body ? new TextEncoder().encode(init.body) : null;
    let pathname = u.pathname;
    if (this.prefix) {
      if (!pathname.startsWith(`${this.prefix}/`)) return this.json(404, { code: 404, error: 'no prefix' });
      pathname = pathname.slice(this.prefix.length);
    }
    const entry = { method: init.method || 'GET', path: pathname + u.search, wirePath: u.pathname + u.search, headers, body };
    this.log.push(entry);
    if (pathname === '/api/mte-relay') return this.head(headers);
    if (pathname === '/api/mte-pair') return this.pair(headers, body);
    return this.message(entry);
  };

  json(status, obj, extra = {}) {
    return new Response(JSON.stringify(obj), { status, headers: { 'content-type': 'application/json', ...extra } });
  }

  head(headers) {
    const presented = headers.get('x-mte-relay');
    if (presented && !this.validIds.has(presented)) return this.json(566, { code: 566, error: 'Invalid Client ID header.', upstreamReached: 'no' });
    const id = presented || this.newId();
    const h = { 'x-mte-relay': id };
    if (this.records) h['x-mte-relay-framing'] = 'MTE,MKE,MKR';
    if (this.fixedPath) h['x-mte-relay-fixed-path'] = this.fixedPath;
    return new Response(null, { status: 200, headers: h });
  }

  async pair(headers, body) {
    const next = this.pairScript.shift();
    if (next) return next();
    const clientId = headers.get('x-mte-relay');
    if (!this.validIds.has(clientId)) return this.json(566, { code: 566, error: 'Invalid Client ID header.', upstreamReached: 'no' });
    const entries = JSON.parse(decodeUtf8(body));
    const answer = [];
    for (const e of entries) {
      const secrets = { dirs: {} };
      const ans = {};
      const shared = {};
      for (const d of ['c2s', 's2c']) {
        const eph = await crypto.subtle.generateKey({ name: 'X25519' }, true, ['deriveBits']);
        const pub = new Uint8Array(await crypto.subtle.exportKey('raw', eph.publicKey));
        const clientPub = await crypto.subtle.importKey('raw', b64urlDecode(e[d].x25519), { name: 'X25519' }, true, []);
        const ssX = new Uint8Array(await crypto.subtle.deriveBits({ name: 'X25519', public: clientPub }, eph.privateKey, 256));
        const { cipherText, sharedSecret } = ml_kem768.encapsulate(b64urlDecode(e[d].mlkem768));
        const nonce = crypto.getRandomValues(new Uint8Array(32));
        secrets.dirs[d] = { x25519: { publicRaw: b64urlDecode(e[d].x25519) }, mlkemPublic: b64urlDecode(e[d].mlkem768),
          personalization: b64urlDecode(e[d].personalization) };
        ans[d] = { x25519: pub, mlkem768: cipherText, nonce };
        shared[d] = concat(sharedSecret, ssX);
      }
      const t = transcript(clientId.slice(0, 36), e.pairId, secrets, ans);
      const salt = new Uint8Array(await crypto.subtle.digest('SHA-256', t));
      const keys = {};
      for (const d of ['c2s', 's2c']) {
        const ikm = await crypto.subtle.importKey('raw', shared[d], 'HKDF', false, ['deriveBits']);
        const raw = new Uint8Array(await crypto.subtle.deriveBits({ name: 'HKDF', hash: 'SHA-256', salt, info: new TextEncoder().encode(`mterelay ${d}`) }, ikm, 256));
        keys[d] = await importAesKey(raw);
      }
      this.pairs.set(e.pairId, { keys, clientId, seen: new Set() });
      answer.push({ version: 1, pairId: e.pairId,
        c2s: { x25519: b64urlEncode(ans.c2s.x25519), mlkem768: b64urlEncode(ans.c2s.mlkem768), nonce: b64urlEncode(ans.c2s.nonce) },
        s2c: { x25519: b64urlEncode(ans.s2c.x25519), mlkem768: b64urlEncode(ans.s2c.mlkem768), nonce: b64urlEncode(ans.s2c.nonce) } });
    }
    return this.json(200, answer);
  }

  async message(entry) {
    const h = parseRelayHeader(entry.headers.get('x-mte-relay'));
    entry.relayHeader = h;
    const next = this.script.shift();
    if (next && next.status) {
      const body = { code: next.status, error: 'scripted', ...next.body };
      return this.json(next.status, body, next.headers || {});
    }
    const pair = this.pairs.get(h.pairId);
    if (!pair) return this.json(560, { code: 560, error: 'State not found.', upstreamReached: 'no' });
    if (pair.seen.has(h.seq)) return this.json(562, { code: 562, error: 'Failed to decode.', upstreamReached: 'no' });
    const token = entry.headers.get('x-mte-relay-url');
    const onFixed = Boolean(this.fixedPath && this.acceptsFixedPath && entry.path === this.fixedPath);
    if (onFixed !== (token !== null) && this.acceptsFixedPath) {
      return this.json(onFixed ? 569 : 568, { code: onFixed ? 569 : 568, error: 'fixed path', upstreamReached: 'no' });
    }
    const target = onFixed ? `/${token}` : entry.path;
    const eh = await openItem(pair.keys.c2s, h, C2S, KIND_HEADERS, 1, true,
      b64urlDecode(entry.headers.get('x-mte-relay-eh')), requestBinding(entry.method, h.bodyEnc, target));
    if (!eh) return this.json(562, { code: 562, error: 'Failed to decode.', upstreamReached: 'no' });
    pair.seen.add(h.seq);
    const url = h.urlEnc ? decodeUtf8(await openItem(pair.keys.c2s, h, C2S, KIND_URL, 0, true, b64urlDecode(target.slice(1)))) : target;
    let plain = new Uint8Array(0);
    if (h.bodyEnc) {
      const opener = new BodyOpener(pair.keys.c2s, h, C2S);
      plain = concat(...await opener.push(entry.body), ...await opener.end());
    }
    const up = { method: entry.method, url, headers: JSON.parse(decodeUtf8(eh)), body: decodeUtf8(plain) };
    this.upstream.push(up);
    const status = (next && next.upstreamStatus) || 200;
    const rh = { ...h, urlEnc: false, headersEnc: true, bodyEnc: true, mode: h.streaming === 2 ? 'MKR' : h.streaming === 1 ? 'MKE' : 'MTE' };
    const answerBody = new TextEncoder().encode(JSON.stringify(up));
    const sealedHeaders = await sealItem(pair.keys.s2c, rh, S2C, KIND_HEADERS, 1, true,
      encodeHeadersItem({ 'content-type': ['application/json'], 'x-mte-body-length': [String(answerBody.length)] }),
      responseBinding(status));
    let sealedBody = await sealBody(pair.keys.s2c, rh, S2C, answerBody);
    if (next && next.tamper) sealedBody = next.tamper(sealedBody);
    return new Response(sealedBody, { status, headers: { 'x-mte-relay': formatRelayHeader(rh), 'x-mte-relay-eh': b64urlEncode(sealedHeaders), 'content-type': 'application/octet-stream' } });
  }
}
