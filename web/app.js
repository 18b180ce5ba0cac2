// Ask Panel web UI: sign-in, new panel, live deliberation, history.
// All API data (and above all LLM output) is untrusted: it only ever reaches the page through
// textContent / element properties, never through innerHTML.

const KEY_STORAGE = 'askpanel.apiKey';
const HISTORY_PAGE = 20;

// Every event type the engine or the built-in strategies emit. EventSource only delivers named
// events to listeners registered by name, so a custom type a tenant's strategy emits leaves a
// gap in the seqs; the gap is filled from the stored event list (see PanelView.fillGap).
const EVENT_TYPES = [
  'panel.status', 'panel.completed', 'panel.failed', 'expert.delta', 'expert.message', 'consensus',
  'input.requested', 'input.received', 'round.started', 'message',
  'adversarial.judged', 'assumption.probed', 'assumption.surfaced', 'council.chair_fallback',
  'council.opinions', 'council.revealed', 'council.review', 'council.synthesis', 'delphi.feedback',
  'delphi.stopped', 'human.counted', 'human.skipped', 'idea.developed', 'ideas.clustered',
  'ideas.proposed', 'position.revised', 'risk.mitigated', 'risk.raised', 'risk.registered',
  'section.synthesised', 'socratic.stopped',
];
const TERMINAL = new Set(['completed', 'failed', 'cancelled']);

const $ = (id) => document.getElementById(id);

// ---- tiny DOM helper (text only) -----------------------------------------------------------

function el(tag, opts = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(opts)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = String(v);
    else if (k === 'on') for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else if (k in node && typeof node[k] !== 'function') node[k] = v;
    else node.setAttribute(k, String(v));
  }
  for (const c of [].concat(children)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function clear(node) {
  while (node.firstChild) node.firstChild.remove();
}

function humanize(s) {
  return String(s).replace(/[._]+/g, ' ').replace(/^\w/, (c) => c.toUpperCase());
}

function pct(x) {
  return `${Math.round(Math.max(0, Math.min(1, Number(x))) * 100)}%`;
}

function initials(name) {
  const parts = String(name || '?').replace(/^(dr|prof|mr|mrs|ms)\.?\s+/i, '').split(/\s+/).filter(Boolean);
  return ((parts[0] || '?')[0] + (parts.length > 1 ? parts[parts.length - 1][0] : '')).toUpperCase();
}

function fmtDate(ms) {
  if (!Number.isFinite(ms)) return '';
  const d = new Date(ms);
  const diff = Date.now() - ms;
  if (diff >= 0 && diff < 60_000) return 'just now';
  if (diff >= 0 && diff < 3_600_000) return `${Math.floor(diff / 60_000)} min ago`;
  if (diff >= 0 && diff < 86_400_000 && d.getDate() === new Date().getDate())
    return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return d.toLocaleDateString([], { day: 'numeric', month: 'short', year: 'numeric' });
}

// crypto.randomUUID needs a secure context; plain-HTTP deployments are not one.
function randomKey() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

function isPlainObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

// ---- API -----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const FRIENDLY = {
  unauthorized: 'Your API key was not accepted. Check it, or ask your administrator for a new one.',
  forbidden: 'Your key is not allowed to do that.',
  rate_limited: 'Too many requests right now. Wait a moment and try again.',
  not_found: 'That item no longer exists.',
};

// Plain words for an API error: the server's own message, with a friendlier line for the
// handful of cases people hit in normal use.
function describeError(err) {
  if (!(err instanceof ApiError)) return `Could not reach the server (${err.message}). Check your connection and try again.`;
  if (err.status === 401) return FRIENDLY.unauthorized;
  if (err.status === 429) return FRIENDLY.rate_limited;
  const msg = err.message ? err.message.charAt(0).toUpperCase() + err.message.slice(1) : 'Something went wrong';
  return `${msg.replace(/\.?$/, '.')}${err.code ? ` (${err.code})` : ''}`;
}

async function api(method, path, body, extraHeaders = {}) {
  const headers = { Accept: 'application/json', ...extraHeaders };
  const key = localStorage.getItem(KEY_STORAGE);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (res.status === 204) return null;
  let payload = null;
  const text = await res.text();
  try {
    payload = text ? JSON.parse(text) : null;
  } catch {
    payload = null;
  }
  if (!res.ok) {
    const e = payload && payload.error;
    const code = e && typeof e.code === 'string' ? e.code : `http_${res.status}`;
    const message = e && typeof e.message === 'string' ? e.message : `the server answered ${res.status} ${res.statusText}`;
    if (res.status === 401 && path !== '/v1/tenant') signOut(FRIENDLY.unauthorized);
    throw new ApiError(res.status, code, message);
  }
  return payload;
}

// ---- banner --------------------------------------------------------------------------------

function showBanner(text) {
  $('banner-text').textContent = text;
  $('banner').hidden = false;
}

function hideBanner() {
  $('banner').hidden = true;
}

// ---- state ---------------------------------------------------------------------------------

const state = {
  tenant: null,
  strategies: [],
  experts: [],
  historyCursor: null,
  stream: null, // the open panel's PanelView
};

// ---- sign-in -------------------------------------------------------------------------------

async function signIn(key) {
  localStorage.setItem(KEY_STORAGE, key);
  try {
    state.tenant = await api('GET', '/v1/tenant');
  } catch (err) {
    // Keep the key through a network hiccup; drop it only when the server refuses it.
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) localStorage.removeItem(KEY_STORAGE);
    throw err;
  }
  applyBranding(state.tenant);
  $('signin').hidden = true;
  $('shell').hidden = false;
  await Promise.all([loadCatalog(), loadHistory(true)]);
  route();
}

function signOut(message) {
  localStorage.removeItem(KEY_STORAGE);
  if (location.hash) history.replaceState(null, '', location.pathname);
  showSignin(message);
}

function showSignin(message) {
  if (state.stream) state.stream.close();
  state.stream = null;
  state.tenant = null;
  $('shell').hidden = true;
  $('signin').hidden = false;
  $('api-key').value = '';
  const err = $('signin-error');
  err.textContent = message || '';
  err.hidden = !message;
  document.title = 'Ask Panel';
}

function safeColor(c) {
  return typeof c === 'string' && c.length < 64 && CSS.supports('color', c) ? c : null;
}

function applyBranding(t) {
  const b = isPlainObject(t.branding) ? t.branding : {};
  const name = typeof b.display_name === 'string' && b.display_name ? b.display_name : t.name;
  $('tenant-name').textContent = name;
  $('tenant-tagline').textContent = typeof b.tagline === 'string' ? b.tagline : '';
  const logo = typeof b.logo_text === 'string' && b.logo_text ? b.logo_text : initials(name);
  $('logo').textContent = logo.slice(0, 3);
  $('role').textContent = t.role;
  $('role').title = `Signed in as ${t.role} of ${t.name}`;
  const root = document.documentElement.style;
  const primary = safeColor(b.primary_color);
  const accent = safeColor(b.accent_color);
  if (primary) root.setProperty('--primary', primary);
  else root.removeProperty('--primary');
  if (accent) root.setProperty('--accent', accent);
  else root.removeProperty('--accent');
  document.title = `${name} · Ask Panel`;
}

// ---- catalog: strategies and experts --------------------------------------------------------

async function loadCatalog() {
  const [strategies, experts, algorithms] = await Promise.all([
    api('GET', '/v1/strategies'),
    loadAllExperts(),
    api('GET', '/v1/consensus-algorithms').catch(() => ({ data: [] })), // optional: the strategy's default applies
  ]);
  state.strategies = Array.isArray(strategies && strategies.data) ? strategies.data : [];
  state.experts = experts;
  state.algorithms = Array.isArray(algorithms && algorithms.data) ? algorithms.data : [];
  renderStrategyPicker();
  renderExpertPicker();
}

async function loadAllExperts() {
  const out = [];
  let cursor = null;
  for (let page = 0; page < 10; page++) {
    const q = cursor ? `?limit=200&cursor=${encodeURIComponent(cursor)}` : '?limit=200';
    const res = await api('GET', `/v1/experts${q}`);
    out.push(...(res.data || []));
    cursor = res.next_cursor;
    if (!cursor) break;
  }
  return out;
}

function renderStrategyPicker() {
  const sel = $('strategy');
  clear(sel);
  const def = state.tenant && state.tenant.default_strategy;
  for (const s of state.strategies) {
    sel.append(el('option', { value: s.name, text: s.origin === 'builtin' ? humanize(s.name) : `${humanize(s.name)} (${s.origin})` }));
  }
  if (def && state.strategies.some((s) => s.name === def)) sel.value = def;
  renderStrategyDetails();
}

function currentStrategy() {
  return state.strategies.find((s) => s.name === $('strategy').value) || null;
}

function renderStrategyDetails() {
  const s = currentStrategy();
  $('strategy-desc').textContent = s ? s.description : '';
  const box = $('params');
  clear(box);
  const params = s && isPlainObject(s.params) ? s.params : {};
  const names = Object.keys(params).sort();
  for (const name of names) box.append(paramInput(name, params[name]));
  const cons = $('consensus');
  clear(cons);
  cons.append(el('option', { value: '', text: s && s.consensus ? `Strategy default (${s.consensus})` : 'Strategy default' }));
  for (const a of state.algorithms || []) cons.append(el('option', { value: a.name, text: a.name, title: a.description || '' }));
  cons.closest('.param').hidden = (state.algorithms || []).length === 0;
  $('params-box').hidden = names.length === 0 && cons.closest('.param').hidden;
}

const EXPERT_PARAM = /^expert id/i;

// One typed input per declared parameter; its default is pre-filled and its bounds enforced.
function paramInput(name, spec) {
  spec = isPlainObject(spec) ? spec : {};
  const id = `param-${name}`;
  const wrap = el('div', { class: 'param' });
  wrap.dataset.param = name;
  wrap.dataset.type = spec.type || 'string';
  const label = el('label', { htmlFor: id, text: humanize(name) });
  const hint = spec.description ? el('p', { class: 'hint', text: spec.description }) : null;
  let input;
  if (spec.type === 'boolean') {
    wrap.classList.add('bool');
    input = el('input', { type: 'checkbox', id, checked: spec.default === true });
    label.prepend(input);
    wrap.append(label, hint || '');
    return wrap;
  }
  if (spec.type === 'integer' || spec.type === 'number') {
    input = el('input', { type: 'number', id, step: spec.type === 'integer' ? '1' : 'any' });
    if (Number.isFinite(spec.min)) input.min = String(spec.min);
    if (Number.isFinite(spec.max)) input.max = String(spec.max);
    if (Number.isFinite(spec.default)) input.value = String(spec.default);
    const range = [Number.isFinite(spec.min) ? `min ${spec.min}` : '', Number.isFinite(spec.max) ? `max ${spec.max}` : '']
      .filter(Boolean).join(', ');
    if (range && hint) hint.textContent = `${spec.description} (${range})`;
  } else if (Array.isArray(spec.enum)) {
    input = el('select', { id });
    for (const v of spec.enum) input.append(el('option', { value: String(v), text: String(v) }));
    if (spec.default !== undefined) input.value = String(spec.default);
  } else if (spec.type === 'array') {
    input = el('textarea', { id, rows: 3, placeholder: 'One per line' });
    input.value = Array.isArray(spec.default) ? spec.default.join('\n') : '';
    if (hint) {
      const n = [spec.min_items ? `at least ${spec.min_items}` : '', spec.max_items ? `at most ${spec.max_items}` : ''].filter(Boolean).join(', ');
      hint.textContent = `${spec.description}: one per line${n ? ` (${n})` : ''}`;
    }
  } else if (spec.type === 'string' && EXPERT_PARAM.test(spec.description || '')) {
    input = el('select', { id });
    input.append(el('option', { value: '', text: 'Automatic' }));
    for (const e of state.experts) input.append(el('option', { value: e.id, text: `${e.name} — ${e.role}` }));
    input.value = typeof spec.default === 'string' ? spec.default : '';
    if (hint) hint.textContent = spec.description.replace(/^expert id of (the )?/i, 'Who acts as ').replace(/\(empty: /, '(automatic: ');
  } else {
    input = el('input', { type: 'text', id });
    if (typeof spec.default === 'string') input.value = spec.default;
  }
  wrap.append(label, input, hint || '');
  return wrap;
}

// The params that differ from the strategy's defaults (the engine fills in the rest), or an
// error message naming the first invalid one.
function collectParams() {
  const s = currentStrategy();
  const specs = s && isPlainObject(s.params) ? s.params : {};
  const out = {};
  for (const wrap of $('params').querySelectorAll('.param')) {
    const name = wrap.dataset.param;
    const spec = specs[name] || {};
    const input = wrap.querySelector('input, select, textarea');
    let value;
    if (spec.type === 'boolean') value = input.checked;
    else if (spec.type === 'integer' || spec.type === 'number') {
      if (input.value.trim() === '') continue;
      value = Number(input.value);
      if (!Number.isFinite(value) || (spec.type === 'integer' && !Number.isInteger(value)))
        return { error: `${humanize(name)} must be ${spec.type === 'integer' ? 'a whole number' : 'a number'}.` };
      if ((Number.isFinite(spec.min) && value < spec.min) || (Number.isFinite(spec.max) && value > spec.max))
        return { error: `${humanize(name)} must be between ${spec.min} and ${spec.max}.` };
    } else if (spec.type === 'array') {
      value = input.value.split('\n').map((x) => x.trim()).filter(Boolean);
      if ((spec.min_items && value.length < spec.min_items) || (spec.max_items && value.length > spec.max_items))
        return { error: `${humanize(name)} needs between ${spec.min_items || 0} and ${spec.max_items || '∞'} entries.` };
    } else value = input.value;
    if (JSON.stringify(value) !== JSON.stringify(spec.default)) out[name] = value;
  }
  return { params: out };
}

function renderExpertPicker() {
  const box = $('experts');
  clear(box);
  for (const e of state.experts) {
    const cb = el('input', { type: 'checkbox', value: e.id, checked: true, on: { change: updateExpertCount } });
    const title = [e.persona, Array.isArray(e.expertise) ? e.expertise.join(', ') : ''].filter(Boolean).join(' — ');
    box.append(el('label', { class: 'expert-option', title }, [
      cb,
      el('span', {}, [el('span', { class: 'e-name', text: e.name }), el('span', { class: 'e-role', text: e.role })]),
    ]));
  }
  if (state.experts.length === 0) box.append(el('p', { class: 'muted small', text: 'This tenant has no experts yet; the strategy will use its defaults.' }));
  updateExpertCount();
}

function selectedExperts() {
  return [...$('experts').querySelectorAll('input[type=checkbox]:checked')].map((c) => c.value);
}

function updateExpertCount() {
  const n = selectedExperts().length;
  $('experts-count').textContent = state.experts.length ? `${n} of ${state.experts.length} selected` : '';
}

// ---- new panel -----------------------------------------------------------------------------

async function createPanel(ev) {
  ev.preventDefault();
  const errBox = $('new-error');
  errBox.hidden = true;
  const question = $('question').value.trim();
  const fail = (msg) => {
    errBox.textContent = msg;
    errBox.hidden = false;
  };
  if (!question) return fail('Please write the question the panel should deliberate on.');
  const strategy = $('strategy').value;
  if (!strategy) return fail('Please pick a strategy.');
  const { params, error } = collectParams();
  if (error) return fail(error);
  const body = { question, strategy };
  const title = $('title').value.trim();
  if (title) body.title = title;
  if (Object.keys(params).length) body.params = params;
  if ($('consensus').value) body.consensus = $('consensus').value;
  if (state.experts.length) {
    const ids = selectedExperts();
    if (ids.length === 0) return fail('Please choose at least one expert.');
    if (ids.length > 12) return fail('A panel can have at most 12 experts.');
    body.experts = ids;
  }
  const btn = $('create-btn');
  btn.disabled = true;
  btn.textContent = 'Convening…';
  try {
    // One key per submitted form: a retried or double-sent request makes one panel, not two.
    const panel = await api('POST', '/v1/panels', body, { 'Idempotency-Key': randomKey() });
    await api('POST', `/v1/panels/${encodeURIComponent(panel.id)}/execute`);
    $('question').value = '';
    $('title').value = '';
    location.hash = `#/panel/${panel.id}`;
    loadHistory(true).catch(() => {});
  } catch (err) {
    fail(describeError(err));
  } finally {
    btn.disabled = false;
    btn.textContent = 'Convene the panel';
  }
}

// ---- history -------------------------------------------------------------------------------

async function loadHistory(reset) {
  const list = $('history-list');
  const q = new URLSearchParams({ limit: String(HISTORY_PAGE) });
  if (!reset && state.historyCursor) q.set('cursor', state.historyCursor);
  const btn = $('history-more');
  btn.disabled = true;
  try {
    const page = await api('GET', `/v1/panels?${q}`);
    if (reset) clear(list);
    for (const p of page.data || []) list.append(historyItem(p));
    state.historyCursor = page.next_cursor || null;
    btn.hidden = !state.historyCursor;
    $('history-empty').hidden = list.childElementCount > 0;
    markActiveHistory();
  } catch (err) {
    showBanner(`Could not load your panels. ${describeError(err)}`);
  } finally {
    btn.disabled = false;
  }
}

function statusChip(status, extraClass = '') {
  return el('span', { class: `chip status status-${status} ${extraClass}`.trim() }, [el('span', { class: 'dot' }), humanize(status)]);
}

function historyItem(p) {
  const a = el('a', { href: `#/panel/${p.id}`, title: p.question }, [
    el('span', { class: 'h-title', text: p.title || p.question }),
    el('span', { class: 'h-meta' }, [statusChip(p.status), el('span', { text: humanize(p.strategy) }), el('span', { text: `· ${fmtDate(p.created_at)}` })]),
  ]);
  a.dataset.id = p.id;
  return el('li', {}, [a]);
}

function markActiveHistory() {
  const m = location.hash.match(/^#\/panel\/([0-9a-f-]+)/i);
  for (const a of $('history-list').querySelectorAll('a')) a.classList.toggle('active', !!m && a.dataset.id === m[1]);
}

function updateHistoryStatus(id, status) {
  const a = $('history-list').querySelector(`a[data-id="${CSS.escape(id)}"]`);
  if (!a) return;
  const old = a.querySelector('.chip.status');
  if (old) old.replaceWith(statusChip(status));
}

// ---- panel view: live or replayed deliberation ------------------------------------------------

// Extracts the readable part of a streaming answer: LLMs asked for JSON stream it as raw JSON
// text, so show the string values (one per line) rather than the braces and quotes.
function readablePartialJson(s) {
  if (!/^\s*[{[]/.test(s)) return s;
  const out = [];
  const stack = [];
  let inStr = false, esc = false, isKey = false, cur = '', prev = '', hex = null;
  for (const ch of s) {
    if (inStr) {
      if (hex !== null) {
        hex += ch;
        if (hex.length === 4) {
          const code = parseInt(hex, 16);
          if (!isKey && Number.isFinite(code)) cur += String.fromCharCode(code);
          hex = null;
        }
      } else if (esc) {
        esc = false;
        if (ch === 'u') hex = '';
        else if (!isKey) cur += ch === 'n' ? '\n' : ch === 't' ? '\t' : ch === 'r' ? '' : ch;
      } else if (ch === '\\') esc = true;
      else if (ch === '"') {
        inStr = false;
        if (!isKey && cur.trim()) out.push(cur);
        prev = '"';
      } else if (!isKey) cur += ch;
      continue;
    }
    if (/\s/.test(ch)) continue;
    if (ch === '"') {
      inStr = true;
      cur = '';
      isKey = stack[stack.length - 1] === '{' && (prev === '{' || prev === ',');
    } else if (ch === '{' || ch === '[') stack.push(ch);
    else if (ch === '}' || ch === ']') stack.pop();
    prev = ch;
  }
  if (inStr && !isKey && cur.trim()) out.push(cur);
  return out.join('\n\n');
}

const MAIN_TEXT_KEYS = ['answer', 'text', 'summary', 'synthesis', 'critique', 'argument', 'response', 'statement', 'opinion', 'content', 'question', 'rationale'];
const BADGE_KEYS = new Set(['position', 'confidence', 'estimate', 'score', 'verdict']);

function mainTextOf(data, fallback) {
  if (isPlainObject(data)) {
    for (const k of MAIN_TEXT_KEYS) if (typeof data[k] === 'string' && data[k].trim()) return { key: k, text: data[k] };
    let best = null;
    for (const [k, v] of Object.entries(data)) if (typeof v === 'string' && (!best || v.length > best.text.length)) best = { key: k, text: v };
    if (best && best.text.length > 40) return best;
    return { key: null, text: '' };
  }
  return { key: null, text: typeof fallback === 'string' ? readablePartialJson(fallback) : '' };
}

function shortValue(v) {
  if (v === null || v === undefined) return '';
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : String(Math.round(v * 1000) / 1000);
  if (typeof v === 'boolean') return v ? 'yes' : 'no';
  if (typeof v === 'string') return v;
  if (Array.isArray(v)) return v.every((x) => typeof x !== 'object' || x === null) ? v.map(shortValue).join(' › ') : `${v.length} items`;
  if (isPlainObject(v)) {
    if (typeof v.name === 'string') return v.name;
    return Object.entries(v).filter(([, x]) => typeof x !== 'object').map(([k, x]) => `${humanize(k)}: ${shortValue(x)}`).join(', ');
  }
  return String(v);
}

class PanelView {
  constructor(id) {
    this.id = id;
    this.panel = null;
    this.lastSeq = 0;
    this.finished = false;
    this.closed = false;
    this.es = null;
    this.retryTimer = null;
    this.failures = 0;
    this.round = null; // {el, cards}
    this.streaming = new Map(); // expert id -> card being streamed
    this.pendingInput = null;
    this.expertsById = new Map();
    this.queue = []; // events in arrival order, applied one at a time (gap fills are async)
    this.draining = false;
  }

  async open() {
    const timeline = $('timeline');
    clear(timeline);
    clear($('input-area'));
    clear($('outcome'));
    $('panel-title').textContent = '';
    $('panel-question').textContent = 'Loading…';
    $('panel-meta').textContent = '';
    clear($('panel-roster'));
    $('cancel-btn').hidden = true;
    const jump = $('jump-result');
    if (jump) jump.remove();
    this.setConn(null);
    try {
      this.panel = await api('GET', `/v1/panels/${encodeURIComponent(this.id)}`);
    } catch (err) {
      if (this.closed) return;
      $('panel-question').textContent = '';
      showBanner(describeError(err));
      return;
    }
    if (this.closed) return;
    this.renderHead();
    if (this.panel.status === 'created') this.offerStart();
    else if (!TERMINAL.has(this.panel.status))
      $('timeline').append(el('div', { class: 'empty-state', id: 'waiting', text: 'Waiting for the experts…' }));
    this.connect();
  }

  // A panel that was created but never queued (e.g. its execute call failed) can be started here.
  offerStart() {
    const btn = el('button', { type: 'button', class: 'btn primary', text: 'Start the panel' });
    const box = el('div', { class: 'card empty-state', id: 'waiting' }, [el('p', { text: 'This panel has not been started yet.' }), btn]);
    btn.addEventListener('click', async () => {
      btn.disabled = true;
      try {
        const p = await api('POST', `/v1/panels/${encodeURIComponent(this.id)}/execute`);
        if (p && p.status) this.setStatus(p.status);
        box.replaceChildren(el('p', { text: 'Waiting for the experts…' }));
      } catch (err) {
        showBanner(`Could not start the panel. ${describeError(err)}`);
        btn.disabled = false;
      }
    });
    $('timeline').append(box);
  }

  renderHead() {
    const p = this.panel;
    for (const e of p.experts || []) this.expertsById.set(e.id, e);
    $('panel-title').textContent = p.title || '';
    $('panel-question').textContent = p.question;
    $('panel-strategy').textContent = humanize(p.strategy);
    const meta = [`Asked ${fmtDate(p.created_at)}`];
    if (p.consensus) meta.push(`consensus: ${p.consensus}`);
    if (p.strategy_version) meta.push(`strategy version ${p.strategy_version.slice(0, 10)}`);
    $('panel-meta').textContent = meta.join(' · ');
    const roster = $('panel-roster');
    clear(roster);
    for (const e of p.experts || []) roster.append(el('li', { title: e.persona || '' }, [el('b', { text: e.name }), ` · ${e.role || ''}`]));
    this.setStatus(p.status);
    document.title = `${p.title || p.question.slice(0, 60)} · Ask Panel`;
  }

  setStatus(status) {
    if (this.finished && !TERMINAL.has(status)) return; // a stale answer after the final event
    const chip = $('panel-status');
    chip.className = `chip status status-${status}`;
    clear(chip);
    chip.append(el('span', { class: 'dot' }), humanize(status));
    $('cancel-btn').hidden = TERMINAL.has(status) || this.finished;
    updateHistoryStatus(this.id, status);
  }

  setConn(mode) {
    const c = $('conn');
    c.hidden = !mode;
    c.className = `conn ${mode || ''}`;
    c.textContent = mode === 'live' ? 'Live' : mode === 'retry' ? 'Reconnecting…' : '';
  }

  async connect() {
    if (this.closed || this.finished) return;
    let tok;
    try {
      tok = await api('POST', `/v1/panels/${encodeURIComponent(this.id)}/stream-token`);
    } catch (err) {
      if (this.closed) return;
      this.retryLater(describeError(err));
      return;
    }
    if (this.closed || this.finished) return;
    // A fresh EventSource starts without Last-Event-ID; `after` resumes where we were.
    let url = tok.url;
    if (this.lastSeq > 0) url += `${url.includes('?') ? '&' : '?'}after=${this.lastSeq}`;
    const es = new EventSource(url);
    this.es = es;
    const handler = (e) => this.onEvent(e);
    for (const t of EVENT_TYPES) es.addEventListener(t, handler);
    es.onopen = () => {
      this.failures = 0;
      this.setConn('live');
    };
    es.onerror = () => {
      if (this.closed || this.finished || this.es !== es) return;
      // A finished panel's stream ends after its replay; should it lack a final event, stop
      // here with what the panel itself says instead of replaying it forever.
      if (TERMINAL.has(this.panel.status) && (this.lastSeq > 0 || this.failures >= 2)) {
        this.finishFromPanel();
        return;
      }
      // CONNECTING: the browser retries by itself, sending Last-Event-ID. CLOSED: it gave up
      // (e.g. the stream token expired): get a new token and resume from our last seq.
      if (es.readyState === EventSource.CLOSED) {
        es.close();
        this.retryLater(null);
      } else this.setConn('retry');
    };
  }

  retryLater(message) {
    this.setConn('retry');
    this.failures++;
    if (message && this.failures >= 3) showBanner(`Lost the live connection to this panel. ${message}`);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), Math.min(10_000, 500 * 2 ** this.failures));
  }

  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    if (this.es) this.es.close();
    this.es = null;
  }

  finishFromPanel() {
    const p = this.panel;
    if (!$('outcome').firstChild) {
      if (p.status === 'completed' && isPlainObject(p.result)) this.renderResult(p.result);
      else if (p.status === 'failed') this.renderFailure(p.error || '');
      else if (p.status === 'cancelled') this.renderCancelled();
    }
    this.finish();
  }

  // Cards whose final message never came (the call failed or the panel stopped) stop blinking.
  settleStreaming() {
    for (const card of this.streaming.values()) {
      card.classList.remove('streaming');
      card.classList.add('interrupted');
    }
    this.streaming.clear();
  }

  finish() {
    this.settleStreaming();
    this.finished = true;
    clearTimeout(this.retryTimer);
    if (this.es) this.es.close();
    this.es = null;
    this.setConn(null);
    $('cancel-btn').hidden = true;
  }

  onEvent(e) {
    if (this.closed) return;
    const type = e.type;
    // Only expert.delta is ephemeral (no id: lastEventId still holds the previous seq). Every
    // other event carries its seq; anything at or below the last one seen is a replay.
    let seq = 0;
    if (type !== 'expert.delta') {
      const n = Number(e.lastEventId);
      if (Number.isFinite(n) && n > 0) seq = n;
    }
    let data;
    try {
      data = JSON.parse(e.data);
    } catch {
      data = e.data;
    }
    this.queue.push({ type, seq, data });
    if (!this.draining) this.drain();
  }

  async drain() {
    this.draining = true;
    while (this.queue.length > 0 && !this.closed) {
      const ev = this.queue.shift();
      if (ev.seq > 0) {
        if (ev.seq <= this.lastSeq) continue;
        if (ev.seq > this.lastSeq + 1) await this.fillGap(ev.seq);
        if (this.closed || ev.seq <= this.lastSeq) continue;
        this.lastSeq = ev.seq;
      }
      this.apply(ev.type, ev.data, ev.seq);
    }
    this.draining = false;
  }

  // Applies the stored events between the last one seen and `before` (custom types that the
  // EventSource did not hand over). A failure leaves the gap: the live stream goes on.
  async fillGap(before) {
    try {
      for (let pages = 0; pages < 20 && this.lastSeq < before - 1 && !this.closed; pages++) {
        const page = await api('GET', `/v1/panels/${encodeURIComponent(this.id)}/events?after=${this.lastSeq}&limit=100`);
        const list = page && Array.isArray(page.data) ? page.data : [];
        for (const ev of list) {
          if (this.closed || !isPlainObject(ev) || typeof ev.seq !== 'number') continue;
          if (ev.seq <= this.lastSeq || ev.seq >= before) continue;
          this.lastSeq = ev.seq;
          this.apply(String(ev.type), ev.data, ev.seq);
        }
        if (!page || !page.has_more || list.length === 0) break;
      }
    } catch {
      /* keep streaming; the stored list shows the rest on the next visit */
    }
  }

  apply(type, data, seq = 0) {
    const d = isPlainObject(data) ? data : {};
    const waiting = $('waiting');
    if (waiting && type !== 'panel.status') waiting.remove();
    switch (type) {
      case 'panel.status':
        if (typeof d.status === 'string') this.setStatus(d.status);
        if (d.status === 'cancelled') {
          this.renderCancelled();
          this.finish();
        }
        break;
      case 'round.started':
        this.startRound(d);
        break;
      case 'expert.delta':
        this.onDelta(d);
        break;
      case 'expert.message':
        this.onMessage(d);
        break;
      case 'consensus':
        this.container().append(this.consensusBlock(d));
        break;
      case 'input.requested':
        this.showInputForm(isPlainObject(d.request) ? d.request : d, seq);
        break;
      case 'input.received':
        clear($('input-area'));
        this.container().append(this.note('Human input received', this.describeInput(isPlainObject(d.input) ? d.input : d)));
        break;
      case 'human.counted':
        this.container().append(this.note('Human ballot counted',
          [shortValue(d.position), typeof d.confidence === 'number' ? `${pct(d.confidence)} confident` : '', d.interpreted ? 'interpreted from the text' : '']
            .filter(Boolean).join(' · ')));
        break;
      case 'human.skipped':
        this.container().append(this.note('Human input not counted', typeof d.reason === 'string' ? d.reason : ''));
        break;
      case 'panel.completed':
        clear($('input-area'));
        this.setStatus('completed');
        this.renderResult(isPlainObject(d.result) ? d.result : {});
        this.finish();
        break;
      case 'panel.failed':
        clear($('input-area'));
        this.setStatus('failed');
        this.renderFailure(typeof d.error === 'string' ? d.error : shortValue(d));
        this.finish();
        break;
      default:
        this.container().append(this.note(humanize(type), this.describeCustom(d)));
    }
  }

  describeInput(input) {
    if (typeof input === 'string') return input;
    const head = [input.position ? `“${shortValue(input.position)}”` : '', typeof input.confidence === 'number' ? `${pct(input.confidence)} confident` : '']
      .filter(Boolean).join(', ');
    const text = typeof input.text === 'string' ? input.text : '';
    return head && text ? `${head}: ${text}` : head || text || shortValue(input);
  }

  // A readable rendering of one structured field of an answer (lists of objects as items:
  // their main text, then their short fields), or null when there is nothing to show.
  valueNode(v) {
    if (Array.isArray(v) && v.some(isPlainObject)) {
      const ul = el('ul', { class: 'items' });
      for (const item of v) {
        if (!isPlainObject(item)) {
          ul.append(el('li', { text: shortValue(item) }));
          continue;
        }
        const main = mainTextOf(item, '');
        const meta = Object.entries(item)
          .filter(([k, x]) => k !== main.key && x !== null && typeof x !== 'object' && String(x) !== '')
          .map(([k, x]) => `${humanize(k)}: ${typeof x === 'string' ? this.nameOf(x) : shortValue(x)}`);
        ul.append(el('li', {}, [main.text ? el('span', { text: main.text }) : null, meta.length ? el('span', { class: 'meta', text: meta.join(' · ') }) : null]));
      }
      return ul.childElementCount ? ul : null;
    }
    const text = typeof v === 'string' ? this.nameOf(v) : shortValue(v);
    return text === '' ? null : document.createTextNode(text);
  }

  describeCustom(d) {
    const parts = [];
    for (const [k, v] of Object.entries(d)) {
      if (k === 'labels' && isPlainObject(v)) {
        parts.push(Object.entries(v).map(([label, id]) => `${label} = ${this.nameOf(id)}`).join(', '));
        continue;
      }
      const ids = Array.isArray(v) && v.length > 0 && v.every((x) => this.expertsById.has(x));
      const val = typeof v === 'string' ? this.nameOf(v) : ids ? v.map((x) => this.nameOf(x)).join(', ') : shortValue(v);
      if (val !== '') parts.push(`${humanize(k)}: ${val}`);
    }
    return parts.join(' · ');
  }

  // An expert's name for an expert id, anything else unchanged.
  nameOf(id) {
    const e = this.expertsById.get(id);
    return e ? e.name : id;
  }

  note(title, text) {
    if (text && text.length > 220) {
      return el('details', { class: 'note' }, [
        el('summary', {}, [el('b', { text: title }), ` — ${text.slice(0, 160).trimEnd()}…`]),
        el('p', { text }),
      ]);
    }
    return el('div', { class: 'note' }, [el('b', { text: title }), text ? ` — ${text}` : '']);
  }

  // Where cards go: the current round's grid, or the timeline before any round started.
  container() {
    return this.round ? this.round.section : $('timeline');
  }

  cardsGrid() {
    if (!this.round) this.startRound({});
    if (!this.round.grid || this.round.section.lastElementChild !== this.round.grid) {
      this.round.grid = el('div', { class: 'round-cards' });
      this.round.section.append(this.round.grid);
    }
    return this.round.grid;
  }

  startRound(d) {
    // e.g. "Round 2 · Review", or "Round 1 · Section: context" when the strategy says more
    const extras = Object.entries(d)
      .filter(([k, v]) => k !== 'round' && k !== 'stage' && typeof v === 'string' && v && v.length <= 60)
      .map(([, v]) => v);
    const stage = d.stage ? humanize(d.stage) + (extras.length ? `: ${extras.join(', ')}` : '') : extras.join(', ');
    const label = [Number.isFinite(d.round) ? `Round ${d.round}` : 'Deliberation', stage || null].filter(Boolean).join(' · ');
    const section = el('section', { class: 'round' }, [el('div', { class: 'round-sep', text: label })]);
    section.dataset.round = d.round ?? '';
    $('timeline').append(section);
    this.settleStreaming();
    this.round = { section, grid: null, number: d.round };
  }

  expertCard(expertId, name) {
    const e = this.expertsById.get(expertId) || {};
    const display = name || e.name || 'Expert';
    const card = el('article', { class: 'card expert-card streaming' }, [
      el('div', { class: 'ec-head' }, [
        el('span', { class: 'avatar', text: initials(display), 'aria-hidden': 'true' }),
        el('div', { class: 'ec-who' }, [el('span', { class: 'ec-name', text: display }), el('span', { class: 'ec-role', text: e.role || '' })]),
      ]),
      el('div', { class: 'ec-badges' }),
      el('div', { class: 'ec-body' }),
    ]);
    card.dataset.expert = expertId || '';
    card.rawText = '';
    this.cardsGrid().append(card);
    return card;
  }

  onDelta(d) {
    if (typeof d.delta !== 'string') return;
    const id = typeof d.expert === 'string' ? d.expert : '';
    let card = this.streaming.get(id);
    if (!card) {
      card = this.expertCard(id, d.name);
      this.streaming.set(id, card);
    }
    card.rawText += d.delta;
    card.querySelector('.ec-body').textContent = readablePartialJson(card.rawText);
  }

  onMessage(d) {
    const id = typeof d.expert === 'string' ? d.expert : '';
    let card = this.streaming.get(id);
    this.streaming.delete(id);
    if (!card) card = this.expertCard(id, d.name);
    if (typeof d.name === 'string') card.querySelector('.ec-name').textContent = d.name;
    card.classList.remove('streaming');
    card.classList.add('final');
    const data = isPlainObject(d.data) ? d.data : null;
    const main = mainTextOf(data, typeof d.text === 'string' ? d.text : '');
    card.querySelector('.ec-body').textContent = main.text;
    const badges = card.querySelector('.ec-badges');
    clear(badges);
    const extra = el('dl', { class: 'ec-extra' });
    if (data) {
      if (data.position !== undefined && data.position !== null) badges.append(el('span', { class: 'chip pos', text: shortValue(data.position) }));
      if (data.estimate !== undefined) badges.append(el('span', { class: 'chip pos', text: `Estimate ${shortValue(data.estimate)}` }));
      if (typeof data.confidence === 'number') badges.append(el('span', { class: 'chip conf', text: `${pct(data.confidence)} confident`, title: 'Confidence' }));
      for (const [k, v] of Object.entries(data)) {
        if (k === main.key || BADGE_KEYS.has(k)) continue;
        const node = this.valueNode(v);
        if (node) extra.append(el('dt', { text: humanize(k) }), el('dd', {}, [node]));
      }
    }
    const old = card.querySelector('.ec-extra');
    if (old) old.remove();
    if (extra.childElementCount) card.append(extra);
  }

  consensusBlock(d) {
    const r = isPlainObject(d.result) ? d.result : d;
    const algorithm = d.algorithm || r.algorithm || 'consensus';
    const block = el('div', { class: 'card consensus-block' }, [
      el('div', { class: 'cb-head' }, [
        el('span', { class: 'cb-title', text: `Consensus · ${algorithm}` }),
        r.position !== undefined && r.position !== null ? el('span', { class: 'cb-pos', text: `→ ${shortValue(r.position)}` }) : null,
      ]),
    ]);
    if (typeof r.level === 'number') block.append(levelMeter(r.level));
    const dissent = dissentList(r.dissent);
    if (dissent) block.append(dissent);
    return block;
  }

  // seq is the request's own event: the answer names it (request_seq), so that an answer sent
  // late, or after another client answered, is refused (409) rather than taken by a later
  // request this form never showed.
  showInputForm(req, seq = 0) {
    const area = $('input-area');
    clear(area);
    const options = Array.isArray(req.options) ? req.options.filter((o) => typeof o === 'string') : [];
    const form = el('form', { class: 'card input-form', id: 'input-form', novalidate: true });
    form.append(
      el('h3', { text: req.kind === 'decision' ? 'Your final position is needed' : 'The panel asks for your view' }),
      el('p', { class: 'input-prompt', text: typeof req.prompt === 'string' ? req.prompt : 'The panel is waiting for your input.' }),
    );
    if (options.length) {
      const group = el('div', { class: 'options', role: 'radiogroup', 'aria-label': 'Your position' });
      options.forEach((o, i) => group.append(el('label', { class: 'option' }, [el('input', { type: 'radio', name: 'position', value: o, id: `input-opt-${i}` }), o])));
      const conf = el('input', { type: 'range', id: 'input-confidence', min: '0', max: '1', step: '0.05', value: '0.8' });
      const out = el('output', { htmlFor: 'input-confidence', text: '80%' });
      conf.addEventListener('input', () => {
        out.textContent = pct(conf.value);
      });
      form.append(
        el('div', {}, [el('label', { text: 'Your position' }), group]),
        el('div', {}, [el('label', { htmlFor: 'input-confidence', text: 'Confidence' }), el('div', { class: 'range-row' }, [conf, out])]),
      );
    }
    form.append(el('div', {}, [
      el('label', { htmlFor: 'input-text', text: options.length ? 'Your reasoning (optional)' : 'Your answer' }),
      el('textarea', { id: 'input-text', rows: 3, maxLength: 8000 }),
    ]));
    const err = el('p', { class: 'form-error', role: 'alert', hidden: true });
    const btn = el('button', { type: 'submit', class: 'btn primary', id: 'input-submit', text: 'Send to the panel' });
    form.append(err, el('div', { class: 'actions' }, [btn]));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      err.hidden = true;
      const text = form.querySelector('#input-text').value.trim();
      const picked = form.querySelector('input[name=position]:checked');
      let body;
      if (picked) {
        const input = { position: picked.value, confidence: Number(form.querySelector('#input-confidence').value) };
        if (text) input.text = text;
        body = { input };
      } else if (text) body = { text };
      else {
        err.textContent = options.length ? 'Pick a position or write your answer.' : 'Please write your answer.';
        err.hidden = false;
        return;
      }
      if (seq > 0) body.request_seq = seq;
      btn.disabled = true;
      btn.textContent = 'Sending…';
      try {
        await api('POST', `/v1/panels/${encodeURIComponent(this.id)}/input`, body);
        if (area.contains(form)) {
          clear(area);
          area.append(el('p', { class: 'note', text: 'Thanks — the panel resumes with your input.' }));
        }
      } catch (e) {
        if (e instanceof ApiError && e.code === 'stale_input_request' && area.contains(form)) {
          // Answered elsewhere (or this form is late): sending again could not succeed. The
          // stream brings the answer given, or the panel's next request, in its own form.
          clear(area);
          area.append(el('p', { class: 'note', id: 'input-stale', text: 'This question was already answered (perhaps in another window); the panel has moved on.' }));
          return;
        }
        err.textContent = describeError(e);
        err.hidden = false;
        btn.disabled = false;
        btn.textContent = 'Send to the panel';
      }
    });
    area.append(form);
    if (!this.replaying) form.scrollIntoView({ behavior: 'smooth', block: 'nearest' });
  }

  renderResult(r) {
    const out = $('outcome');
    clear(out);
    const jump = el('button', { type: 'button', class: 'btn secondary small', id: 'jump-result', text: 'Jump to the conclusion ↓' });
    jump.addEventListener('click', () => $('result').scrollIntoView({ behavior: 'smooth', block: 'start' }));
    const old = $('jump-result');
    if (old) old.remove();
    $('cancel-btn').after(jump);
    const box = el('section', { class: 'card result', id: 'result' }, [el('h3', {}, [statusChip('completed'), 'The panel’s conclusion'])]);
    if (typeof r.summary === 'string' && r.summary) box.append(el('h4', { text: 'Summary' }), el('p', { class: 'summary', text: r.summary }));
    if (typeof r.recommendation === 'string' && r.recommendation)
      box.append(el('h4', { text: 'Recommendation' }), el('p', { class: 'recommendation', text: r.recommendation }));
    else if (isPlainObject(r.recommendation)) box.append(el('h4', { text: 'Recommendation' }), el('p', { class: 'recommendation', text: shortValue(r.recommendation) }));

    const c = isPlainObject(r.consensus) ? r.consensus : {};
    const level = typeof c.level === 'number' ? c.level : typeof r.level === 'number' ? r.level : null;
    const position = c.position ?? r.position ?? null;
    const stats = el('div', { class: 'result-grid' });
    if (position !== null && position !== undefined) stats.append(stat('Position', shortValue(position)));
    if (c.algorithm) stats.append(stat('Consensus algorithm', c.algorithm));
    if (Number.isFinite(r.rounds)) stats.append(stat('Rounds', String(r.rounds)));
    if (stats.childElementCount) box.append(stats);
    if (level !== null) {
      const m = levelMeter(level);
      m.classList.add('consensus-level');
      box.append(el('h4', { text: 'Consensus level' }), m);
    }
    const dissentItems = Array.isArray(r.dissent) && r.dissent.length ? r.dissent : c.dissent;
    box.append(el('h4', { text: 'Dissent' }));
    box.append(dissentList(dissentItems) || el('p', { class: 'muted small', text: 'No dissent recorded.' }));

    const positions = Array.isArray(r.positions) ? r.positions.filter(isPlainObject) : [];
    if (positions.length) {
      const tbody = el('tbody');
      for (const p of positions) {
        tbody.append(el('tr', {}, [
          el('td', { text: p.name || this.nameOf(p.expert) || '' }),
          el('td', { text: shortValue(p.position ?? p.estimate ?? '') }),
          el('td', { class: 'num', text: typeof p.confidence === 'number' ? pct(p.confidence) : '' }),
          el('td', { text: typeof p.reason === 'string' ? p.reason : '' }),
        ]));
      }
      box.append(el('h4', { text: 'Positions' }), el('div', { class: 'table-wrap' }, [el('table', { class: 'positions' }, [
        el('thead', {}, [el('tr', {}, ['Expert', 'Position', 'Confidence', 'Reason'].map((h) => el('th', { text: h })))]),
        tbody,
      ])]));
    }
    // Whatever else the strategy reports: lists of records (risk register, sections,
    // assumptions...) as their own sections, the rest as key/value details.
    const shown = new Set(['summary', 'recommendation', 'consensus', 'dissent', 'positions', 'rounds', 'position', 'level']);
    const kv = el('dl', { class: 'kv' });
    for (const [k, v] of Object.entries(r)) {
      if (shown.has(k)) continue;
      if (Array.isArray(v) && v.some(isPlainObject)) {
        const node = this.valueNode(v);
        if (node) box.append(el('h4', { text: humanize(k) }), node);
        continue;
      }
      const val = typeof v === 'string' ? this.nameOf(v) : isPlainObject(v) ? this.describeCustom(v) : shortValue(v);
      if (val === '') continue;
      kv.append(el('dt', { text: humanize(k) }), el('dd', { text: val }));
    }
    if (kv.childElementCount) box.append(el('h4', { text: 'Details' }), kv);
    out.append(box);
  }

  renderFailure(message) {
    const out = $('outcome');
    clear(out);
    out.append(el('section', { class: 'card failure', id: 'failure' }, [
      el('h3', { text: 'The panel could not finish' }),
      el('p', { text: message || 'The engine reported a failure without a reason.' }),
    ]));
  }

  renderCancelled() {
    const out = $('outcome');
    clear(out);
    clear($('input-area'));
    out.append(el('section', { class: 'card failure cancelled', id: 'cancelled' }, [
      el('h3', { text: 'Cancelled' }),
      el('p', { text: 'This panel was cancelled before it reached a conclusion.' }),
    ]));
  }
}

function stat(k, v) {
  return el('div', { class: 'stat' }, [el('div', { class: 'k', text: k }), el('div', { class: 'v', text: v })]);
}

function levelMeter(level) {
  const fill = el('div', { class: 'meter-fill' });
  fill.style.width = pct(level);
  return el('div', { class: 'meter', role: 'meter', 'aria-valuemin': '0', 'aria-valuemax': '1', 'aria-valuenow': String(level), 'aria-label': 'Consensus level' }, [
    el('div', { class: 'meter-track' }, [fill]),
    el('span', { class: 'meter-value', text: pct(level) }),
  ]);
}

function dissentList(items) {
  if (!Array.isArray(items) || items.length === 0) return null;
  const ul = el('ul', { class: 'dissent' });
  for (const it of items) {
    if (isPlainObject(it)) {
      ul.append(el('li', {}, [
        el('b', { text: it.name || it.expert || 'Expert' }),
        it.position !== undefined ? ` holds “${shortValue(it.position)}”` : '',
        typeof it.reason === 'string' && it.reason ? ` — ${it.reason}` : '',
      ]));
    } else ul.append(el('li', { text: shortValue(it) }));
  }
  return ul;
}

// ---- routing -------------------------------------------------------------------------------

function route() {
  if (!state.tenant) return;
  hideBanner();
  const m = location.hash.match(/^#\/panel\/([0-9a-fA-F-]{36})$/);
  if (state.stream && (!m || state.stream.id !== m[1])) {
    state.stream.close();
    state.stream = null;
  }
  $('view-new').hidden = !!m;
  $('view-panel').hidden = !m;
  markActiveHistory();
  if (m) {
    if (!state.stream) {
      state.stream = new PanelView(m[1]);
      state.stream.open();
    }
  } else {
    document.title = `${$('tenant-name').textContent} · Ask Panel`;
    if (location.hash !== '#/new' && location.hash !== '') history.replaceState(null, '', '#/new');
  }
  window.scrollTo(0, 0);
}

async function cancelPanel() {
  const v = state.stream;
  if (!v) return;
  const btn = $('cancel-btn');
  btn.disabled = true;
  try {
    // The cancellation itself arrives as an event on the stream; the answer may predate it.
    const p = await api('POST', `/v1/panels/${encodeURIComponent(v.id)}/cancel`);
    if (p && TERMINAL.has(p.status) && !v.finished) v.setStatus(p.status);
  } catch (err) {
    showBanner(`Could not cancel the panel. ${describeError(err)}`);
  } finally {
    btn.disabled = false;
  }
}

// ---- start ---------------------------------------------------------------------------------

function init() {
  $('signin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const key = $('api-key').value.trim();
    const err = $('signin-error');
    err.hidden = true;
    if (!key) {
      err.textContent = 'Please paste your API key.';
      err.hidden = false;
      return;
    }
    const btn = $('signin-btn');
    btn.disabled = true;
    btn.textContent = 'Signing in…';
    try {
      await signIn(key);
    } catch (e) {
      err.textContent = describeError(e);
      err.hidden = false;
    } finally {
      btn.disabled = false;
      btn.textContent = 'Sign in';
    }
  });
  $('signout').addEventListener('click', () => signOut());
  $('banner-close').addEventListener('click', hideBanner);
  $('strategy').addEventListener('change', renderStrategyDetails);
  $('new-form').addEventListener('submit', createPanel);
  $('experts-all').addEventListener('click', () => {
    for (const c of $('experts').querySelectorAll('input')) c.checked = true;
    updateExpertCount();
  });
  $('experts-none').addEventListener('click', () => {
    for (const c of $('experts').querySelectorAll('input')) c.checked = false;
    updateExpertCount();
  });
  $('history-more').addEventListener('click', () => loadHistory(false));
  $('history-refresh').addEventListener('click', () => loadHistory(true));
  $('cancel-btn').addEventListener('click', cancelPanel);
  window.addEventListener('hashchange', route);

  const key = localStorage.getItem(KEY_STORAGE);
  if (!key) {
    showSignin();
    return;
  }
  signIn(key).catch((e) => showSignin(describeError(e)));
}

init();
