// Where the signed client id of each relay origin is kept between page loads: any
// object with getItem/setItem/removeItem (the Web Storage shape). localStorage in a
// browser, so a reload keeps its id (and the relay's per-id budget); memory elsewhere.

export const STORAGE_PREFIX = 'mteRelay.clientId:';

/** A Web-Storage-shaped object backed by a Map (Node, tests, private modes). */
export function memoryStorage() {
  const map = new Map();
  return {
    getItem: (k) => (map.has(k) ? map.get(k) : null),
    setItem: (k, v) => { map.set(k, String(v)); },
    removeItem: (k) => { map.delete(k); },
  };
}

/** localStorage when it exists and works (it throws in some private modes), else memory. */
export function defaultStorage() {
  try {
    const ls = globalThis.localStorage;
    if (ls) {
      const probe = `${STORAGE_PREFIX}probe`;
      ls.setItem(probe, '1');
      ls.removeItem(probe);
      return ls;
    }
  } catch {
    // fall through to memory
  }
  return memoryStorage();
}

export function checkStorage(storage) {
  for (const m of ['getItem', 'setItem', 'removeItem']) {
    if (!storage || typeof storage[m] !== 'function') {
      throw new TypeError(`storage must have getItem/setItem/removeItem (missing ${m})`);
    }
  }
  return storage;
}

/** The client id store of one origin; a failing storage never fails a request. */
export function clientIdStore(storage, origin) {
  const key = STORAGE_PREFIX + origin;
  return {
    get() {
      try { return storage.getItem(key); } catch { return null; }
    },
    set(id) {
      try { storage.setItem(key, id); } catch { /* kept in memory by the pool */ }
    },
    remove() {
      try { storage.removeItem(key); } catch { /* nothing to remove */ }
    },
  };
}
