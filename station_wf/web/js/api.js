// The REST API and the SSE streams, and nothing else: every request carries the bearer token (when
// one is set) in the Authorization header, streams included. Streams are read with fetch() rather
// than EventSource so that the token never goes into a URL and so that a 401 is visible.

const TOKEN_KEY = 'station.token';
const BASE = '/api/v1';

export const auth = {
  get token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
  },
  set(token) {
    try { sessionStorage.setItem(TOKEN_KEY, token); } catch { /* private mode: keep for this page only */ }
    window.dispatchEvent(new CustomEvent('station:token'));
  },
  clear() {
    try { sessionStorage.removeItem(TOKEN_KEY); } catch { /* ignore */ }
    window.dispatchEvent(new CustomEvent('station:token'));
  },
};

export class ApiError extends Error {
  constructor(status, body, fallback) {
    const err = body && body.error ? body.error : null;
    super(err && err.message ? err.message : fallback || `HTTP ${status}`);
    this.status = status;
    this.code = err ? err.code : null;
    this.details = err ? err.details : null;
    this.requestId = err ? err.request_id : null;
  }
}

function headers(extra) {
  const out = { Accept: 'application/json', ...extra };
  const token = auth.token;
  if (token) out.Authorization = `Bearer ${token}`;
  return out;
}

function unauthorized() {
  window.dispatchEvent(new CustomEvent('station:unauthorized'));
}

export async function api(method, path, body, { signal } = {}) {
  const init = { method, headers: headers(body !== undefined ? { 'Content-Type': 'application/json' } : {}), signal, cache: 'no-store' };
  if (body !== undefined) init.body = JSON.stringify(body);
  let resp;
  try {
    resp = await fetch(BASE + path, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, null, `Cannot reach the daemon (${e.message}).`);
  }
  const text = await resp.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (resp.status === 401) {
    unauthorized();
    throw new ApiError(401, data, 'An API token is required.');
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

export const get = (path, opts) => api('GET', path, undefined, opts);
export const post = (path, body, opts) => api('POST', path, body ?? {}, opts);

export const q = (params) => {
  const sp = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v != null && v !== '') sp.set(k, String(v));
  const text = sp.toString();
  return text ? `?${text}` : '';
};

/** Every event of a run (the events endpoint pages by afterSeq). */
export async function allEvents(runId, opts = {}) {
  const out = [];
  let after = opts.afterSeq || 0;
  for (let i = 0; i < 1000; i++) {
    const page = await get(`/workflow-runs/${encodeURIComponent(runId)}/events${q({ afterSeq: after, limit: 1000 })}`, opts);
    out.push(...page.events);
    if (page.nextAfterSeq == null) break;
    after = page.nextAfterSeq;
  }
  return out;
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
});

/**
 * A Server-Sent Events reader over fetch: parses `id`, `event` and `data` fields, remembers the last
 * id and reconnects with `Last-Event-ID` (backing off up to 5 s) whenever the connection drops, so
 * nothing is missed and nothing is seen twice. `isFinal(event)` marks the event after which the
 * server ends the stream on purpose (a run's terminal event): then it does not reconnect.
 */
export class EventStream {
  constructor(path, { onEvent, onState, lastId = null, isFinal = () => false }) {
    this.path = path;
    this.onEvent = onEvent;
    this.onState = onState || (() => {});
    this.lastId = lastId;
    this.isFinal = isFinal;
    this.state = 'idle';
    this.stopped = true;
    this.finished = false;
    this.connects = 0;
    this.received = 0;
    this.ctrl = null;
    this.life = null;
  }

  start() {
    if (!this.stopped) return this;
    this.stopped = false;
    this.life = new AbortController();
    this.loop();
    return this;
  }

  stop() {
    this.stopped = true;
    this.life?.abort();
    this.ctrl?.abort();
    this.setState('idle');
  }

  /** Drop the current connection as a network failure would (the reader reconnects and resumes). */
  drop() {
    this.ctrl?.abort();
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.onState(state);
  }

  async loop() {
    let backoff = 500;
    while (!this.stopped && !this.finished) {
      this.ctrl = new AbortController();
      const before = this.received;
      let clean = false;
      try {
        const extra = { Accept: 'text/event-stream' };
        if (this.lastId != null) extra['Last-Event-ID'] = String(this.lastId);
        const resp = await fetch(BASE + this.path, { headers: headers(extra), signal: this.ctrl.signal, cache: 'no-store' });
        if (resp.status === 401) {
          unauthorized();
          this.stopped = true;
          this.setState('unauthorized');
          return;
        }
        if (resp.status === 404) {
          this.stopped = true;
          this.setState('gone');
          return;
        }
        if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}`);
        this.connects += 1;
        this.setState('live');
        await this.read(resp.body);
        clean = true;
      } catch (e) {
        if (this.stopped) return;
      }
      if (this.stopped) return;
      if (this.finished) break;
      this.setState('reconnecting');
      // A connection that delivered events is resumed at once (after a short pause); one that failed
      // or ended empty backs off, doubling up to 5 s.
      if (this.received > before) backoff = 500;
      const delivered = this.received > before && clean;
      await sleep(delivered ? 250 : backoff, this.life.signal);
      if (!delivered) backoff = Math.min(backoff * 2, 5000);
    }
    if (this.finished) this.setState('ended');
  }

  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    let ev = { id: null, event: null, data: [] };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += value;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          let line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.endsWith('\r')) line = line.slice(0, -1);
          if (line === '') {
            if (ev.data.length) this.dispatch(ev);
            ev = { id: null, event: null, data: [] };
            if (this.finished) return;
            continue;
          }
          if (line.startsWith(':')) continue; // a comment (keep-alive ping)
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? '' : line.slice(colon + 1);
          if (val.startsWith(' ')) val = val.slice(1);
          if (field === 'data') ev.data.push(val);
          else if (field === 'event') ev.event = val;
          else if (field === 'id') ev.id = val;
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  dispatch(ev) {
    let data;
    try { data = JSON.parse(ev.data.join('\n')); } catch { return; }
    if (ev.id != null && ev.id !== '') this.lastId = ev.id;
    this.received += 1;
    const event = { type: ev.event || data.type || 'message', id: ev.id, data };
    if (this.isFinal(event)) this.finished = true;
    try {
      this.onEvent(event);
    } catch (e) {
      console.warn('stream listener failed', e); // eslint-disable-line no-console
    }
  }
}

// -- the global stream, shared by the whole app (approvals badge, inbox, lists) --------------------
const listeners = new Set();
let globalStream = null;
let globalState = 'idle';
const stateListeners = new Set();

export const hub = {
  start() {
    if (globalStream && !globalStream.stopped) return;
    globalStream = new EventStream('/workflow-runs/stream', {
      lastId: globalStream ? globalStream.lastId : null,
      onEvent: (event) => listeners.forEach((fn) => fn(event)),
      onState: (state) => { globalState = state; stateListeners.forEach((fn) => fn(state)); },
    });
    globalStream.start();
  },
  stop() {
    globalStream?.stop();
  },
  drop() {
    globalStream?.drop();
  },
  get state() { return globalState; },
  get connects() { return globalStream ? globalStream.connects : 0; },
  subscribe(fn) {
    listeners.add(fn);
    return () => listeners.delete(fn);
  },
  onState(fn) {
    stateListeners.add(fn);
    return () => stateListeners.delete(fn);
  },
};

export const del = (path, opts) => api('DELETE', path, undefined, opts);
