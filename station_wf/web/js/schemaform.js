// The Run form: fields generated from a workflow's inputSchema, submitted to POST /workflow-runs.
// Validation is the daemon's: the 400 invalid_input details ({path, message, validator}) are shown
// next to the fields they name; only JSON syntax in JSON fields is checked here.
import { h, clear } from './dom.js';
import { api, get } from './api.js';

function typeOf(schema) {
  if (!schema || typeof schema !== 'object') return 'any';
  let t = schema.type;
  if (Array.isArray(t)) t = t.find((x) => x !== 'null') || t[0];
  if (!t) {
    if (schema.enum) return 'enum';
    if (schema.properties) return 'object';
    return 'any';
  }
  if (schema.enum && (t === 'string' || t === 'integer' || t === 'number')) return 'enum';
  return t;
}

function hint(schema) {
  const t = typeOf(schema);
  const bits = [];
  if (t === 'enum') bits.push('one of ' + schema.enum.map((v) => JSON.stringify(v)).join(', '));
  else if (t !== 'any') bits.push(t === 'array' || t === 'object' ? `${t} (JSON)` : t);
  if (schema.format) bits.push(schema.format);
  if (schema.minimum != null && schema.maximum != null) bits.push(`${schema.minimum}–${schema.maximum}`);
  else if (schema.minimum != null) bits.push(`≥ ${schema.minimum}`);
  else if (schema.maximum != null) bits.push(`≤ ${schema.maximum}`);
  if (schema.minLength != null) bits.push(`min length ${schema.minLength}`);
  if (schema.maxLength != null) bits.push(`max length ${schema.maxLength}`);
  if (schema.minItems != null) bits.push(`at least ${schema.minItems} item${schema.minItems === 1 ? '' : 's'}`);
  if (schema.pattern) bits.push(`pattern ${schema.pattern}`);
  return bits.join(' · ');
}

function placeholderFor(schema) {
  const t = typeOf(schema);
  if (t === 'array') {
    const it = typeOf(schema.items);
    return it === 'integer' || it === 'number' ? '[1, 2, 3]' : it === 'string' ? '["a", "b"]' : '[]';
  }
  if (t === 'object') return '{"key": "value"}';
  if (t === 'any') return 'any JSON value';
  return '';
}

/** A field for one property: {name, el, read() -> {value?, error?}, write(value), showError(msg), input}. */
function field(name, schema, required) {
  const t = typeOf(schema);
  const id = `f-${name.replace(/[^\w-]/g, '_')}`;
  const errId = `${id}-err`;
  const err = h('div', { class: 'field-error', id: errId, role: 'alert', hidden: true });
  let input;
  const common = { id, name, 'aria-describedby': errId };
  if (t === 'enum') {
    input = h('select', common,
      required && schema.default === undefined ? h('option', { value: '' }, 'choose…') : h('option', { value: '' }, '—'),
      schema.enum.map((v, i) => h('option', { value: String(i) }, typeof v === 'string' ? v : JSON.stringify(v))));
  } else if (t === 'boolean') {
    input = h('input', { ...common, type: 'checkbox' });
  } else if (t === 'integer' || t === 'number') {
    input = h('input', { ...common, type: 'number', step: t === 'integer' ? '1' : 'any', inputmode: t === 'integer' ? 'numeric' : 'decimal' });
  } else if (t === 'string') {
    const long = schema.maxLength == null || schema.maxLength > 200;
    input = long && schema.format == null && /text|body|description|prompt|message/i.test(name)
      ? h('textarea', { ...common, rows: 3 })
      : h('input', { ...common, type: 'text', autocomplete: 'off', spellcheck: 'false' });
  } else {
    input = h('textarea', { ...common, rows: 3, class: 'mono', placeholder: placeholderFor(schema), spellcheck: 'false' });
  }
  const wrapper = h('div', { class: `field field-${t}`, dataset: { field: name } },
    h('label', { for: id }, h('span', { class: 'field-name' }, name), required ? h('span', { class: 'req', title: 'required' }, ' *') : null,
      schema.title ? h('span', { class: 'muted' }, ` — ${schema.title}`) : null),
    t === 'boolean' ? h('div', { class: 'check' }, input, h('label', { for: id, class: 'muted small' }, schema.description || 'true when checked')) : input,
    schema.description && t !== 'boolean' ? h('div', { class: 'field-help' }, schema.description) : null,
    hint(schema) ? h('div', { class: 'field-hint' }, hint(schema)) : null,
    err);
  const showError = (msg) => {
    err.textContent = msg || '';
    err.hidden = !msg;
    input.setAttribute('aria-invalid', msg ? 'true' : 'false');
    wrapper.classList.toggle('invalid', Boolean(msg));
  };
  const read = () => {
    if (t === 'enum') return input.value === '' ? {} : { value: schema.enum[Number(input.value)] };
    if (t === 'boolean') return input.checked || required || schema.default !== undefined ? { value: input.checked } : {};
    const raw = input.value;
    if (raw.trim() === '') return {};
    if (t === 'string') return { value: raw };
    if (t === 'integer' || t === 'number') {
      const n = Number(raw);
      return Number.isFinite(n) ? { value: n } : { error: 'not a number' };
    }
    try { return { value: JSON.parse(raw) }; } catch (e) { return { error: `not valid JSON: ${e.message}` }; }
  };
  const write = (v) => {
    if (v === undefined) { if (t === 'boolean') input.checked = false; else input.value = ''; return; }
    if (t === 'enum') input.value = String(schema.enum.findIndex((x) => JSON.stringify(x) === JSON.stringify(v)));
    else if (t === 'boolean') input.checked = Boolean(v);
    else if (t === 'string') input.value = typeof v === 'string' ? v : JSON.stringify(v);
    else if (t === 'integer' || t === 'number') input.value = typeof v === 'number' ? String(v) : '';
    else input.value = JSON.stringify(v, null, t === 'object' ? 2 : 0);
  };
  if (schema.default !== undefined) write(schema.default);
  input.addEventListener('input', () => showError(''));
  return { name, el: wrapper, read, write, showError, input };
}

/** Which field a validation detail is about: "$.a.b[0]" -> "a"; "'x' is a required property" -> "x". */
export function fieldOfDetail(detail) {
  const path = String(detail.path || '$');
  const m = path.match(/^\$\.?([^.[\]]+)/) || path.match(/^\$\[['"]([^'"]+)['"]\]/);
  if (m) return { name: m[1], rest: path.slice(m[0].length) };
  const req = String(detail.message || '').match(/^'([^']+)' is a required property/);
  if (req) return { name: req[1], rest: '' };
  return null;
}

/** The form for an inputSchema: {el, collect() -> {input?, errors}, showErrors(details) -> leftover}. */
export function schemaForm(schema) {
  const props = schema && typeof schema === 'object' && schema.properties && typeof schema.properties === 'object' ? schema.properties : null;
  const required = new Set(Array.isArray(schema?.required) ? schema.required : []);
  const fields = props ? Object.entries(props).map(([name, sub]) => field(name, sub || {}, required.has(name))) : [];
  const jsonArea = h('textarea', { class: 'mono', rows: 8, id: 'f-json', 'aria-label': 'Input as JSON', spellcheck: 'false' });
  const jsonErr = h('div', { class: 'field-error', role: 'alert', hidden: true });
  const jsonWrap = h('div', { class: 'field field-json', hidden: Boolean(props) },
    h('label', { for: 'f-json' }, 'Input (JSON object)'), jsonArea, jsonErr);
  const formErr = h('div', { class: 'form-errors', role: 'alert', hidden: true });
  let jsonMode = !props;
  jsonArea.value = '{}';
  const currentFromFields = () => {
    const out = {};
    for (const f of fields) {
      const r = f.read();
      if ('value' in r) out[f.name] = r.value;
    }
    return out;
  };
  const toggle = props ? h('button', {
    type: 'button', class: 'btn btn-small btn-ghost', onclick: () => {
      if (!jsonMode) {
        jsonArea.value = JSON.stringify(currentFromFields(), null, 2);
      } else {
        let obj;
        try { obj = JSON.parse(jsonArea.value || '{}'); } catch (e) { showJsonErr(`not valid JSON: ${e.message}`); return; }
        if (obj && typeof obj === 'object') for (const f of fields) f.write(obj[f.name]);
      }
      jsonMode = !jsonMode;
      fieldsWrap.hidden = jsonMode;
      jsonWrap.hidden = !jsonMode;
      toggle.textContent = jsonMode ? 'Edit as form' : 'Edit as JSON';
    },
  }, 'Edit as JSON') : null;
  const showJsonErr = (msg) => { jsonErr.textContent = msg || ''; jsonErr.hidden = !msg; };
  const fieldsWrap = h('div', { class: 'fields' }, fields.map((f) => f.el));
  const el = h('div', { class: 'schema-form' },
    props && !fields.length ? h('p', { class: 'muted' }, 'This workflow takes no input.') : null,
    !props ? h('p', { class: 'muted small' }, schema ? 'The input schema has no properties to build a form from; enter the input as JSON.' : 'This workflow has no input schema; any JSON object is accepted.') : null,
    fieldsWrap, jsonWrap, formErr, toggle ? h('div', { class: 'form-aside' }, toggle) : null);

  const clearErrors = () => {
    fields.forEach((f) => f.showError(''));
    showJsonErr('');
    formErr.hidden = true;
    clear(formErr);
  };
  const collect = () => {
    clearErrors();
    if (jsonMode) {
      try {
        const value = JSON.parse(jsonArea.value || '{}');
        return { input: value, errors: 0 };
      } catch (e) {
        showJsonErr(`not valid JSON: ${e.message}`);
        return { errors: 1 };
      }
    }
    const out = {};
    let errors = 0;
    for (const f of fields) {
      const r = f.read();
      if (r.error) { f.showError(r.error); errors++; } else if ('value' in r) out[f.name] = r.value;
    }
    return { input: out, errors };
  };
  const showErrors = (details) => {
    const leftover = [];
    const byField = new Map();
    for (const d of details || []) {
      const target = jsonMode ? null : fieldOfDetail(d);
      const f = target && fields.find((x) => x.name === target.name);
      if (f) {
        const msg = target.rest ? `${target.rest.replace(/^\./, '')}: ${d.message}` : d.message;
        byField.set(f, [...(byField.get(f) || []), msg]);
      } else leftover.push(d);
    }
    for (const [f, msgs] of byField) f.showError(msgs.join('; '));
    if (leftover.length) {
      clear(formErr, h('strong', null, 'The input does not match the schema:'),
        h('ul', null, leftover.map((d) => h('li', null, h('code', null, d.path || '$'), ' ', d.message))));
      formErr.hidden = false;
    }
    const first = [...byField.keys()][0];
    if (first) first.input.focus();
    return leftover;
  };
  const showMessage = (msg) => {
    clear(formErr, msg);
    formErr.hidden = false;
  };
  return { el, collect, showErrors, showMessage, clearErrors, fields };
}

/** The Run dialog for a workflow; resolves to the new run (and navigates to it) or closes. */
export async function openRunDialog(workflowId) {
  const body = h('div', { class: 'dialog-body' }, h('div', { class: 'state state-loading' }, h('span', { class: 'spinner' }), 'Loading the input schema…'));
  const title = h('h2', { id: 'run-dialog-title' }, `Run ${workflowId}`);
  const dlg = h('dialog', { class: 'dialog', 'aria-labelledby': 'run-dialog-title', id: 'run-dialog' },
    h('div', { class: 'dialog-head' }, title, h('button', { type: 'button', class: 'btn btn-ghost btn-icon', 'aria-label': 'Close', onclick: () => dlg.close() }, '✕')),
    body);
  dlg.addEventListener('close', () => dlg.remove());
  document.body.append(dlg);
  dlg.showModal();
  let wf;
  try {
    wf = await get(`/workflows/${encodeURIComponent(workflowId)}`);
  } catch (e) {
    if (e.status === 401) { dlg.close(); return; }
    clear(body, h('div', { class: 'state state-error', role: 'alert' }, h('strong', null, 'Cannot load the workflow'), h('p', null, e.message)));
    return;
  }
  const schema = wf.definition ? wf.definition.inputSchema : null;
  title.textContent = `Run ${wf.name || wf.id}`;
  const form = schemaForm(schema);
  const submit = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Start run');
  const status = h('span', { class: 'muted small', role: 'status' });
  const formEl = h('form', {
    class: 'run-form', novalidate: true, onsubmit: async (ev) => {
      ev.preventDefault();
      const { input, errors } = form.collect();
      if (errors) return;
      submit.disabled = true;
      status.textContent = 'Starting…';
      try {
        const res = await api('POST', '/workflow-runs', { workflowId: wf.id, input });
        dlg.close();
        location.hash = `#/runs/${res.run.id}`;
      } catch (e) {
        status.textContent = '';
        if (e.status === 400 && Array.isArray(e.details)) form.showErrors(e.details);
        else if (e.status !== 401) form.showMessage(`Could not start the run: ${e.message}`);
      } finally {
        submit.disabled = false;
      }
    },
  },
  h('p', { class: 'muted small' }, `${wf.id} · version ${wf.version}${wf.versionLabel ? ` (${wf.versionLabel})` : ''}`),
  form.el,
  h('div', { class: 'dialog-actions' }, status, h('button', { type: 'button', class: 'btn', onclick: () => dlg.close() }, 'Cancel'), submit));
  clear(body, formEl);
  const first = formEl.querySelector('input:not([type=checkbox]), select, textarea');
  if (first) first.focus();
}
