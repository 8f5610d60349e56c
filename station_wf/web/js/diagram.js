// The state diagram of a normalized definition, as SVG. Each scope (the top level, a parallel
// branch, a foreach iterator, a try section) is laid out top to bottom in ranks (longest path from
// its start); parallel, foreach and try states are drawn as groups holding their inner scopes.
// Switch edges carry their conditions; edges that skip ranks or go back are routed down the side.
import { h, s, truncate } from './dom.js';

const NODE_W = 184;
const NODE_H = 50;
const ROW_GAP = 50;
const COL_GAP = 28;
const LABELLED_COL_GAP = 64;
const PAD = 16;
const TOP_PAD = 38;
const BOTTOM_PAD = 30;
const GROUP_HEAD = 30;
const LANE_HEAD = 24;
const LANE_GAP = 14;
const CHANNEL = 26;
const CHAR_W = 7.1;   // bold 13px
const SMALL_W = 6.1;  // 11px
const MONO_W = 6.7;   // 11px monospace (edge labels)

let uid = 0;

function successors(state) {
  if (state.type === 'switch') {
    const out = (state.conditions || []).map((c) => ({ to: c.next, label: c.if ?? c.condition ?? '', kind: 'cond' }));
    if (state.defaultNext) out.push({ to: state.defaultNext, label: 'default', kind: 'default' });
    return out;
  }
  return state.next ? [{ to: state.next, kind: 'next' }] : [];
}

function subtitle(st) {
  const input = st.input || {};
  switch (st.type) {
    case 'operation':
      if (st.action === 'agent.run') return `agent.run · ${input.agent ?? '?'}`;
      if (st.action === 'human.approval') return 'human approval';
      if (st.action === 'signal.wait' || st.action === 'await.signal') return `wait for signal ${input.signal ?? ''}`.trim();
      return st.action || 'operation';
    case 'inject': return st.resultPath ? `inject → ${st.resultPath}` : 'inject';
    case 'switch': return st.dataPath ? `switch on ${st.dataPath}` : 'switch';
    case 'sleep': return st.durationSeconds != null ? `sleep ${st.durationSeconds} s` : 'sleep';
    case 'transform': return 'transform';
    default: return st.type;
  }
}

function nodeKind(st) {
  if (st.type === 'operation') {
    if (st.action === 'human.approval') return 'approval';
    if (st.action === 'signal.wait' || st.action === 'await.signal') return 'signal';
    return 'op';
  }
  return st.type;
}

// -- layout --------------------------------------------------------------------------------------
function layoutScope(states, start, scopeKey, topLevel) {
  states = states || {};
  const names = Object.keys(states);
  const nodes = new Map();
  for (const name of names) {
    const st = states[name];
    const inner = layoutContainer(st, scopeKey);
    nodes.set(name, { name, state: st, inner, w: inner ? inner.w : NODE_W, h: inner ? inner.h : NODE_H, x: 0, y: 0, rank: 0, scopeKey });
  }
  // Depth-first from the start (then any unreachable state): back edges and a topological order.
  const order = [];
  const onStack = new Set();
  const done = new Set();
  const back = new Set();
  const visit = (n) => {
    if (done.has(n) || !nodes.has(n)) return;
    onStack.add(n);
    for (const e of [...successors(states[n])].reverse()) {
      if (!nodes.has(e.to)) continue;
      if (onStack.has(e.to)) back.add(`${n}\u0000${e.to}`);
      else visit(e.to);
    }
    onStack.delete(n);
    done.add(n);
    order.push(n);
  };
  if (start && nodes.has(start)) visit(start);
  for (const n of names) visit(n);
  order.reverse();
  const index = new Map(order.map((n, i) => [n, i]));
  for (const n of order) {
    for (const e of successors(states[n])) {
      if (!nodes.has(e.to) || back.has(`${n}\u0000${e.to}`)) continue;
      nodes.get(e.to).rank = Math.max(nodes.get(e.to).rank, nodes.get(n).rank + 1);
    }
  }
  const rows = [];
  for (const n of order) (rows[nodes.get(n).rank] ||= []).push(nodes.get(n));
  const edges = [];
  for (const n of order) {
    for (const e of successors(states[n])) {
      if (!nodes.has(e.to)) continue;
      edges.push({ from: nodes.get(n), to: nodes.get(e.to), label: e.label, kind: e.kind, back: back.has(`${n}\u0000${e.to}`) });
    }
  }
  const labelledTargets = new Set(edges.filter((e) => e.kind !== 'next').map((e) => e.to.name));
  const gapOf = (row) => (row.some((nd) => labelledTargets.has(nd.name)) ? LABELLED_COL_GAP : COL_GAP);
  const rowWidth = (row) => row.reduce((a, nd) => a + nd.w, 0) + gapOf(row) * (row.length - 1);
  const innerW = Math.max(NODE_W, ...rows.filter(Boolean).map(rowWidth));
  const top = topLevel ? TOP_PAD : 12;
  // Place rows; order each row by the mean x of its predecessors (fewer crossings).
  let y = top;
  rows.forEach((row, r) => {
    if (!row) return;
    if (r > 0) {
      const bary = (nd) => {
        const preds = edges.filter((e) => e.to === nd && !e.back && e.from.rank < r);
        if (!preds.length) return Number.MAX_SAFE_INTEGER - 1000 + index.get(nd.name);
        return preds.reduce((a, e) => a + e.from.x + e.from.w / 2, 0) / preds.length + index.get(nd.name) * 1e-3;
      };
      row.sort((a, b) => bary(a) - bary(b));
    }
    const gap = gapOf(row);
    let x = PAD + (innerW - rowWidth(row)) / 2;
    const rowH = Math.max(...row.map((nd) => nd.h));
    for (const nd of row) {
      nd.x = x;
      nd.y = y;
      x += nd.w + gap;
    }
    y += rowH + ROW_GAP;
  });
  const routed = edges.filter((e) => e.back || e.to.rank !== e.from.rank + 1);
  routed.forEach((e, i) => { e.channel = i; });
  const w = PAD * 2 + innerW + (routed.length ? CHANNEL + routed.length * 10 : 0);
  const height = Math.max(y - ROW_GAP + BOTTOM_PAD, top + NODE_H + BOTTOM_PAD);
  return { w, h: height, innerW, nodes: [...nodes.values()], edges, start, topLevel, scopeKey };
}

function layoutContainer(st, scopeKey) {
  let lanes;
  let title;
  const prefix = scopeKey ? `${scopeKey}/` : '';
  if (st.type === 'parallel') {
    const join = st.join && st.join.mode ? ` · join ${st.join.mode}${st.join.atLeast ? ` ≥ ${st.join.atLeast}` : ''}` : '';
    title = `parallel${join}`;
    lanes = (st.branches || []).map((b) => ({ label: `branch ${b.name}`, block: b, key: `${prefix}${st.name}:${b.name}` }));
  } else if (st.type === 'foreach') {
    const conc = st.maxConcurrency ? ` · ${st.maxConcurrency} at a time` : '';
    title = `foreach${conc}`;
    lanes = [{ label: `each ${st.itemName || 'item'} in ${st.itemsPath}`, block: st.iterator || {}, key: `${prefix}${st.name}[]` }];
  } else if (st.type === 'try') {
    title = 'try';
    lanes = ['try', 'catch', 'finally'].filter((k) => st[k]).map((k) => ({ label: k, block: st[k], key: `${prefix}${st.name}!${k}` }));
  } else {
    return null;
  }
  for (const lane of lanes) {
    lane.layout = layoutScope(lane.block.states, lane.block.start, lane.key, false);
    lane.w = Math.max(lane.layout.w, lane.label.length * SMALL_W + 24);
  }
  const lanesW = lanes.reduce((a, l) => a + l.w, 0) + LANE_GAP * Math.max(0, lanes.length - 1);
  const titleW = (st.name.length * CHAR_W) + (title.length * SMALL_W) + 40;
  const w = Math.max(lanesW + PAD * 2, titleW, NODE_W);
  const laneH = Math.max(NODE_H, ...lanes.map((l) => l.layout.h));
  return { w, h: GROUP_HEAD + LANE_HEAD + laneH + 12, lanes, laneH, title, lanesW };
}

// -- drawing -------------------------------------------------------------------------------------
function text(x, y, str, cls, max) {
  const full = String(str ?? '');
  const shown = max ? truncate(full, max) : full;
  const el = s('text', { x, y, class: cls }, shown);
  if (shown !== full) el.append(s('title', null, full));
  return el;
}

function drawNode(nd, g, opts) {
  const st = nd.state;
  const status = opts.statusOf ? opts.statusOf(nd.scopeKey, nd.name) : null;
  const stCls = status ? ` st-${status.toLowerCase().replace(/_/g, '-')}` : '';
  if (nd.inner) {
    const c = nd.inner;
    const grp = s('g', { class: `dg-group dg-${st.type}${stCls}`, transform: `translate(${nd.x},${nd.y})`, 'data-state': nd.name });
    grp.append(s('rect', { class: 'dg-group-box', width: nd.w, height: nd.h, rx: 10 }));
    const maxName = Math.floor((nd.w - 24) / CHAR_W);
    grp.append(s('text', { x: 12, y: 19 },
      s('tspan', { class: 'dg-title' }, truncate(st.name, maxName)),
      s('tspan', { class: 'dg-group-sub', dx: 8 }, c.title),
      s('title', null, `${st.name} · ${c.title}`)));
    if (status) grp.append(s('circle', { class: 'dg-status', cx: nd.w - 12, cy: 14, r: 5 }, s('title', null, status)));
    let x = (nd.w - c.lanesW) / 2;
    for (const lane of c.lanes) {
      const lg = s('g', { class: 'dg-lane', transform: `translate(${x},${GROUP_HEAD})` });
      lg.append(s('rect', { class: 'dg-lane-box', width: lane.w, height: LANE_HEAD + c.laneH, rx: 8 }));
      lg.append(text(10, 16, lane.label, 'dg-lane-title', Math.floor((lane.w - 16) / SMALL_W)));
      const inner = s('g', { transform: `translate(${(lane.w - lane.layout.w) / 2},${LANE_HEAD})` });
      drawScope(lane.layout, inner, opts);
      lg.append(inner);
      grp.append(lg);
      x += lane.w + LANE_GAP;
    }
    g.append(grp);
    return;
  }
  const kind = nodeKind(st);
  const grp = s('g', { class: `dg-node dg-${kind}${stCls}`, transform: `translate(${nd.x},${nd.y})`, 'data-state': nd.name, tabindex: '0' });
  const tip = [st.name, subtitle(st), st.description, status ? `status: ${status}` : null].filter(Boolean).join('\n');
  grp.append(s('title', null, tip));
  if (st.type === 'switch') {
    const k = 14;
    grp.append(s('polygon', { class: 'dg-box', points: `${k},0 ${nd.w - k},0 ${nd.w},${nd.h / 2} ${nd.w - k},${nd.h} ${k},${nd.h} 0,${nd.h / 2}` }));
  } else {
    grp.append(s('rect', { class: 'dg-box', width: nd.w, height: nd.h, rx: 8 }));
  }
  grp.append(text(nd.w / 2, 21, st.name, 'dg-name', Math.floor((nd.w - 22) / CHAR_W)));
  grp.append(text(nd.w / 2, 38, subtitle(st), 'dg-sub', Math.floor((nd.w - 20) / SMALL_W)));
  if (status) grp.append(s('circle', { class: 'dg-status', cx: nd.w - 9, cy: 9, r: 5 }));
  g.append(grp);
}

function drawScope(layout, g, opts) {
  const edgeLayer = s('g', { class: 'dg-edges' });
  const labelLayer = s('g', { class: 'dg-labels' });
  g.append(edgeLayer);
  const arrow = `url(#${opts.arrowId})`;
  const channelX = PAD + layout.innerW + CHANNEL / 2;
  for (const e of layout.edges) {
    const a = e.from;
    const b = e.to;
    let d;
    let lx;
    let ly;
    if (e.channel == null) {
      const sx = a.x + a.w / 2;
      const sy = a.y + a.h;
      const tx = b.x + b.w / 2;
      const ty = b.y;
      const dy = Math.max(18, (ty - sy) / 2);
      d = `M${sx},${sy} C${sx},${sy + dy} ${tx},${ty - dy} ${tx},${ty - 2}`;
      lx = sx + (tx - sx) * 0.7;
      ly = sy + (ty - sy) * 0.55;
    } else {
      const cx = channelX + e.channel * 10;
      const sy = a.y + a.h / 2;
      const ty = b.y + Math.min(b.h / 2, 25) + (e.back ? 6 : -6);
      const sx = a.x + a.w;
      const tx = b.x + b.w;
      const r = 8;
      const down = ty > sy ? 1 : -1;
      d = `M${sx},${sy} H${cx - r} Q${cx},${sy} ${cx},${sy + r * down} V${ty - r * down} Q${cx},${ty} ${cx - r},${ty} H${tx + 2}`;
      lx = cx;
      ly = (sy + ty) / 2;
    }
    edgeLayer.append(s('path', { class: `dg-edge${e.back ? ' dg-back' : ''}${e.kind === 'default' ? ' dg-default' : ''}`, d, 'marker-end': arrow }));
    if (e.kind === 'cond' || e.kind === 'default') {
      const label = e.kind === 'default' ? 'default' : e.label;
      const shown = truncate(label, 26);
      const w = shown.length * (e.kind === 'default' ? SMALL_W : MONO_W) + 12;
      const lg = s('g', { class: `dg-edge-label${e.kind === 'default' ? ' dg-default' : ''}`, transform: `translate(${lx - w / 2},${ly - 9})` });
      lg.append(s('title', null, e.kind === 'default' ? 'when no condition matches' : `if ${label}`));
      lg.append(s('rect', { width: w, height: 18, rx: 4 }));
      lg.append(s('text', { x: w / 2, y: 13 }, shown));
      labelLayer.append(lg);
    }
  }
  for (const nd of layout.nodes) {
    drawNode(nd, g, opts);
    if (nd.state.end) {
      const cx = nd.x + nd.w / 2;
      const y0 = nd.y + nd.h;
      g.append(s('g', { class: 'dg-end' }, s('title', null, 'end'),
        s('line', { x1: cx, y1: y0, x2: cx, y2: y0 + 12 }),
        s('circle', { cx, cy: y0 + 18, r: 6, class: 'dg-end-outer' }),
        s('circle', { cx, cy: y0 + 18, r: 3, class: 'dg-end-inner' })));
    }
  }
  if (layout.topLevel && layout.start) {
    const st = layout.nodes.find((nd) => nd.name === layout.start);
    if (st) {
      const cx = st.x + st.w / 2;
      g.append(s('g', { class: 'dg-start' }, s('title', null, 'start'),
        s('circle', { cx, cy: 10, r: 6 }),
        s('line', { x1: cx, y1: 16, x2: cx, y2: st.y - 3, 'marker-end': arrow })));
    }
  }
  g.append(labelLayer);
}

/**
 * The diagram element. `statusOf(scopeKey, stateName)` (optional) colours states by a run's step
 * statuses; scope keys look like "" (top level), "diag:pods", "each[]", "t!catch", joined by "/".
 */
export function diagram(definition, { statusOf } = {}) {
  if (!definition || !definition.states || !Object.keys(definition.states).length) {
    return h('div', { class: 'state state-empty' }, 'This definition has no states.');
  }
  const layout = layoutScope(definition.states, definition.start, '', true);
  const arrowId = `dg-arrow-${++uid}`;
  const svg = s('svg', {
    class: 'dg', width: Math.ceil(layout.w), height: Math.ceil(layout.h), viewBox: `0 0 ${Math.ceil(layout.w)} ${Math.ceil(layout.h)}`,
    role: 'img', 'aria-label': `State diagram of ${definition.id || 'the workflow'}`,
  });
  svg.append(s('defs', null, s('marker', { id: arrowId, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
    s('path', { d: 'M0,0 L10,5 L0,10 z', class: 'dg-arrow' }))));
  const g = s('g');
  drawScope(layout, g, { statusOf, arrowId });
  svg.append(g);
  return h('div', { class: 'diagram' }, svg);
}

const LEGEND = [['op', 'agent / operation'], ['approval', 'human approval'], ['signal', 'signal wait'], ['switch', 'switch'], ['inject', 'inject / transform'], ['sleep', 'sleep']];
export function diagramLegend() {
  return h('div', { class: 'dg-legend' }, LEGEND.map(([k, label]) => h('span', { class: `dg-key dg-key-${k}` }, label)));
}
