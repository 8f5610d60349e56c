// #/workflows/{id}[/{tab}]: overview (diagram, input schema, stats), runs, definition, versions.
import { h, clear, loading, empty, errorState, timeEl, badge, fmtDuration, durationBetween, shortId, preview, tabs, throttle, fmtTime } from '../dom.js';
import { get, q, hub } from '../api.js';
import { openRunDialog } from '../schemaform.js';
import { diagram, diagramLegend } from '../diagram.js';
import { codeView, diffView, prettyIfJson } from '../code.js';
import { recentRuns, runStats, rateEl, RUN_FILTERS } from './common.js';
import { syncPill, syncButton, toggleButton, rollbackButton } from './wfactions.js';

const TABS = [['overview', 'Overview'], ['runs', 'Runs'], ['definition', 'Definition'], ['versions', 'Versions']];

export async function workflowView(ctx) {
  const [id, tabParam] = ctx.params;
  const tab = tabParam || 'overview';
  const enc = encodeURIComponent(id);
  const head = h('div', { class: 'wf-head' }, loading('Loading the workflow…'));
  const panel = h('div', { class: 'tab-panel', dataset: { tab } });
  ctx.el.append(h('div', { class: 'crumbs' }, h('a', { href: '#/workflows' }, 'Workflows'), ' / ', h('span', { class: 'mono' }, id)), head);

  let wf;
  try {
    wf = await get(`/workflows/${enc}`, { signal: ctx.signal });
  } catch (e) {
    if (e.name === 'AbortError') return;
    clear(head, errorState(e, () => window.dispatchEvent(new HashChangeEvent('hashchange'))));
    return;
  }
  // The file's sync status is a look at the disk: it must not hold up the page.
  let sync = null;
  try {
    sync = await get(`/workflows/${enc}/sync`, { signal: ctx.signal });
  } catch (e) {
    if (e.name === 'AbortError') return;
  }
  const reload = () => window.dispatchEvent(new HashChangeEvent('hashchange'));
  clear(head,
    h('div', { class: 'page-head' },
      h('div', null,
        h('h1', null, wf.name || wf.id, ' ', h('span', { class: `pill pill-${wf.status}`, id: 'wf-status' }, wf.status), syncPill(sync)),
        h('div', { class: 'muted small' }, h('span', { class: 'mono' }, wf.id), ` · version ${wf.version}`, wf.versionLabel ? ` (${wf.versionLabel})` : '',
          ` · ${wf.source === 'file' ? 'from file' : 'from the API'}`, wf.environment ? ` · environment ${wf.environment}` : '')),
      h('div', { class: 'page-actions' },
        syncButton(wf.id, sync, reload, { id: 'sync-wf' }),
        toggleButton(wf, reload, { id: 'wf' }),
        h('button', { type: 'button', class: 'btn btn-primary', disabled: wf.status !== 'active', onclick: () => openRunDialog(wf.id), dataset: { run: wf.id } }, '▶ Run'))),
    wf.description ? h('p', { class: 'lead' }, wf.description) : null,
    tabs(TABS, tab, (key) => `#/workflows/${enc}${key === 'overview' ? '' : `/${key}`}`));
  ctx.el.append(panel);
  if (tab === 'overview') await overview(ctx, wf, panel);
  else if (tab === 'runs') await runsTab(ctx, wf, panel);
  else if (tab === 'definition') definitionTab(wf, panel);
  else if (tab === 'versions') await versionsTab(ctx, wf, panel);
}

// -- overview ------------------------------------------------------------------------------------
function schemaDoc(schema) {
  if (!schema) return h('p', { class: 'muted' }, 'No input schema: any JSON object is accepted.');
  const props = schema.properties || {};
  const required = new Set(schema.required || []);
  const names = Object.keys(props);
  if (!names.length) return h('pre', { class: 'code' }, JSON.stringify(schema, null, 2));
  return h('table', { class: 'table table-compact table-cards' },
    h('thead', null, h('tr', null, h('th', null, 'Field'), h('th', null, 'Type'), h('th', null, 'Required'), h('th', null, 'Details'))),
    h('tbody', null, names.map((n) => {
      const p = props[n] || {};
      const type = Array.isArray(p.type) ? p.type.join(' | ') : p.type || (p.enum ? 'enum' : 'any');
      const details = [];
      if (p.description) details.push(p.description);
      if (p.enum) details.push(`one of ${p.enum.map((v) => JSON.stringify(v)).join(', ')}`);
      for (const k of ['minimum', 'maximum', 'minLength', 'maxLength', 'minItems', 'maxItems', 'pattern', 'format']) if (p[k] != null) details.push(`${k} ${p[k]}`);
      if (p.default !== undefined) details.push(`default ${JSON.stringify(p.default)}`);
      if (p.items && p.items.type) details.push(`items: ${p.items.type}`);
      return h('tr', null, h('td', { class: 'mono', dataset: { label: 'Field' } }, n), h('td', { dataset: { label: 'Type' } }, type),
        h('td', { dataset: { label: 'Required' } }, required.has(n) ? 'yes' : 'no'), h('td', { class: 'muted small', dataset: { label: 'Details' } }, details.join(' · ') || '—'));
    })));
}

async function overview(ctx, wf, panel) {
  const statsEl = h('div', { class: 'stats' }, loading('Loading run statistics…'));
  panel.append(
    h('section', { class: 'card' }, h('div', { class: 'card-head' }, h('h2', null, 'State diagram'), diagramLegend()), diagram(wf.definition)),
    h('div', { class: 'grid-2' },
      h('section', { class: 'card' }, h('h2', null, 'Input'), schemaDoc(wf.definition && wf.definition.inputSchema)),
      h('section', { class: 'card' }, h('h2', null, 'Last 30 days'), statsEl)));
  try {
    const { runs, truncated } = await recentRuns({ workflowId: wf.id, signal: ctx.signal });
    const st = runStats(runs);
    const last = runs[0];
    clear(statsEl,
      stat('Runs', `${st.total}${truncated ? '+' : ''}`),
      stat('Success rate', rateEl(st)),
      stat('Avg duration (completed)', fmtDuration(st.avgMs)),
      stat('Last run', last ? h('a', { href: `#/runs/${last.id}` }, timeEl(last.createdAt), ' ', badge(last.status)) : h('span', { class: 'muted' }, 'never')));
  } catch (e) {
    if (e.name !== 'AbortError') clear(statsEl, errorState(e));
  }
}

function stat(label, value) {
  return h('div', { class: 'stat' }, h('div', { class: 'stat-label' }, label), h('div', { class: 'stat-value' }, value));
}

// -- runs ----------------------------------------------------------------------------------------
async function runsTab(ctx, wf, panel) {
  const PAGE = 20;
  const filter = h('select', { 'aria-label': 'Filter runs by status', id: 'runs-status' }, RUN_FILTERS.map(([v, label]) => h('option', { value: v }, label)));
  // Correlation id and tag filters (issue 18): the list API's `correlationId` and `tag=name:value`.
  const corr = h('input', { type: 'search', id: 'runs-correlation', 'aria-label': 'Filter runs by correlation id', placeholder: 'Correlation id' });
  const tag = h('input', { type: 'search', id: 'runs-tag', 'aria-label': 'Filter runs by tag (name:value)', placeholder: 'Tag name:value' });
  const info = h('span', { class: 'muted small', role: 'status' });
  const newer = h('button', { type: 'button', class: 'btn btn-small', disabled: true }, '← Newer');
  const older = h('button', { type: 'button', class: 'btn btn-small', disabled: true }, 'Older →');
  const list = h('div', null, loading('Loading runs…'));
  panel.append(h('div', { class: 'toolbar' }, filter, corr, tag, info, h('span', { class: 'spacer' }), newer, older), list);
  let cursors = [null]; // cursor of each page visited; the last one is the current page
  let shownIds = new Set();

  const load = async () => {
    const cursor = cursors[cursors.length - 1];
    try {
      const page = await get(`/workflow-runs${q({ workflowId: wf.id, status: filter.value, correlationId: corr.value.trim(),
        tag: tag.value.trim(), limit: PAGE, cursor })}`, { signal: ctx.signal });
      shownIds = new Set(page.runs.map((r) => r.id));
      newer.disabled = cursors.length === 1;
      older.disabled = !page.nextCursor;
      older.onclick = () => { cursors.push(page.nextCursor); clear(list, loading('Loading runs…')); load(); };
      info.textContent = page.runs.length ? `page ${cursors.length} · ${page.runs.length} run${page.runs.length === 1 ? '' : 's'}` : '';
      const byMeta = corr.value.trim() || tag.value.trim();
      if (!page.runs.length) {
        if (byMeta) clear(list, empty('No run matches these filters', 'Change the correlation id or tag.'));
        else clear(list, empty(filter.value ? 'No run with this status' : 'No runs yet', filter.value ? 'Choose another status.' : 'Start one with the Run button.'));
        return;
      }
      clear(list, runsTable(page.runs));
    } catch (e) {
      if (e.name !== 'AbortError') clear(list, errorState(e, load));
    }
  };
  newer.onclick = () => { cursors.pop(); clear(list, loading('Loading runs…')); load(); };
  for (const el of [filter, corr, tag]) el.addEventListener('change', () => { cursors = [null]; clear(list, loading('Loading runs…')); load(); });
  const live = throttle(() => ctx.alive && load(), 1000);
  ctx.onDispose(live.cancel);
  ctx.onDispose(hub.subscribe((ev) => {
    const d = ev.data || {};
    if (ev.type === 'run.created' && d.payload && d.payload.workflowId === wf.id && cursors.length === 1) live();
    else if (ev.type.startsWith('run.') && shownIds.has(d.runId)) live();
  }));
  await load();
}

export function runsTable(runs, { showWorkflow = false } = {}) {
  return h('table', { class: 'table table-cards runs-table' },
    h('thead', null, h('tr', null, h('th', null, 'Run'), showWorkflow ? h('th', null, 'Workflow') : null, h('th', null, 'Status'), h('th', null, 'Version'),
      h('th', null, 'Started'), h('th', null, 'Duration'), h('th', null, 'Input'))),
    h('tbody', null, runs.map((r) => h('tr', { dataset: { run: r.id, status: r.status } },
      h('td', { dataset: { label: 'Run' } }, h('a', { href: `#/runs/${r.id}`, class: 'mono', title: r.id }, shortId(r.id))),
      showWorkflow ? h('td', { dataset: { label: 'Workflow' } }, h('a', { href: `#/workflows/${encodeURIComponent(r.workflowId)}` }, r.workflowId)) : null,
      h('td', { dataset: { label: 'Status' } }, badge(r.status)),
      h('td', { dataset: { label: 'Version' } }, h('span', { class: 'mono' }, `v${r.workflowVersion}`)),
      h('td', { dataset: { label: 'Started' } }, timeEl(r.startedAt || r.createdAt)),
      h('td', { dataset: { label: 'Duration' } }, fmtDuration(durationBetween(r.startedAt || r.createdAt, r.completedAt))),
      h('td', { class: 'mono small muted cell-input', dataset: { label: 'Input' }, title: preview(r.input, 2000) }, preview(r.input, 60))))));
}

// -- definition ----------------------------------------------------------------------------------
function definitionTab(wf, panel) {
  panel.append(h('section', { class: 'card' },
    h('div', { class: 'card-head' }, h('h2', null, 'Definition'),
      h('span', { class: 'pill pill-active', title: 'the daemon validated this definition before storing it' }, '✓ valid')),
    h('dl', { class: 'meta' },
      h('dt', null, 'Source'), h('dd', { class: 'mono small' }, wf.sourceFile || (wf.source === 'file' ? 'file' : 'API')),
      h('dt', null, 'Content hash'), h('dd', { class: 'mono small' }, wf.contentHash || '—'),
      h('dt', null, 'Stored'), h('dd', null, fmtTime(wf.createdAt))),
    h('p', { class: 'muted small' }, 'Read-only: edit the file and sync (or PUT the workflow) to make a new version.'),
    codeView(wf.raw || JSON.stringify(wf.definition, null, 2))));
}

// -- versions ------------------------------------------------------------------------------------
async function versionsTab(ctx, wf, panel) {
  const body = h('div', null, loading('Loading versions…'));
  panel.append(body);
  let versions;
  try {
    versions = (await get(`/workflows/${encodeURIComponent(wf.id)}/versions`, { signal: ctx.signal })).versions;
  } catch (e) {
    if (e.name !== 'AbortError') clear(body, errorState(e));
    return;
  }
  versions.sort((a, b) => b.version - a.version);
  const table = h('table', { class: 'table table-compact table-cards' },
    h('thead', null, h('tr', null, h('th', null, 'Version'), h('th', null, 'Label'), h('th', null, 'Stored'), h('th', null, 'Status'), h('th', null, 'Content hash'),
      h('th', null, h('span', { class: 'sr-only' }, 'Actions')))),
    h('tbody', null, versions.map((v) => h('tr', { dataset: { version: v.version } },
      h('td', { class: 'mono', dataset: { label: 'Version' } }, `v${v.version}`), h('td', { dataset: { label: 'Label' } }, v.versionLabel || '—'),
      h('td', { dataset: { label: 'Stored' } }, timeEl(v.createdAt)), h('td', { dataset: { label: 'Status' } }, h('span', { class: `pill pill-${v.status}` }, v.status)),
      h('td', { class: 'mono small muted', dataset: { label: 'Hash' }, title: v.contentHash }, (v.contentHash || '').replace(/^sha256:/, '').slice(0, 12)),
      h('td', { class: 'cell-actions' }, v.version === versions[0].version ? h('span', { class: 'muted small' }, 'latest')
        : rollbackButton(wf.id, v, versions[0], () => window.dispatchEvent(new HashChangeEvent('hashchange'))))))));
  const diffCard = h('section', { class: 'card' }, h('h2', null, 'Compare versions'));
  clear(body, h('section', { class: 'card' }, h('h2', null, `${versions.length} version${versions.length === 1 ? '' : 's'}`), table), diffCard);
  if (versions.length < 2) {
    diffCard.append(empty('Only one version', 'A changed file (or a PUT) makes a new version; then you can compare them here.'));
    return;
  }
  const opt = (v) => h('option', { value: String(v.version) }, `v${v.version}${v.versionLabel ? ` (${v.versionLabel})` : ''}`);
  const from = h('select', { id: 'diff-from', 'aria-label': 'Compare from version' }, versions.map(opt));
  const to = h('select', { id: 'diff-to', 'aria-label': 'Compare to version' }, versions.map(opt));
  from.value = String(versions[1].version);
  to.value = String(versions[0].version);
  const isJson = (text) => /^\s*[{[]/.test(text || '');
  const mode = h('select', { id: 'diff-mode', 'aria-label': 'What to compare' },
    h('option', { value: 'source' }, 'source text'), h('option', { value: 'normalized' }, 'normalized definition'));
  const out = h('div', { class: 'diff-out' });
  const cache = new Map();
  const fetchVersion = async (version) => {
    if (!cache.has(version)) cache.set(version, await get(`/workflows/${encodeURIComponent(wf.id)}${q({ version })}`, { signal: ctx.signal }));
    return cache.get(version);
  };
  let modeTouched = false;
  const show = async () => {
    clear(out, loading('Comparing…'));
    try {
      const [a, b] = await Promise.all([fetchVersion(Number(from.value)), fetchVersion(Number(to.value))]);
      // A YAML file against a definition PUT as JSON: the text differs everywhere, the meaning may not.
      if (!modeTouched) mode.value = isJson(a.raw) !== isJson(b.raw) ? 'normalized' : 'source';
      const text = (v) => (mode.value === 'normalized' ? JSON.stringify(v.definition, null, 2) : prettyIfJson(v.raw || JSON.stringify(v.definition, null, 2)));
      clear(out, h('div', { class: 'muted small' }, `v${from.value} → v${to.value}, ${mode.value === 'normalized' ? 'normalized definitions' : 'source text'}`),
        diffView(text(a), text(b)));
    } catch (e) {
      if (e.name !== 'AbortError') clear(out, errorState(e, show));
    }
  };
  from.addEventListener('change', show);
  to.addEventListener('change', show);
  mode.addEventListener('change', () => { modeTouched = true; show(); });
  diffCard.append(h('div', { class: 'toolbar' }, h('label', { for: 'diff-from' }, 'From'), from, h('label', { for: 'diff-to' }, 'to'), to,
    h('label', { for: 'diff-mode' }, 'comparing'), mode), out);
  await show();
}
