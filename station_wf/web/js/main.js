// The shell: hash routing (#/workflows, #/workflows/{id}[/{tab}], #/runs/{id}, #/approvals), the
// token screen shown whenever the API answers 401, the approvals badge and the live indicator.
import { h, clear, throttle } from './dom.js';
import { auth, get, hub } from './api.js';
import { workflowsView } from './views/workflows.js';
import { workflowView } from './views/workflow.js';
import { runView } from './views/run.js';
import { approvalsView } from './views/approvals.js';
import { webhooksView } from './views/webhooks.js';

const app = document.getElementById('app');
const ROUTES = [
  [/^#\/workflows\/?$/, 'workflows', () => workflowsView],
  [/^#\/workflows\/([^/]+)(?:\/(overview|runs|definition|versions))?\/?$/, 'workflows', () => workflowView],
  [/^#\/runs\/([^/]+)\/?$/, 'runs', () => runView],
  [/^#\/approvals\/?$/, 'approvals', () => approvalsView],
  [/^#\/webhooks\/?$/, 'webhooks', () => webhooksView],
];

let current = null; // {dispose, ctrl}
let locked = false;  // the token screen is up

function notFound(ctx) {
  ctx.el.append(h('div', { class: 'state state-empty' }, h('strong', null, 'Page not found'),
    h('p', null, 'Nothing lives at ', h('code', null, location.hash), '. '), h('a', { href: '#/workflows', class: 'btn' }, 'Go to workflows')));
}

function teardown() {
  if (!current) return;
  current.ctrl.abort();
  for (const fn of current.disposers) {
    try { fn(); } catch { /* a view's cleanup must not break navigation */ }
  }
  current = null;
}

function route() {
  if (!location.hash || location.hash === '#' || location.hash === '#/') {
    history.replaceState(null, '', '#/workflows');
  }
  teardown();
  if (locked) return;
  const hash = location.hash;
  let view = notFound;
  let section = null;
  let params = [];
  for (const [re, nav, load] of ROUTES) {
    const m = hash.match(re);
    if (m) {
      view = load();
      section = nav;
      params = m.slice(1).map((p) => (p == null ? p : decodeURIComponent(p)));
      break;
    }
  }
  document.querySelectorAll('[data-nav]').forEach((a) => a.classList.toggle('active', a.dataset.nav === section));
  const ctrl = new AbortController();
  const el = h('div', { class: 'view' });
  clear(app, el);
  current = { ctrl, disposers: [] };
  const ctx = {
    el,
    params,
    signal: ctrl.signal,
    onDispose: (fn) => current && current.ctrl === ctrl && current.disposers.push(fn),
    get alive() { return !ctrl.signal.aborted; },
  };
  Promise.resolve()
    .then(() => view(ctx))
    .catch((e) => {
      if (e && (e.name === 'AbortError' || e.status === 401)) return;
      console.warn('view failed', e); // eslint-disable-line no-console
    });
  window.scrollTo(0, 0);
}

// -- the token screen ------------------------------------------------------------------------------
function showTokenScreen(rejected) {
  if (locked) return;
  locked = true;
  teardown();
  hub.stop();
  const input = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'current-password', required: true, spellcheck: 'false' });
  const err = h('div', { class: 'field-error', role: 'alert', hidden: !rejected }, rejected ? 'That token was not accepted. Check it and try again.' : '');
  const submit = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Continue');
  const form = h('form', {
    class: 'card token-card', onsubmit: async (ev) => {
      ev.preventDefault();
      const token = input.value.trim();
      if (!token) { err.textContent = 'Enter a token.'; err.hidden = false; return; }
      submit.disabled = true;
      auth.set(token);
      try {
        await get('/workflows');
      } catch (e) {
        submit.disabled = false;
        if (e.status === 401) {
          auth.clear();
          err.textContent = 'That token was not accepted. Check it and try again.';
          err.hidden = false;
          input.select();
          return;
        }
      }
      unlock();
    },
  },
  h('h1', null, 'Sign in'),
  h('p', null, 'This daemon requires an API token (', h('code', null, 'STATION_API_TOKEN'), ' or an entry of ', h('code', null, 'STATION_API_TOKENS_FILE'), ').'),
  h('p', { class: 'muted small' }, 'The token is kept in this browser tab only (session storage) and sent in the Authorization header.'),
  h('div', { class: 'field' }, h('label', { for: 'token' }, 'API token'), input, err),
  h('div', { class: 'form-actions' }, submit));
  clear(app, h('div', { class: 'view view-narrow' }, form));
  updateSignout();
  input.focus();
}

function unlock() {
  locked = false;
  updateSignout();
  startLive();
  route();
}

function updateSignout() {
  const btn = document.getElementById('signout');
  btn.hidden = !auth.token;
}

// -- the approvals badge and the live indicator ---------------------------------------------------
const badge = document.getElementById('approvals-count');
const refreshBadge = throttle(async () => {
  try {
    const res = await get('/workflow-approvals?status=pending');
    const n = res.approvals.length;
    badge.textContent = String(n);
    badge.hidden = n === 0;
    badge.title = `${n} pending approval${n === 1 ? '' : 's'}`;
  } catch { /* the badge is a convenience: errors show on the pages themselves */ }
}, 250);

const conn = document.getElementById('conn');
const CONN_TEXT = { live: 'live', reconnecting: 'reconnecting…', idle: '', unauthorized: '', gone: '', ended: '' };
hub.onState((state) => {
  conn.dataset.state = state;
  conn.textContent = CONN_TEXT[state] ?? '';
  conn.title = state === 'live' ? 'Receiving live updates' : state === 'reconnecting' ? 'Live updates interrupted; reconnecting' : '';
});
hub.subscribe((event) => {
  if (event.type.startsWith('approval.') || event.type === 'run.cancelled' || event.type === 'run.failed' || event.type === 'run.timed_out') refreshBadge();
});

function startLive() {
  hub.start();
  refreshBadge();
}

window.addEventListener('station:unauthorized', () => showTokenScreen(Boolean(auth.token)));
window.addEventListener('hashchange', route);
document.getElementById('signout').addEventListener('click', () => {
  auth.clear();
  showTokenScreen(false);
});

// A handle for tests and for the curious: drop the live connections as a network failure would.
window.__station = {
  dropStreams() {
    hub.drop();
    window.dispatchEvent(new CustomEvent('station:drop-streams'));
  },
  get hubConnects() { return hub.connects; },
};

updateSignout();
startLive();
route();
