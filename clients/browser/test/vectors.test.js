// Every vector of tests/vectors/ reproduced byte for byte by the JS code.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { b64urlDecode, b64urlEncode, concat, hexDecode, hexEncode } from '../src/encoding.js';
import { flagsByte, formatRelayHeader, parseRelayHeader, announcesRecords, responseHeaderFor } from '../src/header.js';
import { completePairing, makePairRequest, transcript, checkPairResponse } from '../src/pairing.js';
import { aad, importAesKey, nonce, openItem, requestBinding, responseBinding, sealItem, C2S, S2C,
  KIND_URL, KIND_HEADERS, KIND_BODY } from '../src/sealing.js';
import { BodyOpener, sealBody, sealedLength, plainLength, RecordSealer } from '../src/framing.js';
import { MteRelayError } from '../src/errors.js';

const dir = new URL('../../../tests/vectors/', import.meta.url);
const load = (name) => JSON.parse(readFileSync(new URL(name, dir), 'utf8'));
const pairing = load('pairing.json');
const sealing = load('sealing.json');
const framing = load('framing.json');
const records = load('records.json');
const sha = (b) => createHash('sha256').update(b).digest('hex');
const pattern = (n) => { const p = new Uint8Array(n); for (let i = 0; i < n; i++) p[i] = (7 * i + 3) % 256; return p; };

function hexInputs(obj) {
  const out = {};
  for (const d of ['c2s', 's2c']) {
    out[d] = {};
    for (const [k, v] of Object.entries(obj[d])) out[d][k] = hexDecode(v);
  }
  return out;
}

async function openAll(key, header, direction, wire, opts) {
  const opener = new BodyOpener(key, header, direction, opts);
  const out = [...await opener.push(wire), ...await opener.end()];
  return concat(...out);
}

test('client ids: vectors are of the section 3 grammar', async () => {
  for (const c of pairing.clientIds) {
    const key = await crypto.subtle.importKey('raw', new TextEncoder().encode(c.secret),
      { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
    const mac = new Uint8Array(await crypto.subtle.sign('HMAC', key, new TextEncoder().encode(c.uuid)));
    assert.equal(`${c.uuid}.${hexEncode(mac)}`, c.clientId);
  }
});

for (const v of pairing.vectors) {
  test(`pairing vector ${v.name}: request, transcript, keys`, async () => {
    const { entry, secrets } = await makePairRequest(v.pairId, hexInputs(v.inputs.client));
    assert.deepEqual(entry, v.request);
    const answer = checkPairResponse(v.response, v.pairId);
    assert.ok(answer);
    assert.equal(hexEncode(transcript(v.clientUuid, v.pairId, secrets, answer)), v.transcript);
    const trace = {};
    const keys = await completePairing(v.clientUuid, secrets, v.response, { extractable: true, trace });
    assert.equal(hexEncode(trace.salt), v.transcriptSha256);
    for (const d of ['c2s', 's2c']) {
      assert.equal(hexEncode(trace[d].x25519Shared), v.x25519SharedSecrets[d]);
      assert.equal(hexEncode(trace[d].mlkemShared), v.inputs.relay[d].mlkemSharedSecret);
      const raw = new Uint8Array(await crypto.subtle.exportKey('raw', keys[d]));
      assert.equal(hexEncode(raw), v[`${d}Key`]);
    }
  });

  test(`pairing vector ${v.name}: keys are non-extractable by default`, async () => {
    const { secrets } = await makePairRequest(v.pairId, hexInputs(v.inputs.client));
    const keys = await completePairing(v.clientUuid, secrets, v.response);
    assert.equal(keys.c2s.extractable, false);
    await assert.rejects(crypto.subtle.exportKey('raw', keys.c2s));
  });

  test(`pairing vector ${v.name}: altered answers are refused`, async () => {
    const { secrets } = await makePairRequest(v.pairId, hexInputs(v.inputs.client));
    const bad = [
      { ...v.response, extra: 1 },
      { ...v.response, version: '1' },
      { ...v.response, pairId: 'another-pair-id-0001' },
      { ...v.response, c2s: { ...v.response.c2s, nonce: v.response.c2s.nonce + 'A' } },
      { ...v.response, s2c: { ...v.response.s2c, x25519: b64urlEncode(new Uint8Array(32)) } },
      [v.response], null,
    ];
    for (const b of bad) assert.equal(await completePairing(v.clientUuid, secrets, b), null);
  });
}

test('sealing vectors: request and response items byte for byte', async () => {
  const c2s = await importAesKey(hexDecode(sealing.keys.c2sKey));
  const s2c = await importAesKey(hexDecode(sealing.keys.s2cKey));
  const req = sealing.request;
  const rh = parseRelayHeader(req.header);
  assert.equal(flagsByte(rh), req.flagsByte);
  assert.equal(hexEncode(nonce(rh.seq, 0)), req.url.nonce);
  assert.equal(hexEncode(aad(rh, C2S, KIND_URL, true)), req.url.aad);
  const url = await sealItem(c2s, rh, C2S, KIND_URL, 0, true, new TextEncoder().encode(req.url.plaintext));
  assert.equal(b64urlEncode(url), req.url.token);
  assert.equal('/' + b64urlEncode(url), req.url.wireTarget);
  const binding = requestBinding(req.headers.method, req.headers.hasBody, req.headers.target);
  assert.equal(hexEncode(binding), req.headers.binding);
  assert.equal(hexEncode(aad(rh, C2S, KIND_HEADERS, true, binding)), req.headers.aad);
  const hdr = await sealItem(c2s, rh, C2S, KIND_HEADERS, 1, true, hexDecode(req.headers.plaintext), binding);
  assert.equal(b64urlEncode(hdr), req.headers.token);
  assert.equal(hexEncode(aad(rh, C2S, KIND_BODY, true)), req.body.aad);
  assert.equal(hexEncode(await sealBody(c2s, rh, C2S, hexDecode(req.body.plaintext))), req.body.sealed);

  const resp = sealing.response;
  const sh = responseHeaderFor(rh, parseRelayHeader(resp.header));
  assert.equal(formatRelayHeader(sh), resp.header);
  assert.equal(flagsByte(sh), resp.flagsByte);
  const rb = responseBinding(resp.status);
  assert.equal(hexEncode(rb), resp.headers.binding);
  assert.equal(hexEncode(aad(sh, S2C, KIND_HEADERS, true, rb)), resp.headers.aad);
  const opened = await openItem(s2c, sh, S2C, KIND_HEADERS, 1, true, b64urlDecode(resp.headers.token), rb);
  assert.equal(hexEncode(opened), resp.headers.plaintext);
  assert.equal(hexEncode(aad(sh, S2C, KIND_BODY, true)), resp.body.aad);
  assert.equal(hexEncode(await openAll(s2c, sh, S2C, hexDecode(resp.body.sealed))), resp.body.plaintext);
});

test('sealing mustFail cases all fail', async () => {
  const keys = { c2s: await importAesKey(hexDecode(sealing.keys.c2sKey)), s2c: await importAesKey(hexDecode(sealing.keys.s2cKey)) };
  assert.ok(sealing.mustFail.length > 5);
  for (const c of sealing.mustFail) {
    const dirn = c.direction === 'c2s' ? C2S : S2C;
    const key = keys[c.direction];
    const header = parseRelayHeader(c.header || (c.direction === 'c2s' ? sealing.request.header : sealing.response.header));
    let result;
    if (c.item === 'url') {
      result = await openItem(key, header, dirn, KIND_URL, 0, true, b64urlDecode(c.token));
    } else if (c.item === 'headers') {
      const binding = c.direction === 'c2s'
        ? requestBinding(c.method ?? 'POST', c.hasBody ?? true, c.target ?? sealing.request.url.wireTarget)
        : responseBinding(c.status ?? sealing.response.status);
      const token = b64urlDecode(c.token);
      result = token && await openItem(key, header, dirn, KIND_HEADERS, 1, true, token, binding);
    } else {
      result = await openAll(key, header, dirn, hexDecode(c.sealed)).catch((e) => {
        assert.ok(e instanceof MteRelayError && e.code === 562);
        return null;
      });
    }
    assert.equal(result, null, c.description);
  }
});

test('relay header grammar cases', () => {
  for (const c of sealing.relayHeaders) {
    if (c.error) {
      assert.throws(() => parseRelayHeader(c.value), (e) => e.code === c.error, c.value);
    } else {
      const h = parseRelayHeader(c.value);
      assert.equal(flagsByte(h), c.flagsByte);
      assert.equal(h.seq, c.seq);
      assert.equal(formatRelayHeader(h), c.value);
    }
  }
});

test('framing vectors: MTE and MKE bodies of edge sizes', async () => {
  const key = await importAesKey(hexDecode(sealing.keys.c2sKey));
  for (const v of framing.vectors) {
    const h = parseRelayHeader(v.header);
    const plain = pattern(v.plainLength);
    assert.equal(sha(plain), v.plainSha256);
    const sealed = await sealBody(key, h, C2S, plain);
    assert.equal(sealed.length, v.sealedLength);
    assert.equal(sha(sealed), v.sealedSha256);
    if (v.sealed) assert.equal(hexEncode(sealed), v.sealed);
    let offset = 0;
    for (const c of v.chunks) {
      assert.equal(hexEncode(nonce(h.seq, c.index)), c.nonce);
      assert.equal(hexEncode(aad(h, C2S, KIND_BODY, c.final)), c.aad);
      offset += c.length;
      assert.equal(hexEncode(sealed.subarray(offset - 16, offset)), c.tag);
    }
    assert.equal(offset, sealed.length);
    assert.equal(sha(await openAll(key, h, C2S, sealed)), v.plainSha256);
  }
  for (const s of framing.sealedLengths) {
    assert.equal(sealedLength(s.mode, s.plain), s.sealed);
    assert.equal(plainLength(s.mode, s.sealed), s.plain);
  }
});

test('framing mustFail: dropped, swapped, duplicated, truncated, flipped chunks', async () => {
  const key = await importAesKey(hexDecode(sealing.keys.c2sKey));
  const h = parseRelayHeader(framing.vectors.find((v) => v.mode === 'MKE').header);
  for (const c of framing.mustFail) {
    const sealed = await sealBody(key, h, C2S, pattern(c.plainLength));
    const pieces = [];
    for (let o = 0; o < sealed.length; o += 65552) pieces.push(sealed.slice(o, o + 65552));
    const k = c.chunk;
    if (c.operation === 'drop') pieces.splice(k, 1);
    else if (c.operation === 'swap') [pieces[k], pieces[k + 1]] = [pieces[k + 1], pieces[k]];
    else if (c.operation === 'duplicate') pieces.splice(k, 0, pieces[k]);
    else if (c.operation === 'truncate') pieces[pieces.length - 1] = pieces[pieces.length - 1].slice(0, -c.bytes);
    else if (c.operation === 'flip') pieces[k][0] ^= 1;
    else assert.fail(`unknown operation ${c.operation}`);
    await assert.rejects(openAll(key, h, C2S, concat(...pieces)), (e) => e.code === 562, c.description);
  }
});

test('records negotiation: announcement, headers, refused responses', () => {
  const n = records.negotiation;
  for (const a of n.announcementParsing) assert.equal(announcesRecords(a.value), a.records, String(a.value));
  for (const h of n.headers) {
    const parsed = parseRelayHeader(h.value);
    assert.equal(flagsByte(parsed), h.flagsByte);
    assert.equal(formatRelayHeader(parsed), h.value);
  }
  for (const h of n.invalidHeaders) assert.throws(() => parseRelayHeader(h.value), (e) => e.code === h.error);
  for (const r of n.refusedResponses) {
    assert.equal(responseHeaderFor(parseRelayHeader(r.request), parseRelayHeader(r.response)), null);
  }
});

test('record bodies byte for byte, opened record by record', async () => {
  const keys = { c2s: await importAesKey(hexDecode(sealing.keys.c2sKey)), s2c: await importAesKey(hexDecode(sealing.keys.s2cKey)) };
  for (const b of records.bodies) {
    const h = parseRelayHeader(b.header);
    const dirn = b.direction === 'c2s' ? C2S : S2C;
    const sealer = new RecordSealer(keys[b.direction], h, dirn);
    const pieces = [];
    for (const r of b.records) pieces.push(r.plaintext !== undefined ? hexDecode(r.plaintext) : pattern(r.plainLength));
    assert.equal(sha(concat(...pieces)), b.plainSha256, b.name);
    const wire = [];
    for (const [i, r] of b.records.entries()) {
      const piece = pieces[i];
      assert.equal(hexEncode(nonce(h.seq, r.index)), r.nonce);
      assert.equal(hexEncode(aad(h, dirn, KIND_BODY, r.final)), r.aad);
      const sealed = await sealer.seal(piece, r.final);
      assert.equal(i === b.records.length - 1, r.final);
      assert.equal(hexEncode(sealed.subarray(0, 4)), r.prefix);
      assert.equal(hexEncode(sealed.subarray(-16)), r.tag);
      assert.equal(sealed.length, r.wireLength);
      wire.push(sealed);
    }
    const all = concat(...wire);
    assert.equal(all.length, b.wireLength);
    assert.equal(sha(all), b.wireSha256, b.name);
    if (b.wire) assert.equal(hexEncode(all), b.wire);
    // Byte by byte: a record is released as soon as it authenticated.
    const opener = new BodyOpener(keys[b.direction], h, dirn);
    const got = [];
    for (let i = 0; i < all.length; i += 7919) got.push(...await opener.push(all.subarray(i, i + 7919)));
    got.push(...await opener.end());
    assert.equal(sha(concat(...got)), b.plainSha256);
  }
  const d = records.declaredLength;
  const h = parseRelayHeader(d.header);
  const key = keys.c2s;
  const plain = await openAll(key, h, C2S, hexDecode(d.wire), { declaredLength: d.plainLength });
  assert.equal(plain.length, d.plainLength);
});

test('records mustFail cases all fail', async () => {
  const keys = { c2s: await importAesKey(hexDecode(sealing.keys.c2sKey)), s2c: await importAesKey(hexDecode(sealing.keys.s2cKey)) };
  assert.ok(records.mustFail.length >= 10);
  for (const c of records.mustFail) {
    const h = parseRelayHeader(c.header);
    let wire;
    if (c.wire !== undefined) wire = hexDecode(c.wire);
    else { wire = new Uint8Array(c.wireLength); wire.set(hexDecode(c.wirePrefix)); }
    const opts = c.declaredLength !== undefined ? { declaredLength: c.declaredLength } : {};
    await assert.rejects(openAll(keys[c.direction], h, c.direction === 'c2s' ? C2S : S2C, wire, opts),
      (e) => e instanceof MteRelayError && e.code === 562, c.description);
  }
});
