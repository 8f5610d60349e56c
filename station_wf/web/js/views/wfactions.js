// The workflow actions of PRD §7 shared by the list and the detail page: Disable / Enable, the file's
// sync status (file vs database, by content hash) with its Sync button, and Rollback (Versions tab).
import { h, toast } from '../dom.js';
import { post, del } from '../api.js';

const SYNC_TEXT = {
  in_sync: ['in sync', 'the stored latest version is the file on disk'],
  file_changed: ['file changed', 'the file on disk differs from the stored latest version: Sync makes a new version from it'],
  file_removed: ['file removed', 'the file is gone: Sync disables the workflow (its runs and versions stay)'],
};

/** The sync indicator (nothing for a workflow that did not come from a file). */
export function syncPill(sync) {
  if (!sync || !SYNC_TEXT[sync.state]) return null;
  const [text, why] = SYNC_TEXT[sync.state];
  return h('span', { class: `pill pill-sync sync-${sync.state.replace(/_/g, '-')}`, dataset: { sync: sync.state }, title: `${why}${sync.sourceFile ? ` (${sync.sourceFile})` : ''}` }, text);
}

/** Run `fn` with the button disabled; an error becomes a toast; `done()` after success. */
function busy(btn, fn, done) {
  return async () => {
    btn.disabled = true;
    try {
      await fn();
      if (done) done();
    } catch (e) {
      if (e.status !== 401) toast(e.message, 'error', 6000);
    } finally {
      btn.disabled = false;
    }
  };
}

/** Disable (DELETE) or Enable, whichever applies; `done()` reloads the caller's view. */
export function toggleButton(wf, done, { small = false, id = null } = {}) {
  const enc = encodeURIComponent(wf.id);
  const cls = `btn${small ? ' btn-small' : ''}`;
  if (wf.status === 'active') {
    const b = h('button', { type: 'button', class: `${cls} btn-danger`, id: id && `${id}-disable`, dataset: { disable: wf.id }, title: `Disable ${wf.id}: no new runs start; runs and versions stay` }, 'Disable');
    b.onclick = busy(b, async () => { await del(`/workflows/${enc}`); toast(`${wf.id} disabled.`, 'ok'); }, done);
    return b;
  }
  const b = h('button', { type: 'button', class: cls, id: id && `${id}-enable`, dataset: { enable: wf.id }, title: `Enable ${wf.id}: runs may start again` }, 'Enable');
  b.onclick = busy(b, async () => { await post(`/workflows/${enc}/enable`); toast(`${wf.id} enabled.`, 'ok'); }, done);
  return b;
}

/** Sync this one workflow's file now (shown when the file and the database differ). */
export function syncButton(wfId, sync, done, { small = false, id = null } = {}) {
  if (!sync || (sync.state !== 'file_changed' && sync.state !== 'file_removed')) return null;
  const b = h('button', { type: 'button', class: `btn${small ? ' btn-small' : ''}`, id, dataset: { syncWorkflow: wfId }, title: SYNC_TEXT[sync.state][1] }, 'Sync');
  b.onclick = busy(b, async () => {
    const res = await post(`/workflows/${encodeURIComponent(wfId)}/sync`);
    const what = res.result === 'registered' ? `new version v${res.workflow.version}` : res.result;
    toast(`${wfId}: ${what}.`, 'ok');
  }, done);
  return b;
}

/** Rollback: a new version made from `version` (after a confirm step); `done(newVersion)`. */
export function rollbackButton(wfId, version, latest, done) {
  const b = h('button', { type: 'button', class: 'btn btn-small', dataset: { rollback: String(version.version) },
    disabled: version.contentHash === latest.contentHash,
    title: version.contentHash === latest.contentHash ? 'the latest version has this content' : `Make a new version from v${version.version}` }, 'Roll back');
  b.onclick = () => {
    const yes = h('button', { type: 'button', class: 'btn btn-small btn-primary', id: 'confirm-rollback' }, `Make v${latest.version + 1} from v${version.version}`);
    const no = h('button', { type: 'button', class: 'btn btn-small', onclick: () => panel.replaceWith(b) }, 'Keep');
    const panel = h('span', { class: 'confirm-inline' }, yes, ' ', no);
    yes.onclick = busy(yes, async () => {
      const made = await post(`/workflows/${encodeURIComponent(wfId)}/rollback`, { version: version.version });
      toast(`v${made.version} made from v${version.version}.`, 'ok');
      done(made.version);
    });
    b.replaceWith(panel);
    yes.focus();
  };
  return b;
}
