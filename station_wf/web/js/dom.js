// DOM and formatting helpers shared by every view. No framework: elements are built with h().

const PROPS = new Set(['value', 'checked', 'disabled', 'selected', 'hidden', 'indeterminate', 'open']);

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  if (!attrs) return;
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || (v === false && !PROPS.has(k))) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (PROPS.has(k)) el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

// -- states: loading, empty, error ------------------------------------------------------------
export function loading(text = 'Loading…') {
  return h('div', { class: 'state state-loading', role: 'status' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), text);
}

export function empty(title, detail) {
  return h('div', { class: 'state state-empty' }, h('strong', null, title), detail ? h('p', null, detail) : null);
}

export function errorState(err, retry) {
  if (err && err.status === 401) return h('div'); // the token screen takes over
  const msg = err && err.message ? err.message : String(err);
  if (err && err.status === 404) {
    return h('div', { class: 'state state-empty', role: 'alert' }, h('strong', null, 'Not found'), h('p', null, msg),
      h('a', { href: '#/workflows', class: 'btn' }, 'Go to workflows'));
  }
  return h('div', { class: 'state state-error', role: 'alert' },
    h('strong', null, err && err.status === 404 ? 'Not found' : 'Something went wrong'),
    h('p', null, msg),
    err && err.requestId ? h('p', { class: 'muted small' }, 'request id ', h('code', null, err.requestId)) : null,
    retry ? h('button', { type: 'button', class: 'btn', onclick: retry }, 'Retry') : null);
}

// -- formatting -------------------------------------------------------------------------------
export function parseTime(iso) {
  if (!iso) return null;
  // The daemon writes microseconds; Date.parse is only required to read milliseconds.
  const t = Date.parse(String(iso).replace(/(\.\d{3})\d+/, '$1'));
  return Number.isNaN(t) ? null : t;
}

const pad = (n, w = 2) => String(n).padStart(w, '0');

export function fmtTime(iso, { ms = false, date = true } = {}) {
  const t = parseTime(iso);
  if (t == null) return '—';
  const d = new Date(t);
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}${ms ? '.' + pad(d.getMilliseconds(), 3) : ''}`;
  return date ? `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}` : time;
}

export function relTime(iso) {
  const t = parseTime(iso);
  if (t == null) return 'never';
  const sec = Math.round((Date.now() - t) / 1000);
  const future = sec < 0;
  const a = Math.abs(sec);
  let text;
  if (a < 5) return 'just now';
  if (a < 60) text = `${a} s`;
  else if (a < 3600) text = `${Math.round(a / 60)} min`;
  else if (a < 86400) text = `${Math.round(a / 3600)} h`;
  else text = `${Math.round(a / 86400)} d`;
  return future ? `in ${text}` : `${text} ago`;
}

export function timeEl(iso) {
  return h('time', { datetime: iso || '', title: fmtTime(iso) }, relTime(iso));
}

export function fmtDuration(ms) {
  if (ms == null || Number.isNaN(ms)) return '—';
  if (ms < 0) ms = 0;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const sec = ms / 1000;
  if (sec < 60) return `${sec.toFixed(sec < 10 ? 2 : 1)} s`;
  const m = Math.floor(sec / 60);
  if (m < 60) return `${m} m ${pad(Math.floor(sec % 60))} s`;
  const hr = Math.floor(m / 60);
  if (hr < 48) return `${hr} h ${pad(m % 60)} m`;
  return `${Math.floor(hr / 24)} d ${hr % 24} h`;
}

/** Duration between two ISO times; a missing end means "still going" (measured to now). */
export function durationBetween(startIso, endIso) {
  const a = parseTime(startIso);
  if (a == null) return null;
  const b = endIso ? parseTime(endIso) : Date.now();
  return b == null ? null : b - a;
}

export function shortId(id) {
  return id ? String(id).slice(0, 8) : '';
}

export const TERMINAL = new Set(['COMPLETED', 'FAILED', 'CANCELLED', 'TIMED_OUT']);
export const ACTIVE = ['PENDING', 'RUNNING', 'WAITING_APPROVAL', 'WAITING_SIGNAL', 'PAUSED'];

export function statusLabel(status) {
  return String(status || 'unknown').replace(/_/g, ' ').toLowerCase();
}

export function badge(status, extra = '') {
  const st = String(status || 'unknown');
  return h('span', { class: `badge st-${st.toLowerCase().replace(/_/g, '-')} ${extra}`.trim(), dataset: { status: st } }, statusLabel(st));
}

export function truncate(text, n) {
  text = String(text ?? '');
  return text.length > n ? text.slice(0, n - 1) + '…' : text;
}

export function preview(value, n = 80) {
  if (value === undefined) return '';
  let text;
  try { text = JSON.stringify(value); } catch { text = String(value); }
  return truncate(text, n);
}

export function prettyJson(value) {
  try { return JSON.stringify(value, null, 2); } catch { return String(value); }
}

// -- toasts --------------------------------------------------------------------------------------
export function toast(message, kind = 'info', ms = 4000) {
  const host = document.getElementById('toasts');
  if (!host) return;
  const el = h('div', { class: `toast toast-${kind}` }, message);
  host.append(el);
  setTimeout(() => el.remove(), ms);
}

/** Debounce: at most one call per `ms`, trailing. */
export function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => { timer = null; fn(...args); }, ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

/** Throttle: runs at most once per `ms` while calls keep coming (and once more after the last). */
export function throttle(fn, ms) {
  let timer = null;
  let last = 0;
  const wrapped = () => {
    if (timer) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(() => { timer = null; last = Date.now(); fn(); }, wait);
  };
  wrapped.cancel = () => { clearTimeout(timer); timer = null; };
  return wrapped;
}

export function download(filename, text, type = 'application/json') {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h('a', { href: url, download: filename, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** A row of tab links; `hrefOf(key)` gives each tab's address (tabs are routes). */
export function tabs(items, current, hrefOf) {
  return h('nav', { class: 'tabs', 'aria-label': 'Sections' },
    items.map(([key, label]) => h('a', {
      class: 'tab' + (key === current ? ' active' : ''), 'aria-current': key === current ? 'page' : null,
      href: hrefOf(key), dataset: { tab: key },
    }, label)));
}
