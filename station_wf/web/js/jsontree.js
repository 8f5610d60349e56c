// A collapsible JSON tree. Paths are arrays of keys/indices; `marks` maps a path key to a mark
// ({label, cls, title}) drawn on that row; rows under a collapsed node that carry a mark light up
// their collapsed ancestor so a change is never hidden.
import { h } from './dom.js';

export const pathKey = (segments) => JSON.stringify(segments);

function kind(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}

/**
 * options: {
 *   collapsed: Set<pathKey>  (user toggles; mutated in place),
 *   expanded: Set<pathKey>   (user expansions of nodes closed by default),
 *   openDepth: number        (nodes deeper than this start closed),
 *   marks: Map<pathKey, {label, cls, title}>,
 *   rootLabel: string|null,
 * }
 */
export function jsonTree(value, options = {}) {
  const opts = { collapsed: new Set(), expanded: new Set(), openDepth: 2, marks: new Map(), ...options };
  const markedPrefixes = new Map(); // pathKey of an ancestor -> strongest class below it
  for (const [key, mark] of opts.marks) {
    let segs;
    try { segs = JSON.parse(key); } catch { continue; }
    for (let i = 0; i < segs.length; i++) {
      const k = pathKey(segs.slice(0, i));
      if (!markedPrefixes.has(k) || mark.cls === 'focus') markedPrefixes.set(k, mark.cls);
    }
  }
  const root = h('div', { class: 'jt', role: 'tree' });
  const rows = node(value, [], opts.rootLabel ?? null, 0, opts, markedPrefixes);
  root.append(rows);
  return root;
}

function isOpen(path, depth, value, opts) {
  const key = pathKey(path);
  if (opts.collapsed.has(key)) return false;
  if (opts.expanded.has(key)) return true;
  const size = Array.isArray(value) ? value.length : Object.keys(value).length;
  return depth < opts.openDepth && size <= 50;
}

function node(value, path, label, depth, opts, markedPrefixes) {
  const key = pathKey(path);
  const mark = opts.marks.get(key);
  const k = kind(value);
  const labelEl = label == null ? null : h('span', { class: typeof label === 'number' ? 'jt-index' : 'jt-key' }, typeof label === 'number' ? `${label}` : label);
  const markEl = mark ? h('span', { class: `jt-mark ${mark.cls || ''}`, title: mark.title || '' }, mark.label) : null;
  const rowClass = 'jt-row' + (mark ? ` jt-changed ${mark.cls || ''}` : '');
  if (k !== 'object' && k !== 'array') {
    return h('div', { class: rowClass, role: 'treeitem', dataset: { path: key } },
      h('span', { class: 'jt-toggle jt-leaf', 'aria-hidden': 'true' }),
      labelEl, labelEl ? h('span', { class: 'jt-colon' }, ': ') : null,
      scalar(value), markEl);
  }
  const entries = k === 'array' ? value.map((v, i) => [i, v]) : Object.entries(value);
  const open = isOpen(path, depth, value, opts);
  const size = entries.length;
  const summary = k === 'array' ? `[${size}]` : `{${size}}`;
  const hiddenMark = !open && markedPrefixes.has(key) && !mark;
  const wrap = h('div', { class: 'jt-node', role: 'treeitem', 'aria-expanded': String(open) });
  const toggle = h('button', {
    type: 'button', class: 'jt-toggle', 'aria-label': open ? 'Collapse' : 'Expand',
    onclick: () => {
      if (open) { opts.collapsed.add(key); opts.expanded.delete(key); } else { opts.collapsed.delete(key); opts.expanded.add(key); }
      wrap.replaceWith(node(value, path, label, depth, opts, markedPrefixes));
    },
  }, open ? '▾' : '▸');
  const head = h('div', { class: rowClass + (hiddenMark ? ` jt-has-changes ${markedPrefixes.get(key) || ''}` : ''), dataset: { path: key } },
    toggle, labelEl, labelEl ? h('span', { class: 'jt-colon' }, ': ') : null,
    h('span', { class: 'jt-summary' }, size === 0 ? (k === 'array' ? '[]' : '{}') : summary),
    markEl, hiddenMark ? h('span', { class: 'jt-dot', title: 'changed keys inside' }, '●') : null);
  wrap.append(head);
  if (open && size) {
    const kids = h('div', { class: 'jt-children', role: 'group' });
    for (const [ck, cv] of entries) kids.append(node(cv, [...path, ck], ck, depth + 1, opts, markedPrefixes));
    wrap.append(kids);
  }
  return wrap;
}

function scalar(v) {
  const k = kind(v);
  if (k === 'string') return h('span', { class: 'jt-str' }, JSON.stringify(v));
  if (k === 'number') return h('span', { class: 'jt-num' }, String(v));
  if (k === 'boolean') return h('span', { class: 'jt-bool' }, String(v));
  if (k === 'null') return h('span', { class: 'jt-null' }, 'null');
  return h('span', null, String(v));
}

/** JSON as highlighted text, for step input/output and event payloads. */
export function jsonBlock(value) {
  const pre = h('pre', { class: 'code json' });
  const text = JSON.stringify(value, null, 2);
  if (text === undefined) {
    pre.textContent = 'undefined';
    return pre;
  }
  const re = /("(?:[^"\\]|\\.)*")(\s*:)?|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|\b(true|false|null)\b/g;
  let last = 0;
  let m;
  while ((m = re.exec(text))) {
    if (m.index > last) pre.append(text.slice(last, m.index));
    if (m[1]) {
      pre.append(h('span', { class: m[2] ? 'j-key' : 'j-str' }, m[1]));
      if (m[2]) pre.append(m[2]);
    } else if (m[3]) pre.append(h('span', { class: 'j-num' }, m[3]));
    else pre.append(h('span', { class: m[4] === 'null' ? 'j-null' : 'j-bool' }, m[4]));
    last = re.lastIndex;
  }
  if (last < text.length) pre.append(text.slice(last));
  return pre;
}
