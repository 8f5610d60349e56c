// #/approvals: every pending approval across runs, decided in place; live from the global stream.
// approvalCard() is also used on the run page.
import { h, append, clear, loading, empty, errorState, timeEl, relTime, throttle, toast, shortId, fmtTime } from '../dom.js';
import { get, post, q, hub } from '../api.js';
import { jsonTree } from '../jsontree.js';
import { pageHead } from './common.js';

function who(approvers) {
  return approvers && approvers.length ? approvers.join(', ') : 'anyone with access';
}

/** A pending approval with Approve / Reject and a comment; `onDecided(approval)` after success. */
export function approvalCard(a, { onDecided, showRun = true } = {}) {
  const comment = h('textarea', { rows: 2, placeholder: 'Comment (optional; the reason when rejecting)', 'aria-label': 'Comment', class: 'approval-comment' });
  const msg = h('div', { class: 'field-error', role: 'alert', hidden: true });
  const approveBtn = h('button', { type: 'button', class: 'btn btn-approve', dataset: { action: 'approve' } }, '✓ Approve');
  const rejectBtn = h('button', { type: 'button', class: 'btn btn-reject', dataset: { action: 'reject' } }, '✕ Reject');
  const card = h('article', { class: 'card approval-card', dataset: { approval: a.id, run: a.runId } });
  const decide = async (approve) => {
    approveBtn.disabled = rejectBtn.disabled = true;
    msg.hidden = true;
    const text = comment.value.trim();
    try {
      const path = `/workflow-runs/${encodeURIComponent(a.runId)}/approvals/${encodeURIComponent(a.id)}/${approve ? 'approve' : 'reject'}`;
      const res = await post(path, approve ? (text ? { comment: text } : {}) : (text ? { reason: text } : {}));
      const done = res.approval || { ...a, status: approve ? 'approved' : 'rejected' };
      card.classList.add('decided', `decided-${done.status}`);
      clear(card, h('div', { class: 'approval-outcome' }, done.status === 'approved' ? '✓ Approved' : '✕ Rejected',
        done.decidedBy ? ` by ${done.decidedBy}` : '', text ? ` — “${text}”` : ''));
      toast(`${done.status === 'approved' ? 'Approved' : 'Rejected'}: ${a.message || a.stateName}`, 'ok');
      if (onDecided) onDecided(done);
    } catch (e) {
      approveBtn.disabled = rejectBtn.disabled = false;
      if (e.status === 401) return;
      let text2 = e.message;
      if (e.status === 403) text2 = `You may not decide this approval: it needs ${who(a.approvers)}.`;
      if (e.status === 409) text2 = `Already decided (${(e.details && e.details.status) || 'not pending'}).`;
      msg.textContent = text2;
      msg.hidden = false;
      if (e.status === 409 && onDecided) setTimeout(() => onDecided(null), 1500);
    }
  };
  approveBtn.addEventListener('click', () => decide(true));
  rejectBtn.addEventListener('click', () => decide(false));
  const summary = a.summary !== null && a.summary !== undefined;
  append(card, [
    h('header', { class: 'approval-head' },
      h('span', { class: 'badge st-waiting-approval' }, 'approval'),
      showRun ? h('a', { href: `#/workflows/${encodeURIComponent(a.workflowId)}`, class: 'strong' }, a.workflowId) : null,
      h('span', { class: 'muted' }, ` · ${a.stateName}`),
      showRun ? h('span', { class: 'muted' }, ' · run ', h('a', { href: `#/runs/${a.runId}`, class: 'mono', title: a.runId }, shortId(a.runId))) : null),
    h('p', { class: 'approval-message' }, a.message || h('span', { class: 'muted' }, '(no message)')),
    summary ? h('div', { class: 'approval-summary' }, h('div', { class: 'muted small' }, 'Summary'),
      typeof a.summary === 'object' ? jsonTree(a.summary, { openDepth: 3 }) : h('code', null, String(a.summary))) : null,
    h('dl', { class: 'meta meta-inline small' },
      h('dt', null, 'Who may decide'), h('dd', null, who(a.approvers)),
      h('dt', null, 'Requested'), h('dd', null, timeEl(a.createdAt)),
      a.expiresAt ? [h('dt', null, 'Expires'), h('dd', { title: fmtTime(a.expiresAt) }, relTime(a.expiresAt))] : null,
      a.onReject ? [h('dt', null, 'On reject'), h('dd', null, a.onReject)] : null),
    comment, msg,
    h('div', { class: 'approval-actions' }, rejectBtn, approveBtn)]);
  return card;
}

/** A decided (or expired) approval, compact. */
export function decidedApproval(a) {
  const icon = a.status === 'approved' ? '✓' : a.status === 'rejected' ? '✕' : '⏱';
  return h('div', { class: `approval-decided decided-${a.status}`, dataset: { approval: a.id, status: a.status } },
    h('span', { class: 'approval-icon' }, icon), ' ',
    h('strong', null, a.status.replace(/_/g, ' ')), a.decidedBy ? ` by ${a.decidedBy}` : '',
    a.comment ? h('span', null, ' — “', a.comment, '”') : null,
    h('span', { class: 'muted small' }, ' · ', a.decidedAt ? timeEl(a.decidedAt) : timeEl(a.createdAt)),
    h('div', { class: 'muted small' }, a.message || a.stateName));
}

export async function approvalsView(ctx) {
  const statusSel = h('select', { id: 'approvals-status', 'aria-label': 'Which approvals' },
    h('option', { value: 'pending' }, 'Pending'), h('option', { value: 'all' }, 'All (recent first)'));
  const info = h('span', { class: 'muted small', role: 'status' });
  const list = h('div', { class: 'approvals' }, loading('Loading approvals…'));
  ctx.el.append(pageHead('Approvals'), h('div', { class: 'toolbar' }, statusSel, info), list);
  const cards = new Map(); // approval id -> element (kept across refreshes so typed comments survive)
  const recent = new Map(); // approval id -> {el, until}: just decided here, shown with the outcome for a while
  const KEEP_MS = 6000;

  const load = async () => {
    try {
      const res = await get(`/workflow-approvals${q({ status: statusSel.value })}`, { signal: ctx.signal });
      const items = res.approvals.slice().sort((a, b) => (b.createdAt || '').localeCompare(a.createdAt || ''));
      const pending = items.filter((a) => a.status === 'pending');
      info.textContent = `${pending.length} pending${statusSel.value === 'all' ? ` · ${items.length} in all` : ''}`;
      const now = Date.now();
      for (const [id, r] of [...recent]) if (r.until <= now) recent.delete(id);
      const keep = new Set(pending.map((a) => a.id));
      for (const id of [...cards.keys()]) if (!keep.has(id)) cards.delete(id);
      const els = items.filter((a) => !recent.has(a.id)).map((a) => {
        if (a.status !== 'pending') return decidedApproval(a);
        if (!cards.has(a.id)) {
          cards.set(a.id, approvalCard(a, {
            onDecided: () => {
              recent.set(a.id, { el: cards.get(a.id), until: Date.now() + KEEP_MS });
              refresh();
              setTimeout(() => ctx.alive && refresh(), KEEP_MS + 50);
            },
          }));
        }
        return cards.get(a.id);
      });
      clear(list, [...recent.values()].map((r) => r.el), els.length ? els
        : empty('Nothing waits for a decision', 'Runs that reach a human.approval step show up here as they happen.'));
    } catch (e) {
      if (e.name !== 'AbortError') clear(list, errorState(e, load));
    }
  };
  const refresh = throttle(() => ctx.alive && load(), 300);
  ctx.onDispose(refresh.cancel);
  statusSel.addEventListener('change', () => { clear(list, loading('Loading approvals…')); load(); });
  ctx.onDispose(hub.subscribe((ev) => {
    if (ev.type.startsWith('approval.') || ev.type === 'run.cancelled' || ev.type === 'run.failed' || ev.type === 'run.timed_out') refresh();
  }));
  // After a reconnect the stream resumes from its last id, but refresh anyway: cheap and certain.
  ctx.onDispose(hub.onState((state) => { if (state === 'live') refresh(); }));
  await load();
}
