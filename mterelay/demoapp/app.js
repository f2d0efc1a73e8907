// The demo page: Login and File Upload through mteFetch. What it shows under
// "On the wire" is recorded, not described: initMteRelayClient takes a `fetch`
// option, and this page passes one that notes every request the client hands to
// the network (URL, headers, body bytes) and every answer (status, headers, body
// size) before passing it on. The client itself is loaded from the relay typed in
// (its /public/mte-relay-browser.js), so the page works against any relay.

const $ = (id) => document.getElementById(id);
const encoder = new TextEncoder();
const clients = new Map(); // relay URL -> { module, base, info }
let wireLog = []; // what the client sent since the current demo action started
let progressListener = null; // set while an upload runs
let uploadLimit = 1024 * 1024;
let answerBytes = 0; // the decrypted body size of the last answer shown

// ---- the recording fetch -------------------------------------------------------

function byteLength(body) {
  if (body === null || body === undefined) return 0;
  if (typeof body === 'string') return encoder.encode(body).length;
  if (body instanceof Blob) return body.size;
  if (body instanceof URLSearchParams) return encoder.encode(body.toString()).length;
  return body.byteLength ?? 0;
}

/**
 * A request body counted as the browser reads it. Pulled only on demand (high
 * water mark 0), so wrapping reads nothing early: the client's HTTP/1.1 fallback
 * relies on a streamed body the platform refused being still unread.
 */
function countedBody(source, onBytes) {
  const reader = source.getReader();
  return new ReadableStream({
    async pull(controller) {
      const { done, value } = await reader.read();
      if (done) controller.close();
      else {
        onBytes(value.byteLength);
        controller.enqueue(value);
      }
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

function counter(onBytes) {
  return new TransformStream({
    transform(chunk, controller) {
      onBytes(chunk.byteLength);
      controller.enqueue(chunk);
    },
  });
}

/** fetch over XMLHttpRequest, for a buffered body whose upload progress is wanted. */
function xhrFetch(url, init, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(init.method || 'GET', url);
    xhr.responseType = 'arraybuffer';
    new Headers(init.headers).forEach((value, name) => xhr.setRequestHeader(name, value));
    xhr.upload.onprogress = (event) => onProgress(event.loaded, event.lengthComputable ? event.total : null);
    xhr.onload = () => {
      const headers = new Headers();
      for (const line of xhr.getAllResponseHeaders().split('\r\n')) {
        const colon = line.indexOf(':');
        if (colon > 0) headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
      }
      const noBody = [204, 205, 304].includes(xhr.status);
      resolve(new Response(noBody ? null : xhr.response, { status: xhr.status, statusText: xhr.statusText, headers }));
    };
    xhr.onerror = () => reject(new TypeError('Failed to fetch'));
    xhr.onabort = () => reject(new DOMException('The operation was aborted.', 'AbortError'));
    if (init.signal) {
      if (init.signal.aborted) { reject(init.signal.reason); return; }
      init.signal.addEventListener('abort', () => xhr.abort());
    }
    xhr.send(init.body);
  });
}

/** The `fetch` the client is given: records what goes out and what comes back. */
async function recordingFetch(input, init = {}) {
  const url = new URL(typeof input === 'string' ? input : input.url);
  const headers = new Headers(init.headers || {});
  const entry = {
    method: (init.method || 'GET').toUpperCase(), url, headers: [...headers], body: null,
    requestBytes: byteLength(init.body), status: null, responseHeaders: [], responseBytes: 0,
  };
  wireLog.push(entry);
  const onProgress = progressListener;
  let body = init.body ?? null;
  if (body instanceof Uint8Array) entry.body = body;
  else if (typeof body === 'string') entry.body = encoder.encode(body);
  if (body instanceof ReadableStream) {
    // A streamed upload: count the sealed bytes as the browser reads them.
    body = countedBody(body, (n) => {
      entry.requestBytes += n;
      if (onProgress) onProgress(entry.requestBytes, null);
    });
  }
  const response = onProgress && body instanceof Uint8Array
    ? await xhrFetch(url, { ...init, headers }, onProgress)
    : await fetch(url, { ...init, body });
  entry.status = response.status;
  entry.statusText = response.statusText;
  entry.responseHeaders = [...response.headers];
  if (!response.body) return response;
  const counted = response.body.pipeThrough(counter((n) => { entry.responseBytes += n; }));
  return new Response(counted, { status: response.status, statusText: response.statusText, headers: response.headers });
}

// ---- showing what happened ----------------------------------------------------

function contains(haystack, needle) {
  if (!haystack || !needle.length) return false;
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return true;
  }
  return false;
}

function short(value, max = 48) {
  return value.length > max ? `${value.slice(0, max)}... (${value.length} chars)` : value;
}

function isSealed(entry) {
  return entry.headers.some(([name, value]) => name === 'x-mte-relay' && value.includes(','));
}

/** The wire report: handshakes, then each sealed request, then the plaintext check. */
function wireReport(entries, sealedHeaders, plainBytes, needles) {
  const lines = [];
  const handshakes = entries.filter((e) => !isSealed(e));
  if (handshakes.length) {
    lines.push(`handshake: ${handshakes.map((e) => `${e.method} ${e.url.pathname} -> ${e.status}`).join(', ')}`);
  }
  for (const e of entries.filter(isSealed)) {
    lines.push(`request:   ${e.method} ${short(e.url.pathname + e.url.search, 60)}`);
    if (e.headers.some(([name]) => name === 'x-mte-relay-url')) {
      lines.push('           (the fixed path: the sealed path and query travel in x-mte-relay-url)');
    } else {
      lines.push('           (the path is the sealed path and query, base64url)');
    }
    const clear = e.headers.map(([name, value]) => {
      if (name === 'x-mte-relay-eh') return `${name}: <sealed, ${value.length} chars>`;
      if (name === 'x-mte-relay-url') return `${name}: <sealed url, ${value.length} chars>`;
      return `${name}: ${short(value, 60)}`;
    });
    lines.push(`clear headers:  ${clear.join('\n                ')}`);
    const names = Object.keys(sealedHeaders);
    lines.push(`sealed headers: ${names.length ? names.map((n) => `${n}: ${short(sealedHeaders[n], 40)}`).join(', ') : '(none)'}`
      + '  (only inside x-mte-relay-eh)');
    lines.push(`request body:   ${plainBytes} bytes plaintext -> ${e.requestBytes} bytes sealed on the wire`);
    lines.push(`answer:         ${e.status} ${e.statusText || ''}, ${e.responseBytes} bytes sealed -> `
      + `${answerBytes} bytes decrypted; clear headers `
      + e.responseHeaders.map(([n]) => n).join(', '));
    // A needle is a string (looked for in the URL, the headers and the body) or
    // {label, bytes} (looked for in the body).
    const label = (needle) => (typeof needle === 'string' ? JSON.stringify(short(needle, 24)) : needle.label);
    const seen = needles.filter((needle) => {
      if (typeof needle !== 'string') return contains(e.body, needle.bytes);
      return e.url.href.includes(needle) || e.headers.some(([n, v]) => n.includes(needle) || v.includes(needle))
        || contains(e.body, encoder.encode(needle));
    });
    const body = e.body ? '' : ' (body streamed, not checked here)';
    lines.push(`plaintext found on the wire: ${seen.length ? seen.map(label).join(', ') : 'none'}${body}`
      + ` (looked for: ${needles.map(label).join(', ')})`);
  }
  if (!entries.some(isSealed)) lines.push('no sealed request was sent');
  return lines.join('\n');
}

async function showAnswer(prefix, response, elapsed) {
  const bytes = new Uint8Array(await response.arrayBuffer());
  answerBytes = bytes.length;
  const text = new TextDecoder().decode(bytes);
  let shown = text;
  try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch { /* not JSON */ }
  const good = response.status < 400;
  const status = $(`${prefix}-status`);
  status.textContent = `${response.status} ${response.statusText} (decrypted, ${elapsed} ms)`;
  status.className = `status ${good ? 'ok' : 'fail'}`;
  const headers = [...response.headers].map(([n, v]) => `${n}: ${v}`).join('\n');
  $(`${prefix}-answer`).textContent = `${headers}\n\n${shown}`;
  return text;
}

function showError(prefix, error) {
  $(`${prefix}-result`).hidden = false;
  const status = $(`${prefix}-status`);
  status.className = 'status fail';
  if (error && error.name === 'MteRelayError') {
    status.textContent = `relay error ${error.code}: ${error.message} (reached the upstream: ${error.upstreamReached})`;
  } else {
    status.textContent = `failed: ${error && error.name}: ${error && error.message}`;
    if (!wireLog.length) relayStatus(`cannot use ${$('relay-url').value}: ${error && error.message}`, false);
  }
  $(`${prefix}-answer`).textContent = '';
  $(`${prefix}-wire`).textContent = wireLog.length ? wireReport(wireLog, {}, 0, []) : '(nothing was sent)';
}

// ---- the relay ---------------------------------------------------------------

function relayStatus(text, good = null) {
  const el = $('relay-status');
  el.textContent = text;
  el.className = `status ${good === null ? '' : good ? 'ok' : 'fail'}`;
}

/** The client for the relay in the field: loaded from that relay, then initialised (pairs). */
async function ensureClient() {
  const typed = $('relay-url').value.trim();
  const url = new URL(typed); // a TypeError names a bad URL
  const base = url.origin + url.pathname.replace(/\/+$/, '');
  let client = clients.get(base);
  if (!client) {
    const source = `${base}/public/mte-relay-browser.js`;
    relayStatus(`loading the client from ${source} ...`);
    const module = await import(source);
    wireLog = [];
    const pathPrefix = url.pathname.replace(/\/+$/, '');
    const info = await module.initMteRelayClient({ relayUrl: url.origin, pathPrefix, fetch: recordingFetch });
    client = { module, base, info, pairing: wireLog.map((e) => `${e.method} ${e.url.pathname} -> ${e.status}`) };
    clients.set(base, client);
  }
  relayStatus(`connected to ${client.base}: client loaded from its /public/, paired `
    + `(${client.pairing.join(', ')}), client id ${client.info.clientId.slice(0, 8)}...`, true);
  return client;
}

async function connect() {
  try {
    await ensureClient();
  } catch (error) {
    relayStatus(`cannot use ${$('relay-url').value}: ${error.name}: ${error.message}`
      + ` (is it a relay, reachable, with this page's origin ${location.origin} in its CORS_ORIGINS?)`, false);
  }
}

// ---- Login ---------------------------------------------------------------------

async function login(user, password) {
  $('login-user').value = user;
  $('login-password').value = password;
  $('login-status').textContent = 'sending ...';
  try {
    const client = await ensureClient();
    wireLog = [];
    const form = new URLSearchParams({ user, password });
    const init = { method: 'POST', body: form };
    const sealed = Object.fromEntries(new Request(location.href, init).headers);
    const started = performance.now();
    const response = await client.module.mteFetch(`${client.base}/api/login`, init);
    await showAnswer('login', response, Math.round(performance.now() - started));
    $('login-wire').textContent = wireReport(wireLog, sealed, byteLength(form), ['/api/login', 'password=', password]);
    $('login-result').hidden = false;
  } catch (error) {
    showError('login', error);
  }
}

// ---- File Upload ---------------------------------------------------------------

function setProgress(fraction, text) {
  const bar = $('upload-progress');
  if (fraction === null) bar.removeAttribute('value');
  else bar.value = fraction;
  $('upload-phase').textContent = text;
}

async function upload(file) {
  if (!file) {
    setProgress(0, 'choose a file first');
    return;
  }
  $('upload-status').textContent = 'sending ...';
  try {
    const client = await ensureClient();
    wireLog = [];
    setProgress(0, `sealing ${file.size} bytes ...`);
    const headers = { 'content-type': file.type || 'application/octet-stream', 'x-file-name': encodeURIComponent(file.name) };
    const head = new Uint8Array(await file.slice(0, 48).arrayBuffer());
    const needles = ['/api/upload', 'x-file-name', file.name];
    if (head.length >= 16) needles.push({ label: `the file's first ${head.length} bytes`, bytes: head });
    const started = performance.now();
    progressListener = (loaded, total) => setProgress(total ? loaded / total : null,
      `sending: ${loaded} of ${total ?? '?'} sealed bytes`);
    let response;
    try {
      response = await client.module.mteFetch(`${client.base}/api/upload`, { method: 'POST', body: file, headers });
    } finally {
      progressListener = null;
    }
    setProgress(1, 'decrypting the answer ...');
    await showAnswer('upload', response, Math.round(performance.now() - started));
    setProgress(1, `done: ${response.status} ${response.statusText}`);
    $('upload-wire').textContent = wireReport(wireLog, headers, file.size, needles);
    $('upload-result').hidden = false;
  } catch (error) {
    setProgress(0, 'failed');
    showError('upload', error);
  }
}

/** A text file of `size` bytes, put into the file picker as if chosen there. */
function demoFile(name, size) {
  const line = 'mterelay demo upload, a line of plaintext that must never travel in clear\n';
  const text = line.repeat(Math.ceil(size / line.length)).slice(0, size);
  const file = new File([text], name, { type: 'text/plain' });
  const transfer = new DataTransfer();
  transfer.items.add(file);
  $('upload-file').files = transfer.files;
  return file;
}

// ---- wiring --------------------------------------------------------------------

async function start() {
  let relayUrl = 'http://127.0.0.1:8080';
  try {
    const config = await (await fetch('config.json', { cache: 'no-store' })).json();
    if (config.relayUrl) relayUrl = config.relayUrl;
    if (config.uploadLimit) uploadLimit = config.uploadLimit;
  } catch { /* served without config.json: keep the defaults */ }
  relayUrl = new URLSearchParams(location.search).get('relay') || relayUrl;
  $('relay-url').value = relayUrl;
  $('upload-limit').textContent = `${uploadLimit} bytes`;
  $('relay-form').addEventListener('submit', (event) => { event.preventDefault(); connect(); });
  $('relay-url').addEventListener('change', () => relayStatus('not connected'));
  $('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    login($('login-user').value, $('login-password').value);
  });
  $('login-success').addEventListener('click', () => login('demo', 'demo-password'));
  $('login-failure').addEventListener('click', () => login('demo', 'not-the-password'));
  $('upload-form').addEventListener('submit', (event) => {
    event.preventDefault();
    upload($('upload-file').files[0]);
  });
  $('upload-success').addEventListener('click', () => upload(demoFile('small.txt', 200 * 1024)));
  $('upload-failure').addEventListener('click', () => upload(demoFile('too-big.txt', uploadLimit + 256 * 1024)));
  document.body.dataset.ready = 'true';
}

start();
