// Pieces shared by several views.
import { h, parseTime, TERMINAL } from '../dom.js';
import { get, q } from '../api.js';

export const DAY_MS = 86400000;

/** Runs created in the last `days` days, newest first (cursor paging; at most `cap` runs). */
export async function recentRuns({ workflowId, days = 30, cap = 10000, signal } = {}) {
  const since = Date.now() - days * DAY_MS;
  const out = [];
  let cursor = null;
  let truncated = false;
  for (;;) {
    const page = await get(`/workflow-runs${q({ workflowId, limit: 1000, cursor })}`, { signal });
    let older = false;
    for (const r of page.runs) {
      if ((parseTime(r.createdAt) ?? 0) < since) { older = true; break; }
      out.push(r);
    }
    if (older || !page.nextCursor) break;
    if (out.length >= cap) { truncated = true; break; }
    cursor = page.nextCursor;
  }
  return { runs: out, truncated };
}

/** Success over finished runs: {total, finished, ok, rate (0..1 or null), avgMs}. */
export function runStats(runs) {
  let finished = 0;
  let ok = 0;
  let durSum = 0;
  let durN = 0;
  for (const r of runs) {
    if (!TERMINAL.has(r.status)) continue;
    finished++;
    if (r.status === 'COMPLETED') {
      ok++;
      const a = parseTime(r.startedAt || r.createdAt);
      const b = parseTime(r.completedAt);
      if (a != null && b != null) { durSum += b - a; durN++; }
    }
  }
  return { total: runs.length, finished, ok, rate: finished ? ok / finished : null, avgMs: durN ? durSum / durN : null };
}

export function rateEl(stats) {
  if (!stats) return h('span', { class: 'muted' }, '…');
  if (stats.rate == null) {
    return h('span', { class: 'muted', title: 'no finished runs in the last 30 days' }, stats.total ? `— (${stats.total} active)` : '—');
  }
  const pct = Math.round(stats.rate * 100);
  const cls = pct >= 95 ? 'good' : pct >= 75 ? 'warn' : 'bad';
  return h('span', { class: `rate rate-${cls}`, title: `${stats.ok} of ${stats.finished} finished runs completed (last 30 days)` },
    h('span', { class: 'rate-bar', 'aria-hidden': 'true' }, h('span', { style: { width: `${pct}%` } })),
    h('span', { class: 'rate-num' }, `${pct}%`), h('span', { class: 'muted small' }, ` ${stats.ok}/${stats.finished}`));
}

export const RUN_FILTERS = [
  ['', 'All statuses'],
  ['PENDING,RUNNING,WAITING_APPROVAL,WAITING_SIGNAL,PAUSED', 'Active'],
  ['RUNNING', 'Running'],
  ['WAITING_APPROVAL,WAITING_SIGNAL', 'Waiting'],
  ['PAUSED', 'Paused'],
  ['COMPLETED', 'Completed'],
  ['FAILED', 'Failed'],
  ['CANCELLED', 'Cancelled'],
  ['TIMED_OUT', 'Timed out'],
];

export function pageHead(title, ...rest) {
  return h('div', { class: 'page-head' }, h('h1', null, title), h('div', { class: 'page-actions' }, rest));
}
