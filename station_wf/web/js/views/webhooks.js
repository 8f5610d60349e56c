// #/webhooks: the webhook subscriptions and their delivery log (issue 19). A delivery opens to show
// its body and every attempt; "Redeliver" queues it again under the same delivery id.
import { h, clear, loading, empty, errorState, timeEl, toast, shortId } from '../dom.js';
import { get, post, q } from '../api.js';
import { jsonTree } from '../jsontree.js';
import { pageHead } from './common.js';

const STATUS_PILL = { delivered: 'pill-active', pending: 'pill-pending', dead: 'pill-disabled' };

function subscriptionsTable(subs) {
  if (!subs.length) {
    return empty('No webhook subscriptions', 'POST /api/v1/webhook-subscriptions, `station-wf webhooks create`, or a webhooks: section in the environment\'s integrations.yaml.');
  }
  return h('table', { class: 'table table-compact table-cards', id: 'webhook-subscriptions' },
    h('thead', null, h('tr', null, h('th', null, 'Id'), h('th', null, 'URL'), h('th', null, 'Events'), h('th', null, 'Workflows'),
      h('th', null, 'Signed'), h('th', null, 'Source'))),
    h('tbody', null, subs.map((s) => h('tr', { dataset: { subscription: s.id } },
      h('td', { class: 'mono', dataset: { label: 'Id' } }, s.id, s.enabled ? null : h('span', { class: 'muted small' }, ' (disabled)')),
      h('td', { class: 'mono small', dataset: { label: 'URL' } }, s.url),
      h('td', { dataset: { label: 'Events' } }, s.events.join(', ')),
      h('td', { dataset: { label: 'Workflows' } }, s.workflows.length ? s.workflows.join(', ') : h('span', { class: 'muted' }, 'all')),
      h('td', { dataset: { label: 'Signed' } }, s.signed ? 'yes' : 'no'),
      h('td', { dataset: { label: 'Source' } }, s.source)))));
}

function attemptsEl(d) {
  return h('div', { class: 'delivery-detail' },
    h('table', { class: 'table table-compact' },
      h('thead', null, h('tr', null, h('th', null, '#'), h('th', null, 'Status'), h('th', null, 'Error'), h('th', null, 'ms'), h('th', null, 'At'))),
      h('tbody', null, d.attemptLog.map((a) => h('tr', null, h('td', null, String(a.attempt)), h('td', null, a.responseStatus ?? '—'),
        h('td', { class: 'small' }, a.error || ''), h('td', null, String(a.durationMs)), h('td', null, timeEl(a.at)))))),
    h('div', { class: 'muted small' }, 'Body sent'), jsonTree(d.payload, { openDepth: 1 }));
}

export async function webhooksView(ctx) {
  const statusSel = h('select', { id: 'deliveries-status', 'aria-label': 'Which deliveries' },
    h('option', { value: '' }, 'All deliveries'), h('option', { value: 'pending' }, 'Pending'),
    h('option', { value: 'delivered' }, 'Delivered'), h('option', { value: 'dead' }, 'Dead (dead letters)'));
  const subsEl = h('div', null, loading('Loading subscriptions…'));
  const logEl = h('div', null, loading('Loading deliveries…'));
  ctx.el.append(pageHead('Webhooks'), h('h2', null, 'Subscriptions'), subsEl,
    h('h2', null, 'Delivery log'), h('div', { class: 'toolbar' }, statusSel), logEl);

  const redeliver = async (d, btn) => {
    btn.disabled = true;
    try {
      await post(`/webhook-deliveries/${encodeURIComponent(d.id)}/redeliver`);
      toast(`Queued again: ${d.id}`, 'ok');
      setTimeout(() => ctx.alive && loadLog(), 800);
    } catch (e) {
      btn.disabled = false;
      toast(e.message, 'error');
    }
  };

  const open = async (d, row) => {
    const next = row.nextElementSibling;
    if (next && next.classList.contains('delivery-open')) { next.remove(); return; }
    const cell = h('td', { colspan: 7 }, loading('Loading attempts…'));
    row.after(h('tr', { class: 'delivery-open' }, cell));
    try {
      const res = await get(`/webhook-deliveries/${encodeURIComponent(d.id)}`, { signal: ctx.signal });
      clear(cell, attemptsEl(res.delivery));
    } catch (e) {
      if (e.name !== 'AbortError') clear(cell, errorState(e));
    }
  };

  const loadLog = async () => {
    try {
      const res = await get(`/webhook-deliveries${q({ status: statusSel.value || undefined, limit: 200 })}`, { signal: ctx.signal });
      if (!res.deliveries.length) { clear(logEl, empty('No deliveries', 'Deliveries appear here as subscribed events happen.')); return; }
      clear(logEl, h('table', { class: 'table table-compact table-cards', id: 'webhook-deliveries' },
        h('thead', null, h('tr', null, h('th', null, 'Event'), h('th', null, 'Run'), h('th', null, 'Subscription'), h('th', null, 'Status'),
          h('th', null, 'Attempts'), h('th', null, 'Last error'), h('th', null, h('span', { class: 'sr-only' }, 'Actions')))),
        h('tbody', null, res.deliveries.map((d) => {
          const btn = h('button', { type: 'button', class: 'btn btn-small', dataset: { redeliver: d.id } }, 'Redeliver');
          btn.addEventListener('click', (ev) => { ev.stopPropagation(); redeliver(d, btn); });
          const row = h('tr', { dataset: { delivery: d.id, status: d.status }, class: 'clickable', title: 'Show the attempts' },
            h('td', { dataset: { label: 'Event' } }, d.event),
            h('td', { dataset: { label: 'Run' } }, h('a', { href: `#/runs/${d.runId}`, class: 'mono', title: d.runId }, shortId(d.runId))),
            h('td', { class: 'mono small', dataset: { label: 'Subscription' } }, d.subscriptionId),
            h('td', { dataset: { label: 'Status' } }, h('span', { class: `pill ${STATUS_PILL[d.status] || ''}` }, d.status)),
            h('td', { dataset: { label: 'Attempts' } }, String(d.attempts)),
            h('td', { class: 'small', dataset: { label: 'Last error' } }, d.lastError || ''),
            h('td', { class: 'cell-actions' }, btn));
          row.addEventListener('click', () => open(d, row));
          return row;
        }))));
    } catch (e) {
      if (e.name !== 'AbortError') clear(logEl, errorState(e, loadLog));
    }
  };

  statusSel.addEventListener('change', () => { clear(logEl, loading('Loading deliveries…')); loadLog(); });
  const timer = setInterval(() => ctx.alive && loadLog(), 5000);
  ctx.onDispose(() => clearInterval(timer));
  try {
    const res = await get('/webhook-subscriptions', { signal: ctx.signal });
    clear(subsEl, subscriptionsTable(res.subscriptions));
  } catch (e) {
    if (e.name !== 'AbortError') clear(subsEl, errorState(e));
  }
  await loadLog();
}
