// The run page's lineage and its second chances (issue 16's API): links to the parent run, the run
// this one re-runs, the runs it continued from / as and its child runs; Re-run (a new run, same
// version and input) and Redrive (the same run, only its failed steps again). Shown only when the
// daemon's run documents carry these fields (`depth`, `redriveCount`), so an older daemon sees no
// dead buttons and no failing requests.
import { h, shortId, toast, TERMINAL } from '../dom.js';
import { get, post } from '../api.js';

const runLink = (id, label) => h('a', { href: `#/runs/${encodeURIComponent(id)}`, class: 'mono', title: id, dataset: { link: label } }, `${label} ${shortId(id)}`);

/** A line of links, filled in place (the children come from their own request). */
export function lineageEl(run, signal) {
  const el = h('div', { class: 'small run-lineage', id: 'run-lineage' });
  if (!('depth' in run)) return el;
  if (run.parent && run.parent.runId) el.append(runLink(run.parent.runId, 'parent'));
  if (run.rerunOf) el.append(runLink(run.rerunOf, 're-run of'));
  if (run.continuedFrom) el.append(runLink(run.continuedFrom, 'continued from'));
  if (run.continuedAs) el.append(runLink(run.continuedAs, 'continued as'));
  get(`/workflow-runs/${encodeURIComponent(run.id)}/children`, { signal }).then((res) => {
    const kids = (res && res.runs) || [];
    if (!kids.length) return;
    el.append(h('span', { class: 'muted' }, `${kids.length} child run${kids.length === 1 ? '' : 's'}: `),
      ...kids.map((k) => runLink(k.id, 'child')));
  }).catch(() => { /* the links are a convenience: the page works without them */ });
  return el;
}

/** Re-run (any ended run) and Redrive (a failed, timed-out or cancelled one). */
export function rerunButtons(run, busy) {
  if (!('redriveCount' in run) || !TERMINAL.has(run.status)) return [];
  const enc = encodeURIComponent(run.id);
  const out = [];
  const rerun = h('button', { type: 'button', class: 'btn', id: 'rerun-run', title: 'Start a new run of the same version with the same input' }, 'Re-run');
  rerun.onclick = busy(rerun, async () => {
    const res = await post(`/workflow-runs/${enc}/rerun`, {});
    toast('New run started.', 'ok');
    location.hash = `#/runs/${encodeURIComponent(res.run.id)}`;
  });
  out.push(rerun);
  if (run.status !== 'COMPLETED') {
    const redrive = h('button', { type: 'button', class: 'btn btn-primary', id: 'redrive-run', title: 'Run only the failed, timed-out or cancelled steps again, in this run' }, 'Redrive');
    redrive.onclick = busy(redrive, async () => {
      await post(`/workflow-runs/${enc}/redrive`, {});
      toast('Run redriven.', 'ok');
      window.dispatchEvent(new HashChangeEvent('hashchange')); // the run is RUNNING again: load it afresh
    });
    out.push(redrive);
  }
  return out;
}
