// The built files (mterelay/public/) work: the ES module end to end against the
// scripted relay, the classic script defines mteRelay with the same API.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { FakeRelay } from './fakerelay.js';

const dir = new URL('../../../mterelay/public/', import.meta.url);

test('ES module bundle: pairs (ML-KEM inside the bundle) and fetches', async () => {
  const m = await import(new URL('mte-relay-browser.js', dir));
  const fake = new FakeRelay();
  await m.initMteRelayClient({ relayUrl: 'http://bundle.test', fetch: fake.fetch, storage: m.memoryStorage(), numberOfPairs: 1 });
  const r = await m.mteFetch('http://bundle.test/api/x?y=1', { method: 'POST', body: 'from the bundle' });
  assert.deepEqual(await r.json(), { method: 'POST', url: '/api/x?y=1', headers: { 'content-type': ['text/plain;charset=UTF-8'], 'x-mte-body-length': ['15'] }, body: 'from the bundle' });
  assert.equal(typeof m.MteRelayError, 'function');
});

test('classic script bundle defines window.mteRelay', () => {
  const code = readFileSync(new URL('mte-relay-browser.iife.js', dir), 'utf8');
  const window = {};
  new Function('window', `${code}\nwindow.mteRelay = mteRelay;`)(window);
  for (const name of ['initMteRelayClient', 'mteFetch', 'MteRelayError', 'memoryStorage']) {
    assert.equal(typeof window.mteRelay[name], 'function', name);
  }
});
