// Source views: YAML (or JSON) with simple highlighting and line numbers, and a line diff.
import { h } from './dom.js';

// -- highlighting ---------------------------------------------------------------------------------
const VALUE_TOKENS = [
  ['str', /"(?:[^"\\]|\\.)*"?/y],
  ['str', /'(?:[^']|'')*'?/y],
  ['comment', /(?<=^|\s)#.*/y],
  ['tpl', /\{\{[\s\S]*?\}\}/y],
  ['key', /[A-Za-z_$][\w$.\-]*(?=\s*:(?:\s|$))/y],
  ['punct', /[{}[\],:]/y],
  ['num', /-?(?:0x[0-9a-fA-F]+|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)(?=[\s,\]}]|$)/y],
  ['bool', /(?:true|false|null|True|False|Null|~)(?=[\s,\]}]|$)/y],
  ['anchor', /[&*][\w-]+/y],
  [null, /[^"'#{}[\],:\s]+|\s+|./y],
];

/** Split a string value so `{{ template }}` parts stand out. */
function withTemplates(text, cls) {
  const out = [];
  const re = /\{\{[\s\S]*?\}\}/g;
  let last = 0;
  let m;
  while ((m = re.exec(text))) {
    if (m.index > last) out.push(h('span', { class: `y-${cls}` }, text.slice(last, m.index)));
    out.push(h('span', { class: 'y-tpl' }, m[0]));
    last = re.lastIndex;
  }
  if (last < text.length) out.push(h('span', { class: `y-${cls}` }, text.slice(last)));
  return out;
}

function tokens(text) {
  const out = [];
  let i = 0;
  let plain = '';
  const flush = () => {
    if (plain) out.push(...withTemplates(plain, 'plain'));
    plain = '';
  };
  while (i < text.length) {
    for (const [cls, re] of VALUE_TOKENS) {
      re.lastIndex = i;
      const m = re.exec(text);
      if (!m || !m[0].length) continue;
      if (cls === null) plain += m[0];
      else {
        flush();
        if (cls === 'str') out.push(...withTemplates(m[0], 'str'));
        else out.push(h('span', { class: `y-${cls}` }, m[0]));
      }
      i += m[0].length;
      break;
    }
  }
  flush();
  return out;
}

function yamlLine(line, state) {
  const indent = line.match(/^\s*/)[0].length;
  if (state.block != null) {
    if (line.trim() === '' || indent > state.block) return [h('span', { class: 'y-str' }, line)];
    state.block = null;
  }
  const parts = [];
  const m = line.match(/^(\s*)((?:-\s+)*)(?:("(?:[^"\\]|\\.)*"|'[^']*'|[^\s#'"{[\]][^:#]*?)(\s*:)(?=\s|$))?(.*)$/);
  if (!m) return tokens(line);
  const [, lead, dashes, key, colon, rest] = m;
  parts.push(lead);
  if (dashes) parts.push(h('span', { class: 'y-punct' }, dashes));
  if (key) parts.push(h('span', { class: 'y-key' }, key), h('span', { class: 'y-punct' }, colon));
  if (/^\s*[|>][-+0-9]*\s*(#.*)?$/.test(rest)) state.block = indent + (dashes ? dashes.length : 0);
  parts.push(...tokens(rest));
  return parts;
}

/** The definition as highlighted lines with line numbers (YAML, or JSON when stored from the API). */
export function codeView(text, { language } = {}) {
  const lang = language || (/^\s*[{[]/.test(text || '') ? 'json' : 'yaml');
  if (lang === 'json') text = prettyIfJson(text);
  const lines = String(text ?? '').replace(/\n$/, '').split('\n');
  const state = { block: null };
  const body = h('div', { class: `code-lines lang-${lang}` });
  lines.forEach((line, idx) => {
    body.append(h('div', { class: 'code-line' },
      h('span', { class: 'ln', 'aria-hidden': 'true' }, String(idx + 1)),
      h('span', { class: 'lc' }, lang === 'json' ? tokens(line) : yamlLine(line, state))));
  });
  return h('div', { class: 'code-view', tabindex: '0', 'aria-label': 'Workflow definition source' }, body);
}

/** JSON stored on one line (a definition PUT through the API) reads better indented. */
export function prettyIfJson(text) {
  if (!/^\s*[{[]/.test(text || '')) return text;
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return text; }
}

// -- diff -----------------------------------------------------------------------------------------
/** Line diff (LCS after trimming the common prefix and suffix): [{op: ' '|'-'|'+', a, b, text}]. */
export function diffLines(aText, bText) {
  const a = String(aText ?? '').replace(/\n$/, '').split('\n');
  const b = String(bText ?? '').replace(/\n$/, '').split('\n');
  let pre = 0;
  while (pre < a.length && pre < b.length && a[pre] === b[pre]) pre++;
  let suf = 0;
  while (suf < a.length - pre && suf < b.length - pre && a[a.length - 1 - suf] === b[b.length - 1 - suf]) suf++;
  const am = a.slice(pre, a.length - suf);
  const bm = b.slice(pre, b.length - suf);
  const out = [];
  for (let i = 0; i < pre; i++) out.push({ op: ' ', a: i + 1, b: i + 1, text: a[i] });
  const n = am.length;
  const m = bm.length;
  if (n * m > 4_000_000) {
    am.forEach((t, i) => out.push({ op: '-', a: pre + i + 1, b: null, text: t }));
    bm.forEach((t, j) => out.push({ op: '+', a: null, b: pre + j + 1, text: t }));
  } else {
    const w = m + 1;
    const L = new Uint32Array((n + 1) * w);
    for (let i = n - 1; i >= 0; i--) {
      for (let j = m - 1; j >= 0; j--) {
        L[i * w + j] = am[i] === bm[j] ? L[(i + 1) * w + j + 1] + 1 : Math.max(L[(i + 1) * w + j], L[i * w + j + 1]);
      }
    }
    let i = 0;
    let j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && am[i] === bm[j]) {
        out.push({ op: ' ', a: pre + i + 1, b: pre + j + 1, text: am[i] });
        i++; j++;
      } else if (i < n && (j >= m || L[(i + 1) * w + j] >= L[i * w + j + 1])) {
        out.push({ op: '-', a: pre + i + 1, b: null, text: am[i] });
        i++;
      } else {
        out.push({ op: '+', a: null, b: pre + j + 1, text: bm[j] });
        j++;
      }
    }
  }
  for (let k = 0; k < suf; k++) {
    out.push({ op: ' ', a: a.length - suf + k + 1, b: b.length - suf + k + 1, text: a[a.length - suf + k] });
  }
  return out;
}

/** A unified diff view: changed lines with 3 lines of context, long unchanged runs folded. */
export function diffView(aText, bText, { context = 3 } = {}) {
  const lines = diffLines(aText, bText);
  const added = lines.filter((l) => l.op === '+').length;
  const removed = lines.filter((l) => l.op === '-').length;
  const wrap = h('div', { class: 'diff' });
  wrap.append(h('div', { class: 'diff-stat' },
    h('span', { class: 'diff-add' }, `+${added}`), ' ', h('span', { class: 'diff-del' }, `−${removed}`),
    added + removed === 0 ? h('span', { class: 'muted' }, ' — the two versions are identical') : null));
  if (added + removed === 0) return wrap;
  const keep = new Array(lines.length).fill(false);
  lines.forEach((l, idx) => {
    if (l.op !== ' ') for (let k = Math.max(0, idx - context); k <= Math.min(lines.length - 1, idx + context); k++) keep[k] = true;
  });
  const body = h('div', { class: 'code-view diff-body', tabindex: '0' });
  let idx = 0;
  while (idx < lines.length) {
    if (!keep[idx]) {
      let end = idx;
      while (end < lines.length && !keep[end]) end++;
      body.append(h('div', { class: 'diff-fold' }, `⋯ ${end - idx} unchanged line${end - idx === 1 ? '' : 's'}`));
      idx = end;
      continue;
    }
    const l = lines[idx];
    const cls = l.op === '+' ? 'diff-line add' : l.op === '-' ? 'diff-line del' : 'diff-line';
    body.append(h('div', { class: cls },
      h('span', { class: 'ln' }, l.a ?? ''), h('span', { class: 'ln' }, l.b ?? ''),
      h('span', { class: 'op', 'aria-hidden': 'true' }, l.op), h('span', { class: 'lc' }, l.text)));
    idx++;
  }
  wrap.append(body);
  return wrap;
}
