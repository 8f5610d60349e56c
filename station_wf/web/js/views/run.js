// #/runs/{id}: status, duration and controls; the step timeline (nested by branch and iteration);
// the context with the keys each step wrote; approvals; the event log. Live from the run's SSE
// stream: every event is appended to the log and triggers a (coalesced) re-read of the run; after
// a dropped connection the stream resumes from the last event id it saw.
import {
  h, clear, loading, empty, errorState, badge, fmtTime, fmtDuration, durationBetween, shortId, throttle,
  toast, download, TERMINAL, timeEl, preview, parseTime,
} from '../dom.js';
import { get, post, allEvents, EventStream } from '../api.js';
import { jsonTree, jsonBlock, pathKey } from '../jsontree.js';
import { diagram } from '../diagram.js';
import { approvalCard, decidedApproval } from './approvals.js';
import { lineageEl, rerunButtons } from './lineage.js';

const TERMINAL_EVENTS = new Set(['run.completed', 'run.failed', 'run.cancelled', 'run.timed_out']);
const OPEN = new Set(['PENDING', 'SCHEDULED', 'RUNNING', 'WAITING_APPROVAL', 'WAITING_SIGNAL']);

// -- context paths (the engine's syntax: a.b, a[0], a["x.y"], $. and ctx. prefixes) -------------------
export function parsePath(path) {
  let text = String(path ?? '').trim();
  if (text === '' || text === '$' || text === 'ctx') return [];
  for (const p of ['$', 'ctx']) {
    if (text.startsWith(p) && (text[p.length] === '.' || text[p.length] === '[')) {
      text = text.slice(p.length).replace(/^\./, '');
      break;
    }
  }
  const segs = [];
  const re = /\[\s*(?:"([^"]*)"|'([^']*)'|(-?\d+))\s*\]|([^.[\]]+)/g;
  let m;
  while ((m = re.exec(text))) {
    if (m[1] != null) segs.push(m[1]);
    else if (m[2] != null) segs.push(m[2]);
    else if (m[3] != null) segs.push(Number(m[3]));
    else segs.push(/^\d+$/.test(m[4]) ? Number(m[4]) : m[4]);
  }
  return segs;
}

function frameOf(frame) {
  let m = frame.match(/^(.*)\[(\d+)\]$/);
  if (m) return { kind: 'foreach', name: m[1], key: Number(m[2]) };
  if (frame.includes('!')) {
    const [name, section] = frame.split('!');
    return { kind: 'try', name, key: section };
  }
  m = frame.match(/^([^:]*):(.*)$/);
  if (m) return { kind: 'parallel', name: m[1], key: m[2] };
  return { kind: 'scope', name: frame, key: null };
}

/** Where in the root context each step's write landed: [{stepId, seq, segs}] (nested scopes resolved). */
export function contextWrites(steps, events) {
  const writes = [];
  const byStep = new Map();
  for (const e of events) {
    if (e.type !== 'step.succeeded' || !e.payload || !e.payload.write) continue;
    const value = 'value' in e.payload.write ? e.payload.write.value : e.payload.output; // older events carried it twice
    const w = { stepId: e.stepId, seq: e.seq, scope: e.payload.write.scope || '', path: e.payload.write.path, value };
    writes.push(w);
    byStep.set(e.stepId, w);
  }
  const containerStep = new Map(); // `${parentScope}\u0000${name}` -> stepId (latest)
  for (const st of steps) containerStep.set(`${st.branchPath || ''}\u0000${st.stateName}`, st.stepId);
  const memo = new Map();
  const rootOf = (scope) => {
    if (!scope) return [];
    if (memo.has(scope)) return memo.get(scope);
    const frames = scope.split('/');
    const last = frameOf(frames.pop());
    const parent = frames.join('/');
    let out = null;
    if (last.kind === 'try') out = rootOf(parent);
    else {
      const sid = containerStep.get(`${parent}\u0000${last.name}`);
      const cw = sid && byStep.get(sid);
      const base = cw && rootOf(cw.scope);
      if (base && cw.path != null) out = [...base, ...parsePath(cw.path), last.key];
    }
    memo.set(scope, out);
    return out;
  };
  const out = [];
  for (const w of writes) {
    const base = rootOf(w.scope);
    if (!base) continue;
    const segs = [...base, ...parsePath(w.path)];
    if (!segs.length && w.value && typeof w.value === 'object' && !Array.isArray(w.value)) {
      for (const k of Object.keys(w.value)) out.push({ stepId: w.stepId, seq: w.seq, segs: [k] });
    } else if (segs.length) out.push({ stepId: w.stepId, seq: w.seq, segs });
  }
  return out;
}

/** The definition of the state a step runs (its scope walked down from the top level), or null. */
// The agent's tool calls (issue 20): step metadata `toolCalls`, one row each, its arguments and result excerpt on open.
export function toolCallsEl(st) {
  const calls = (st.metadata && Array.isArray(st.metadata.toolCalls)) ? st.metadata.toolCalls : [];
  if (!calls.length) return null;
  return h('div', { class: 'tl-io tl-tools' }, h('div', { class: 'tl-io-label' }, `Tool calls (${calls.length})`),
    h('ol', { class: 'small tool-calls' }, calls.map((c) => h('li', { class: c.error ? 'tool-call tool-error' : 'tool-call', dataset: { tool: c.tool || '' } },
      h('details', null,
        h('summary', null, h('code', null, c.tool || '?'),
          c.server ? h('span', { class: 'muted' }, ` @ ${c.server}`) : null,
          c.agentPath && c.agentPath.length > 1 ? h('span', { class: 'muted' }, ` via ${c.agentPath.slice(1).join(' → ')}`) : null,
          ` · ${fmtDuration(c.durationMs)}`, c.error ? h('span', { class: 'tl-error' }, ` · ${c.error}`) : ` · ${c.resultBytes ?? 0} B`),
        h('div', { class: 'tl-io-label' }, 'Arguments'), jsonBlock(c.arguments ?? {}),
        c.excerpt ? [h('div', { class: 'tl-io-label' }, 'Result (excerpt)'), h('pre', { class: 'mono small' }, c.excerpt)] : null)))));
}

export function stateDef(defn, branchPath, name) {
  if (!defn) return null;
  let states = defn.states || {};
  for (const raw of branchPath ? branchPath.split('/') : []) {
    const f = frameOf(raw);
    const c = states[f.name];
    if (!c) return null;
    if (f.kind === 'parallel') states = ((c.branches || []).find((b) => b.name === f.key) || {}).states || {};
    else if (f.kind === 'foreach') states = (c.iterator || {}).states || {};
    else if (f.kind === 'try') states = (c[f.key] || {}).states || {};
    else return null;
  }
  return states[name] || null;
}

// -- the step tree ---------------------------------------------------------------------------------
/** Steps nested under their containers: [{step, groups: [{frame, label, items}]}]. */
export function stepTree(steps) {
  const root = [];
  const lists = new Map([['', root]]);
  const containers = new Map(); // `${scope}\u0000${name}` -> node
  const ordered = steps.map((st, i) => [st, i]).sort((a, b) => {
    const ta = parseTime(a[0].createdAt) ?? 0;
    const tb = parseTime(b[0].createdAt) ?? 0;
    return ta - tb || a[1] - b[1];
  }).map(([st]) => st);
  const listFor = (scope) => {
    if (lists.has(scope)) return lists.get(scope);
    const frames = scope.split('/');
    const lastRaw = frames.pop();
    const parent = frames.join('/');
    const f = frameOf(lastRaw);
    const parentList = listFor(parent);
    let container = containers.get(`${parent}\u0000${f.name}`);
    if (!container) {
      container = { step: null, name: f.name, groups: [] };
      parentList.push(container);
      containers.set(`${parent}\u0000${f.name}`, container);
    }
    let group = container.groups.find((g) => g.frame === lastRaw);
    if (!group) {
      const label = f.kind === 'foreach' ? `item ${f.key}` : f.kind === 'parallel' ? `branch ${f.key}` : f.kind === 'try' ? f.key : lastRaw;
      group = { frame: lastRaw, label, kind: f.kind, key: f.key, items: [] };
      container.groups.push(group);
      if (f.kind === 'foreach') container.groups.sort((a, b) => (a.key ?? 0) - (b.key ?? 0));
    }
    lists.set(scope, group.items);
    return group.items;
  };
  for (const st of ordered) {
    const scope = st.branchPath || '';
    const list = listFor(scope);
    const node = { step: st, name: st.stateName, groups: [] };
    const key = `${scope}\u0000${st.stateName}`;
    const prior = containers.get(key);
    if (prior && !prior.step) { // a placeholder made for children seen first
      prior.step = st;
      continue;
    }
    list.push(node);
    containers.set(key, node);
  }
  return root;
}

function groupStatus(items) {
  const st = items.map((n) => n.step && n.step.status).filter(Boolean);
  if (st.some((x) => OPEN.has(x))) return st.find((x) => OPEN.has(x));
  if (st.includes('FAILED')) return 'FAILED';
  if (st.includes('TIMED_OUT')) return 'TIMED_OUT';
  if (st.includes('CANCELLED')) return 'CANCELLED';
  return st.length ? st[st.length - 1] : 'PENDING';
}

// -- the view --------------------------------------------------------------------------------------
export async function runView(ctx) {
  const [runId] = ctx.params;
  const enc = encodeURIComponent(runId);
  const S = {
    run: null, events: [], seqs: new Set(), lastSeq: 0, approvals: [], defn: null,
    selected: null, expanded: new Set(), groupsOpen: new Map(), ctxCollapsed: new Set(), ctxExpanded: new Set(),
    evFilter: '', evOpen: new Set(), fresh: new Set(), streamState: 'idle',
  };
  const crumbs = h('div', { class: 'crumbs' }, h('a', { href: '#/workflows' }, 'Workflows'));
  const header = h('div', { class: 'run-head' }, loading('Loading the run…'));
  ctx.el.append(crumbs, header);

  try {
    const [run, events] = await Promise.all([
      get(`/workflow-runs/${enc}`, { signal: ctx.signal }),
      allEvents(runId, { signal: ctx.signal }),
    ]);
    S.run = run;
    for (const e of events) addEvent(e);
  } catch (e) {
    if (e.name === 'AbortError') return;
    clear(header, errorState(e.status === 404 ? Object.assign(new Error(`There is no run ${runId}.`), { status: 404 }) : e,
      () => window.dispatchEvent(new HashChangeEvent('hashchange'))));
    return;
  }

  crumbs.append(' / ', h('a', { href: `#/workflows/${encodeURIComponent(S.run.workflowId)}` }, S.run.workflowId), ' / ',
    h('a', { href: `#/workflows/${encodeURIComponent(S.run.workflowId)}/runs` }, 'runs'), ' / ', h('span', { class: 'mono' }, shortId(runId)));

  // Layout.
  const errorBox = h('div');
  const approvalsBox = h('section', { class: 'run-approvals', 'aria-label': 'Approvals' });
  const timelineBody = h('div', { class: 'timeline-wrap' });
  const ctxHead = h('div', { class: 'ctx-head muted small' });
  const ctxBody = h('div', { class: 'ctx-body' });
  const diagramBody = h('div');
  const evSelect = h('select', { id: 'event-type', 'aria-label': 'Filter events by type' });
  const evCount = h('span', { class: 'muted small', role: 'status' });
  const evBody = h('tbody');
  const evTable = h('table', { class: 'table table-compact events-table' },
    h('thead', null, h('tr', null, h('th', null, '#'), h('th', null, 'Time'), h('th', null, 'Type'), h('th', null, 'Step'), h('th', null, 'Details'))), evBody);
  const exportBtn = h('button', { type: 'button', class: 'btn btn-small', id: 'export-events' }, '⤓ Export JSON');
  ctx.el.append(errorBox, approvalsBox,
    h('div', { class: 'run-grid' },
      h('section', { class: 'card run-timeline' }, h('h2', null, 'Timeline'), timelineBody),
      h('section', { class: 'card run-context' }, h('div', { class: 'card-head' }, h('h2', null, 'Context'), ctxHead), ctxBody)),
    h('details', { class: 'card run-diagram', open: window.innerWidth > 700 }, h('summary', null, h('h2', null, 'Diagram')), diagramBody),
    h('section', { class: 'card run-events' },
      h('div', { class: 'card-head' }, h('h2', null, 'Events'), h('div', { class: 'toolbar toolbar-tight' }, evSelect, evCount, exportBtn)),
      h('div', { class: 'table-scroll' }, evTable)));

  // -- events ---------------------------------------------------------------------------------
  function addEvent(e) {
    if (S.seqs.has(e.seq)) return false;
    S.seqs.add(e.seq);
    S.events.push(e);
    if (e.seq > S.lastSeq) S.lastSeq = e.seq;
    return true;
  }

  const stepById = () => new Map((S.run.steps || []).map((st) => [st.stepId, st]));

  function eventSummary(e) {
    const p = e.payload || {};
    switch (e.type) {
      case 'step.failed': return `${p.error && (p.error.message || p.error.code) || 'failed'}${p.willRetry ? ' (will retry)' : ''}`;
      case 'step.cancelled': return p.reason || '';
      case 'step.succeeded':
        if (p.write) return `wrote ${p.write.path || '(root)'}`;
        if (p.output && typeof p.output === 'object' && typeof p.output.next === 'string') {
          return `→ ${p.output.next}${p.output.condition ? ` (if ${p.output.condition})` : ' (default)'}`;
        }
        return preview(p.output, 60);
      case 'step.scheduled': return `${p.stateType || ''}${p.branchPath ? ` in ${p.branchPath}` : ''}${p.attempt > 1 ? ` · attempt ${p.attempt}` : ''}${p.delaySeconds ? ` · in ${p.delaySeconds} s` : ''}`;
      case 'step.started': return `${p.executor || ''}${p.redelivered ? ' (redelivered)' : ''}`;
      case 'approval.requested': return p.message || '';
      case 'approval.decided': return `${p.decision || p.status || ''}${p.decidedBy ? ` by ${p.decidedBy}` : ''}${p.comment ? ` — ${p.comment}` : ''}`;
      case 'run.created': return `v${p.version ?? ''} ${preview(p.input, 50)}`;
      case 'run.failed': case 'run.timed_out': case 'run.cancelled': return p.error ? (p.error.message || p.error.code || '') : (p.reason || '');
      case 'signal.received': case 'signal.consumed': case 'signal.waiting': return `${p.name || p.signal || ''} ${p.payload !== undefined ? preview(p.payload, 40) : ''}`;
      default: return p && typeof p === 'object' && !Object.keys(p).length ? '' : preview(p, 60);
    }
  }

  function eventRow(e, steps) {
    const st = e.stepId ? steps.get(e.stepId) : null;
    const open = S.evOpen.has(e.seq);
    const cat = e.type.split('.')[0];
    const row = h('tr', { class: `ev ev-${cat} ev-${e.type.replace('.', '-')}`, dataset: { seq: e.seq, type: e.type } },
      h('td', { class: 'mono muted' }, e.seq),
      h('td', { class: 'mono small nowrap', title: fmtTime(e.time, { ms: true }) }, fmtTime(e.time, { ms: true, date: false })),
      h('td', null, h('span', { class: `ev-type ev-cat-${cat}` }, e.type)),
      stepCell(e, st),
      h('td', { class: 'small ev-details' },
        h('button', { type: 'button', class: 'link', 'aria-expanded': String(open), onclick: () => {
          if (S.evOpen.has(e.seq)) S.evOpen.delete(e.seq); else S.evOpen.add(e.seq);
          row.replaceWith(...eventRow(e, stepById()));
        } }, open ? '▾ ' : '▸ ', eventSummary(e) || 'payload')));
    if (!open) return [row];
    return [row, h('tr', { class: 'ev-payload' }, h('td', { colspan: 5 }, jsonBlock(e.payload), e.actor ? h('div', { class: 'muted small' }, `actor: ${e.actor}`) : null))];
  }

  function stepCell(e, st) {
    const td = h('td', { class: 'small ev-step', dataset: e.stepId && !st ? { pending: e.stepId } : {} });
    if (st) td.append(st.stateName, st.branchPath ? h('span', { class: 'muted' }, ` · ${st.branchPath}`) : '');
    else if (e.actor) td.append(h('span', { class: 'muted' }, e.actor));
    return td;
  }

  /** Rows appended live may name a step the last read of the run did not have yet: fill them in. */
  function fillEventSteps() {
    const pending = evBody.querySelectorAll('td[data-pending]');
    if (!pending.length) return;
    const steps = stepById();
    for (const td of pending) {
      const st = steps.get(td.dataset.pending);
      if (!st) continue;
      const e = { stepId: td.dataset.pending, actor: null };
      td.replaceWith(stepCell(e, st));
    }
  }

  function renderEventFilter() {
    const counts = new Map();
    for (const e of S.events) counts.set(e.type, (counts.get(e.type) || 0) + 1);
    const types = [...counts.keys()].sort();
    const sig = types.map((t) => `${t}:${counts.get(t)}`).join(',');
    if (evSelect.dataset.sig === sig) return;
    evSelect.dataset.sig = sig;
    clear(evSelect, h('option', { value: '' }, `All types (${S.events.length})`),
      types.map((t) => h('option', { value: t }, `${t} (${counts.get(t)})`)));
    evSelect.value = S.evFilter && counts.has(S.evFilter) ? S.evFilter : '';
  }

  const visibleEvents = () => (S.evFilter ? S.events.filter((e) => e.type === S.evFilter) : S.events);

  function renderEvents() {
    renderEventFilter();
    const steps = stepById();
    const shown = visibleEvents();
    evCount.textContent = S.evFilter ? `${shown.length} of ${S.events.length}` : `${S.events.length} events`;
    clear(evBody, shown.map((e) => eventRow(e, steps)));
    if (!shown.length) evBody.append(h('tr', null, h('td', { colspan: 5, class: 'muted' }, 'No events.')));
  }

  function appendEventRow(e) {
    renderEventFilter();
    const shown = visibleEvents();
    evCount.textContent = S.evFilter ? `${shown.length} of ${S.events.length}` : `${S.events.length} events`;
    if (S.evFilter && e.type !== S.evFilter) return;
    if (evBody.querySelector('td[colspan]') && evBody.children.length === 1) clear(evBody);
    evBody.append(...eventRow(e, stepById()));
  }

  evSelect.addEventListener('change', () => { S.evFilter = evSelect.value; renderEvents(); });
  exportBtn.addEventListener('click', () => {
    const shown = visibleEvents();
    const doc = { runId, workflowId: S.run.workflowId, exportedAt: new Date().toISOString(), filter: S.evFilter || null, events: shown };
    download(`run-${runId}-events${S.evFilter ? `-${S.evFilter}` : ''}.json`, JSON.stringify(doc, null, 2));
  });

  // -- header and controls --------------------------------------------------------------------
  const liveEl = h('span', { class: 'conn', dataset: { state: 'idle' } });
  const lineage = lineageEl(S.run, ctx.signal); // parent, re-run of, continued from/as, children
  let confirming = false;
  let confirmEl = null;
  function renderHeader() {
    const r = S.run;
    const terminal = TERMINAL.has(r.status);
    const busy = (btn, fn) => async () => {
      btn.disabled = true;
      try { await fn(); } catch (e) { if (e.status !== 401) toast(e.message, 'error', 6000); } finally { btn.disabled = false; }
    };
    const act = async (what, body) => {
      const res = await post(`/workflow-runs/${enc}/${what}`, body);
      if (res && res.status) S.run = { ...S.run, ...res };
      toast(`Run ${what === 'cancel' ? 'cancelled' : what === 'pause' ? 'paused' : 'resumed'}.`, 'ok');
      confirming = false;
      renderAll();
      scheduleRefresh();
    };
    const actions = h('div', { class: 'page-actions' });
    if (!terminal && r.status !== 'PAUSED') {
      const b = h('button', { type: 'button', class: 'btn', id: 'pause-run' }, 'Pause');
      b.onclick = busy(b, () => act('pause'));
      actions.append(b);
    }
    if (r.status === 'PAUSED') {
      const b = h('button', { type: 'button', class: 'btn btn-primary', id: 'resume-run' }, 'Resume');
      b.onclick = busy(b, () => act('resume'));
      actions.append(b);
    }
    if (!terminal) {
      actions.append(h('button', { type: 'button', class: 'btn btn-danger', id: 'cancel-run', onclick: () => { confirming = true; renderHeader(); } }, 'Cancel'));
    }
    actions.append(...rerunButtons(r, busy));
    // The confirm panel survives re-renders (events keep arriving while someone types a reason).
    if (confirming && !terminal && !confirmEl) {
      const reason = h('input', { type: 'text', id: 'cancel-reason', placeholder: 'Reason (optional)', 'aria-label': 'Reason for cancelling' });
      const yes = h('button', { type: 'button', class: 'btn btn-danger', id: 'confirm-cancel' }, 'Cancel run');
      yes.onclick = busy(yes, () => act('cancel', reason.value.trim() ? { reason: reason.value.trim() } : {}));
      confirmEl = h('div', { class: 'confirm', role: 'group', 'aria-label': 'Confirm cancel' },
        h('span', null, 'Cancel this run? Open steps are cancelled and agents are hung up on.'), reason, yes,
        h('button', { type: 'button', class: 'btn', onclick: () => { confirming = false; renderHeader(); } }, 'Keep running'));
      setTimeout(() => reason.focus(), 0);
    }
    if (!confirming || terminal) confirmEl = null;
    const confirm = confirmEl;
    const start = r.startedAt || r.createdAt;
    clear(header,
      h('div', { class: 'page-head' },
        h('div', null,
          h('h1', null, 'Run ', h('span', { class: 'mono', title: r.id }, shortId(r.id)), ' ', badge(r.status, 'badge-lg'), ' ', liveEl),
          h('div', { class: 'muted small run-meta' },
            h('a', { href: `#/workflows/${encodeURIComponent(r.workflowId)}` }, r.workflowId), ` v${r.workflowVersion}`,
            ' · created ', timeEl(r.createdAt),
            r.completedAt ? [' · finished ', h('span', { title: fmtTime(r.completedAt) }, fmtTime(r.completedAt))] : null,
            ' · duration ', h('strong', { class: 'run-duration', dataset: terminal ? {} : { since: start || '' } }, fmtDuration(durationBetween(start, r.completedAt)))),
          lineage),
        actions),
      confirm,
      h('details', { class: 'run-input' }, h('summary', { class: 'small' }, 'Input ', h('span', { class: 'mono muted' }, preview(r.input, 80))), jsonBlock(r.input)));
    clear(errorBox, r.error ? h('div', { class: `alert ${r.status === 'CANCELLED' ? 'alert-neutral' : 'alert-error'}`, role: 'alert' },
      h('strong', null, r.status === 'CANCELLED' ? 'Cancelled' : 'Error'), r.error.code ? h('code', null, ` ${r.error.code}`) : null,
      h('p', null, r.error.message || ''), r.error.stateName ? h('div', { class: 'small muted' }, `in ${r.error.stateName}${r.error.branchPath ? ` (${r.error.branchPath})` : ''}`) : null) : null);
  }

  // -- timeline -------------------------------------------------------------------------------
  const writesByStep = () => {
    const m = new Map();
    for (const w of contextWrites(S.run.steps || [], S.events)) (m.get(w.stepId) || m.set(w.stepId, []).get(w.stepId)).push(w.segs);
    return m;
  };

  function stepItem(node, writes) {
    const st = node.step;
    if (!st) { // children seen before their container (should not last)
      return h('li', { class: 'tl-item' }, h('div', { class: 'tl-dot' }), h('div', { class: 'tl-head' }, h('strong', null, node.name)), groupsEl(node, writes));
    }
    const key = `${st.stepId}:${st.attempt}`;
    const open = S.expanded.has(key);
    const cls = `tl-item st-${String(st.status).toLowerCase().replace(/_/g, '-')}${S.selected === st.stepId ? ' selected' : ''}`;
    const running = !st.completedAt && st.startedAt;
    const dur = durationBetween(st.startedAt, st.completedAt);
    const def = stateDef(S.defn, st.branchPath, st.stateName);
    const tag = st.executor || (def && def.action) || st.stateType;
    const wrote = writes.get(st.stepId) || [];
    const head = h('button', {
      type: 'button', class: 'tl-head', 'aria-expanded': String(open), onclick: () => {
        if (open) { S.expanded.delete(key); if (S.selected === st.stepId) S.selected = null; } else { S.expanded.add(key); S.selected = st.stepId; }
        renderTimeline();
        renderContext();
      },
    },
    h('span', { class: 'tl-name' }, st.stateName),
    h('span', { class: 'tl-tag' }, tag),
    badge(st.status),
    st.attempt > 1 ? h('span', { class: 'tl-attempt' }, `attempt ${st.attempt}`) : null,
    h('span', { class: 'tl-dur', dataset: running ? { since: st.startedAt } : {} }, st.startedAt ? fmtDuration(dur) : 'queued'),
    h('span', { class: 'tl-time muted', title: fmtTime(st.startedAt || st.createdAt) }, fmtTime(st.startedAt || st.createdAt, { date: false })));
    const body = open ? h('div', { class: 'tl-body' },
      h('dl', { class: 'meta meta-inline small' },
        h('dt', null, 'step'), h('dd', { class: 'mono' }, st.stepId),
        st.branchPath ? [h('dt', null, 'scope'), h('dd', { class: 'mono' }, st.branchPath)] : null,
        h('dt', null, 'attempt'), h('dd', null, String(st.attempt)),
        h('dt', null, 'started'), h('dd', null, fmtTime(st.startedAt, { ms: true })),
        h('dt', null, 'completed'), h('dd', null, fmtTime(st.completedAt, { ms: true }))),
      st.input !== null && st.input !== undefined ? h('div', { class: 'tl-io' }, h('div', { class: 'tl-io-label' }, 'Input'), jsonBlock(st.input)) : null,
      st.output !== null && st.output !== undefined ? h('div', { class: 'tl-io' }, h('div', { class: 'tl-io-label' }, 'Output'), jsonBlock(st.output)) : null,
      st.error ? h('div', { class: 'tl-io tl-error' }, h('div', { class: 'tl-io-label' }, 'Error'), jsonBlock(st.error)) : null,
      toolCallsEl(st),
      wrote.length ? h('div', { class: 'small' }, 'Wrote ', wrote.map((segs, i) => [i ? ', ' : '', h('code', { class: 'changed-key' }, segsText(segs))]), ' — highlighted in the context.') : null)
      : null;
    return h('li', { class: cls, dataset: { stepId: st.stepId, state: st.stateName, status: st.status, scope: st.branchPath || '' } },
      h('div', { class: 'tl-dot', 'aria-hidden': 'true' }), head, body, groupsEl(node, writes));
  }

  function groupsEl(node, writes) {
    if (!node.groups.length) return null;
    return h('div', { class: 'tl-groups' }, node.groups.map((g) => {
      const gkey = `${node.step ? node.step.stepId : node.name}/${g.frame}`;
      const status = groupStatus(g.items);
      const defaultOpen = node.groups.length <= 12 || OPEN.has(status) || status === 'FAILED';
      const open = S.groupsOpen.has(gkey) ? S.groupsOpen.get(gkey) : defaultOpen;
      return h('div', { class: `tl-group tl-group-${g.kind}`, dataset: { frame: g.frame } },
        h('button', { type: 'button', class: 'tl-group-head', 'aria-expanded': String(open), onclick: () => { S.groupsOpen.set(gkey, !open); renderTimeline(); } },
          h('span', { class: 'caret' }, open ? '▾' : '▸'), h('span', null, g.label), badge(status), h('span', { class: 'muted small' }, `${g.items.length} step${g.items.length === 1 ? '' : 's'}`)),
        open ? h('ol', { class: 'timeline' }, g.items.map((n) => stepItem(n, writes))) : null);
    }));
  }

  function renderTimeline() {
    const steps = S.run.steps || [];
    if (!steps.length) {
      clear(timelineBody, TERMINAL.has(S.run.status) ? empty('No steps ran') : loading('Waiting for the first step…'));
      return;
    }
    const writes = writesByStep();
    clear(timelineBody, h('ol', { class: 'timeline timeline-root' }, stepTree(steps).map((n) => stepItem(n, writes))));
  }

  // -- context --------------------------------------------------------------------------------
  const segsText = (segs) => segs.map((s, i) => (typeof s === 'number' ? `[${s}]` : `${i ? '.' : ''}${s}`)).join('');

  function renderContext() {
    const steps = stepById();
    const marks = new Map();
    const writes = contextWrites(S.run.steps || [], S.events).sort((a, b) => a.seq - b.seq);
    for (const w of writes) {
      const st = steps.get(w.stepId);
      const name = st ? st.stateName : w.stepId;
      const focus = S.selected === w.stepId;
      const fresh = S.fresh.has(w.seq);
      marks.set(pathKey(w.segs), { label: `← ${name}`, cls: focus ? 'focus' : fresh ? 'fresh' : '', title: `written by ${name} (event #${w.seq})` });
    }
    // Keys written by the selected step win over later writers of the same key.
    for (const w of writes) {
      if (S.selected === w.stepId) {
        const st = steps.get(w.stepId);
        marks.set(pathKey(w.segs), { label: `← ${st ? st.stateName : w.stepId}`, cls: 'focus', title: `written by ${st ? st.stateName : w.stepId} (event #${w.seq})` });
      }
    }
    const sel = S.selected && steps.get(S.selected);
    clear(ctxHead, sel
      ? h('span', null, 'Keys written by ', h('strong', null, sel.stateName), ' ', h('button', { type: 'button', class: 'link', onclick: () => { S.selected = null; renderContext(); renderTimeline(); } }, 'clear'))
      : (marks.size ? 'Keys marked ← were written by that step; open a step to focus on its changes.' : ''));
    clear(ctxBody, jsonTree(S.run.context ?? {}, { collapsed: S.ctxCollapsed, expanded: S.ctxExpanded, marks, openDepth: 2 }));
    S.fresh.clear();
  }

  // -- approvals ------------------------------------------------------------------------------
  const approvalCards = new Map();
  async function loadApprovals() {
    try {
      S.approvals = (await get(`/workflow-runs/${enc}/approvals`, { signal: ctx.signal })).approvals;
    } catch (e) {
      if (e.name !== 'AbortError' && e.status !== 401) clear(approvalsBox, errorState(e, loadApprovals));
      return;
    }
    if (ctx.alive) renderApprovals();
  }
  function renderApprovals() {
    const pending = S.approvals.filter((a) => a.status === 'pending');
    const decided = S.approvals.filter((a) => a.status !== 'pending');
    for (const id of [...approvalCards.keys()]) if (!pending.some((a) => a.id === id)) approvalCards.delete(id);
    const cards = pending.map((a) => {
      if (!approvalCards.has(a.id)) approvalCards.set(a.id, approvalCard(a, { showRun: false, onDecided: () => { loadApprovals(); scheduleRefresh(); } }));
      return approvalCards.get(a.id);
    });
    clear(approvalsBox,
      cards.length ? h('h2', { class: 'section-title' }, 'Waiting for a decision') : null, cards,
      decided.length ? h('div', { class: 'card approvals-decided' }, h('h2', null, 'Approvals'), decided.map(decidedApproval)) : null);
  }

  // -- diagram --------------------------------------------------------------------------------
  async function loadDefinition() {
    try {
      const wf = await get(`/workflows/${encodeURIComponent(S.run.workflowId)}?version=${S.run.workflowVersion}`, { signal: ctx.signal });
      S.defn = wf.definition;
      if (ctx.alive) { renderDiagram(); renderTimeline(); }
    } catch (e) {
      if (e.name !== 'AbortError' && e.status !== 401) clear(diagramBody, errorState(e));
    }
  }
  const RANK = { RUNNING: 6, WAITING_APPROVAL: 6, WAITING_SIGNAL: 6, SCHEDULED: 5, PENDING: 5, FAILED: 4, TIMED_OUT: 3, CANCELLED: 2, SUCCEEDED: 1 };
  function renderDiagram() {
    if (!S.defn) { clear(diagramBody, loading('Loading the definition…')); return; }
    const latest = new Map();
    for (const st of S.run.steps || []) {
      const prev = latest.get(st.stepId);
      if (!prev || st.attempt >= prev.attempt) latest.set(st.stepId, st);
    }
    const status = new Map();
    for (const st of latest.values()) {
      const k = `${(st.branchPath || '').replace(/\[\d+\]/g, '[]')}\u0000${st.stateName}`;
      const prev = status.get(k);
      if (!prev || (RANK[st.status] || 0) > (RANK[prev] || 0)) status.set(k, st.status);
    }
    clear(diagramBody, diagram(S.defn, { statusOf: (scope, name) => status.get(`${scope}\u0000${name}`) || null }));
  }

  function renderAll() {
    renderHeader();
    renderTimeline();
    renderContext();
    renderDiagram();
    fillEventSteps();
  }

  // -- live -----------------------------------------------------------------------------------
  let refreshing = false;
  let again = false;
  async function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      do {
        again = false;
        S.run = await get(`/workflow-runs/${enc}`, { signal: ctx.signal });
        if (!ctx.alive) return;
        renderAll();
      } while (again);
    } catch (e) {
      if (e.name !== 'AbortError' && e.status !== 401) toast(`Could not refresh the run: ${e.message}`, 'error');
    } finally {
      refreshing = false;
    }
  }
  const scheduleRefresh = throttle(refresh, 150);
  ctx.onDispose(scheduleRefresh.cancel);

  let filling = false;
  async function fillGap() { // never expected (the stream is gap-free), but cheap insurance
    if (filling) return;
    filling = true;
    try {
      const missing = await allEvents(runId, { afterSeq: 0, signal: ctx.signal });
      for (const e of missing) addEvent(e);
      S.events.sort((a, b) => a.seq - b.seq);
      renderEvents();
    } catch { /* the next event retries */ } finally { filling = false; }
  }

  function onStreamEvent(ev) {
    const d = ev.data;
    if (!d || typeof d.seq !== 'number') return;
    const e = { seq: d.seq, type: d.type || ev.type, stepId: d.stepId ?? null, payload: d.payload ?? {}, actor: d.actor ?? null, time: d.time };
    const gap = d.seq > S.lastSeq + 1;
    if (!addEvent(e)) return;
    S.fresh.add(e.seq);
    if (gap) fillGap(); else appendEventRow(e);
    if (e.type.startsWith('approval.')) loadApprovals();
    if (TERMINAL_EVENTS.has(e.type)) { scheduleRefresh.cancel(); refresh(); loadApprovals(); } else scheduleRefresh();
  }

  let stream = null;
  const LIVE_TEXT = { live: 'live', reconnecting: 'reconnecting…', ended: '', idle: '', gone: '', unauthorized: '' };
  function startStream() {
    if (TERMINAL.has(S.run.status)) return;
    stream = new EventStream(`/workflow-runs/${enc}/stream`, {
      lastId: S.lastSeq,
      isFinal: (ev) => TERMINAL_EVENTS.has(ev.type),
      onEvent: onStreamEvent,
      onState: (state) => {
        S.streamState = state;
        liveEl.dataset.state = state;
        liveEl.textContent = LIVE_TEXT[state] ?? '';
        liveEl.title = state === 'live' ? 'Receiving this run’s events live' : state === 'reconnecting' ? `Connection lost; resuming after event #${S.lastSeq}` : '';
        if (state === 'live' && stream && stream.connects > 1) scheduleRefresh(); // caught up after a reconnect
        if (state === 'ended') scheduleRefresh();
      },
    }).start();
    ctx.onDispose(() => stream.stop());
    const onDrop = () => stream && stream.drop();
    window.addEventListener('station:drop-streams', onDrop);
    ctx.onDispose(() => window.removeEventListener('station:drop-streams', onDrop));
  }

  // Tick the durations of open steps and of the run once a second.
  const ticker = setInterval(() => {
    for (const el of ctx.el.querySelectorAll('[data-since]')) {
      const d = durationBetween(el.dataset.since, null);
      if (d != null) el.textContent = fmtDuration(d);
    }
  }, 1000);
  ctx.onDispose(() => clearInterval(ticker));

  renderAll();
  renderEvents();
  startStream();
  loadApprovals();
  loadDefinition();
  // Expose state for debugging and tests (read-only use).
  window.__station.run = { get events() { return S.events.length; }, get lastSeq() { return S.lastSeq; }, get stream() { return S.streamState; }, get connects() { return stream ? stream.connects : 0; } };
  ctx.onDispose(() => { delete window.__station.run; });
}
