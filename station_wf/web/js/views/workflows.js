// #/workflows: every workflow with its version, status (and its file's sync status), last run, 30-day
// success rate and its actions (Run, Disable / Enable, Sync).
import { h, clear, loading, empty, errorState, timeEl, throttle } from '../dom.js';
import { get, hub } from '../api.js';
import { openRunDialog } from '../schemaform.js';
import { recentRuns, runStats, rateEl, pageHead } from './common.js';
import { syncPill, syncButton, toggleButton } from './wfactions.js';

export async function workflowsView(ctx) {
  const search = h('input', { type: 'search', placeholder: 'Search by id, name or description', 'aria-label': 'Search workflows', id: 'wf-search' });
  const statusSel = h('select', { 'aria-label': 'Filter by status', id: 'wf-status' },
    h('option', { value: '' }, 'All statuses'), h('option', { value: 'active' }, 'Active'), h('option', { value: 'disabled' }, 'Disabled'));
  const count = h('span', { class: 'muted small', role: 'status' });
  const body = h('div', { class: 'wf-list' }, loading('Loading workflows…'));
  ctx.el.append(pageHead('Workflows'), h('div', { class: 'toolbar' }, search, statusSel, count), body);

  let workflows = null;
  let stats = null; // workflowId -> runStats, null while loading
  let statsError = null;

  const render = () => {
    if (!workflows) return;
    const term = search.value.trim().toLowerCase();
    const st = statusSel.value;
    const shown = workflows.filter((w) => (!st || w.status === st)
      && (!term || `${w.id} ${w.name || ''} ${w.description || ''}`.toLowerCase().includes(term)));
    count.textContent = shown.length === workflows.length ? `${workflows.length} workflow${workflows.length === 1 ? '' : 's'}` : `${shown.length} of ${workflows.length}`;
    if (!workflows.length) {
      clear(body, empty('No workflows yet', 'Put .workflow.yaml files in environments/<env>/workflows and run `station-wf sync` (the daemon syncs at start), or POST one to /api/v1/workflows.'));
      return;
    }
    if (!shown.length) {
      clear(body, empty('No workflow matches', 'Change the search or the status filter.'));
      return;
    }
    const rows = shown.map((w) => h('tr', { dataset: { workflow: w.id } },
      h('td', { class: 'cell-name', dataset: { label: 'Name' } },
        h('a', { href: `#/workflows/${encodeURIComponent(w.id)}`, class: 'strong' }, w.name || w.id),
        w.name && w.name !== w.id ? h('div', { class: 'mono muted small' }, w.id) : null,
        w.description ? h('div', { class: 'muted small clamp' }, w.description) : null),
      h('td', { dataset: { label: 'Version' } }, h('span', { class: 'mono' }, `v${w.version}`), w.versionLabel ? h('span', { class: 'muted small' }, ` (${w.versionLabel})`) : null),
      h('td', { dataset: { label: 'Status' } }, h('span', { class: `pill pill-${w.status}` }, w.status), syncPill(w.sync)),
      h('td', { dataset: { label: 'Last run' } }, w.lastRunAt ? timeEl(w.lastRunAt) : h('span', { class: 'muted' }, 'never')),
      h('td', { dataset: { label: 'Success (30 d)' }, class: 'cell-rate' },
        statsError ? h('span', { class: 'muted', title: statsError }, 'unavailable') : rateEl(stats ? (stats.get(w.id) || runStats([])) : null)),
      h('td', { class: 'cell-actions' },
        h('button', { type: 'button', class: 'btn btn-small btn-primary', disabled: w.status !== 'active', title: w.status !== 'active' ? 'disabled workflows cannot start runs' : `Start a run of ${w.id}`, onclick: () => openRunDialog(w.id), dataset: { run: w.id } }, '▶ Run'),
        toggleButton(w, refresh, { small: true }),
        syncButton(w.id, w.sync, refresh, { small: true }))));
    clear(body, h('table', { class: 'table table-cards' },
      h('thead', null, h('tr', null, h('th', null, 'Name'), h('th', null, 'Version'), h('th', null, 'Status'), h('th', null, 'Last run'),
        h('th', { title: 'completed of finished runs, last 30 days' }, 'Success (30 d)'), h('th', null, h('span', { class: 'sr-only' }, 'Actions')))),
      h('tbody', null, rows)));
  };

  const loadStats = async () => {
    try {
      const { runs } = await recentRuns({ signal: ctx.signal });
      const by = new Map();
      for (const r of runs) (by.get(r.workflowId) || by.set(r.workflowId, []).get(r.workflowId)).push(r);
      stats = new Map([...by].map(([id, list]) => [id, runStats(list)]));
      statsError = null;
    } catch (e) {
      if (e.name === 'AbortError') return;
      statsError = e.message;
    }
    if (ctx.alive) render();
  };

  const load = async () => {
    try {
      const res = await get('/workflows', { signal: ctx.signal });
      workflows = res.workflows;
      render();
      loadStats();
    } catch (e) {
      if (e.name === 'AbortError') return;
      clear(body, errorState(e, () => { clear(body, loading('Loading workflows…')); load(); }));
    }
  };

  // After an action: the list again (statuses, versions and sync states changed), kept in place.
  const refresh = async () => {
    try {
      workflows = (await get('/workflows', { signal: ctx.signal })).workflows;
    } catch { return; }
    if (ctx.alive) render();
  };

  search.addEventListener('input', render);
  statusSel.addEventListener('change', render);
  const reload = throttle(async () => {
    if (!ctx.alive) return;
    try {
      workflows = (await get('/workflows', { signal: ctx.signal })).workflows;
    } catch { return; }
    await loadStats();
  }, 3000);
  ctx.onDispose(reload.cancel);
  ctx.onDispose(hub.subscribe((ev) => {
    if (ev.type === 'run.created' || ev.type === 'run.completed' || ev.type === 'run.failed' || ev.type === 'run.cancelled' || ev.type === 'run.timed_out') reload();
  }));
  await load();
}
