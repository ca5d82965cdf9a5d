// The ASA local chat page: plain JS, no build step, nothing fetched but this server's own API.
// Conversations live in localStorage; bonds data (per generated token: plan row + attention weights)
// is kept in memory for this visit only (it is large).
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = "asa.conversations.v1";
const SETTINGS = "asa.settings.v1";
const state = { convs: [], current: null, model: null, tpl: { user: "Alice", model: "Bob" },
                nLayer: 0, ctxSize: 0, controller: null, bonds: new Map() };
window.asaDebug = { lastRequest: null, lastBonds: null, lastContext: null };   // read by the browser test

// ---- persistence -----------------------------------------------------------------------------------
function load() {
  try { state.convs = JSON.parse(localStorage.getItem(STORE) || "[]"); } catch { state.convs = []; }
  try {
    const s = JSON.parse(localStorage.getItem(SETTINGS) || "{}");
    for (const k of ["temperature", "max-tokens", "repeat-penalty", "api-key"]) if (s[k] !== undefined) $(k).value = s[k];
    if (s.bonds !== undefined) $("bonds").checked = s.bonds;
  } catch { /* fresh settings */ }
  if (!state.convs.length) newConv();
  state.current = state.convs[0].id;
}
function save() {
  localStorage.setItem(STORE, JSON.stringify(state.convs));
  localStorage.setItem(SETTINGS, JSON.stringify({ temperature: $("temperature").value,
    "max-tokens": $("max-tokens").value, "repeat-penalty": $("repeat-penalty").value, "api-key": $("api-key").value, bonds: $("bonds").checked }));
}
function conv() { return state.convs.find((c) => c.id === state.current); }
function newConv() {
  const c = { id: Date.now().toString(36) + Math.random().toString(36).slice(2, 6), title: "New scene",
              mode: $("mode").value || "chat", system: "", messages: [], doc: "" };
  state.convs.unshift(c);
  state.current = c.id;
  return c;
}

// ---- rendering -------------------------------------------------------------------------------------
function renderList() {
  const ul = $("conv-list");
  ul.textContent = "";
  for (const c of state.convs) {
    const li = document.createElement("li");
    li.className = c.id === state.current ? "active" : "";
    const t = document.createElement("span");
    t.textContent = c.title;
    const del = document.createElement("button");
    del.textContent = "x";
    del.title = "delete";
    del.onclick = (e) => { e.stopPropagation(); removeConv(c.id); };
    li.append(t, del);
    li.onclick = () => { if (!state.controller) { state.current = c.id; renderAll(); } };
    ul.append(li);
  }
}
function removeConv(id) {
  state.convs = state.convs.filter((c) => c.id !== id);
  if (!state.convs.length) newConv();
  if (!conv()) state.current = state.convs[0].id;
  save(); renderAll();
}
function msgEl(m, idx) {
  const d = document.createElement("div");
  d.className = "msg " + m.role + (m.stopped ? " stopped" : "");
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = m.role === "user" ? `${state.tpl.user} (you)` : state.tpl.model;
  const text = document.createElement("div");
  text.className = "text";
  text.textContent = m.content;
  d.append(who, text);
  const tools = document.createElement("div");
  tools.className = "tools";
  if (m.role === "assistant" && state.bonds.has(m.bondsKey)) {
    const b = document.createElement("button");
    b.textContent = "bonds";
    b.className = "show-bonds";
    b.onclick = () => showBonds(m.bondsKey);
    tools.append(b);
  }
  d.append(tools);
  d.dataset.idx = idx;
  return d;
}
function renderAll() {
  const c = conv();
  $("mode").value = c.mode;
  $("system").value = c.system || "";
  $("chat-view").hidden = c.mode !== "chat";
  $("write-view").hidden = c.mode !== "write";
  $("input").hidden = c.mode !== "chat";
  $("send").textContent = c.mode === "chat" ? "Send" : "Continue";
  $("input").placeholder = `Say something to ${state.tpl.model}...`;
  const box = $("messages");
  box.textContent = "";
  c.messages.forEach((m, i) => box.append(msgEl(m, i)));
  box.parentElement.scrollTop = box.parentElement.scrollHeight;
  if ($("doc").innerText !== c.doc && !state.controller) $("doc").textContent = c.doc || "";
  renderList();
}

// ---- the API ---------------------------------------------------------------------------------------
async function post(path, body, signal) {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = "Bearer " + key;
  const r = await fetch(path, { method: "POST", headers, body: JSON.stringify(body), signal });
  if (!r.ok) {
    let msg = r.statusText;
    try { msg = (await r.json()).error.message; } catch { /* not JSON */ }
    throw new Error(`${r.status}: ${msg}`);
  }
  return r;
}

// Yields parsed `data:` payloads of an SSE response as they arrive.
async function* events(resp) {
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.search(/\r?\n\r?\n/)) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i).replace(/^\r?\n\r?\n/, "");
      for (const line of block.split(/\r?\n/)) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

function settings() {
  const t = parseFloat($("temperature").value), rp = parseFloat($("repeat-penalty").value);
  return { temperature: Number.isFinite(t) ? t : 0.7, max_tokens: Math.max(1, parseInt($("max-tokens").value) || 96),
           repeat_penalty: rp > 0 ? rp : 1.0,
           asa_bonds: $("bonds").checked, stream: true, stream_options: { include_usage: true } };
}

// Streams one reply; onText(segment) per piece. Returns {finish, bondsKey}.
async function stream(path, body, onText) {
  state.controller = new AbortController();
  $("stop").disabled = false; $("send").disabled = true;
  $("status").textContent = "generating...";
  window.asaDebug.lastRequest = { path, body };
  const rec = { context: null, tokens: [] };
  const key = "b" + Date.now().toString(36) + Math.random().toString(36).slice(2, 6);
  let n = 0, t0 = 0, finish = null;
  try {
    const resp = await post(path, body, state.controller.signal);
    for await (const ev of events(resp)) {
      if (ev.error) throw new Error(ev.error.message);
      if (ev.asa_context) rec.context = ev.asa_context;
      if (ev.asa_bonds) rec.tokens.push(...ev.asa_bonds);
      const ch = ev.choices && ev.choices[0];
      if (!ch) continue;
      const text = ch.delta ? ch.delta.content : ch.text;
      if (text) {
        if (!t0) t0 = performance.now();
        n += 1;
        onText(text);
        const dt = (performance.now() - t0) / 1000;
        if (dt > 0.2) $("tps").textContent = `${(n / dt).toFixed(1)} chunks/s`;
      }
      if (ch.finish_reason) {
        finish = ch.finish_reason;
        const s = ev.asa_stats;
        if (s) {
          $("tps").textContent = `${s.tokens_per_second.toFixed(1)} tok/s`;
          $("ctx").textContent = `context ${s.context_used}/${s.ctx_size} (${s.cached_tokens} cached)`;
        }
      }
    }
    $("status").textContent = finish ? `finished (${finish})` : "";
  } catch (e) {
    if (e.name === "AbortError") { finish = "stopped"; $("status").textContent = "stopped"; }
    else { $("status").textContent = "error: " + e.message; finish = "error"; }
  } finally {
    state.controller = null;
    $("stop").disabled = true; $("send").disabled = false;
  }
  if (rec.context && rec.tokens.length) {
    state.bonds.set(key, rec);
    window.asaDebug.lastBonds = rec.tokens;
    window.asaDebug.lastContext = rec.context;
    return { finish, bondsKey: key };
  }
  return { finish, bondsKey: null };
}

async function sendChat() {
  const c = conv();
  const text = $("input").value.trim();
  if (!text) return;
  $("input").value = "";
  c.system = $("system").value;
  c.messages.push({ role: "user", content: text });
  if (c.title === "New scene") c.title = text.slice(0, 28);
  const m = { role: "assistant", content: "" };
  c.messages.push(m);
  renderAll();
  const el = $("messages").lastElementChild.querySelector(".text");
  const msgs = [];
  if (c.system.trim()) msgs.push({ role: "system", content: c.system });
  for (const x of c.messages.slice(0, -1)) msgs.push({ role: x.role, content: x.content });
  const body = { model: state.model, messages: msgs, ...settings() };
  const r = await stream("/v1/chat/completions", body, (seg) => {
    m.content += seg;
    el.textContent = m.content;
    el.scrollIntoView({ block: "end" });
  });
  m.content = m.content.trim();
  m.stopped = r.finish === "stopped";
  m.bondsKey = r.bondsKey;
  save(); renderAll();
  if (r.bondsKey) showBonds(r.bondsKey);
}

async function sendWrite() {
  const c = conv();
  const doc = $("doc");
  c.doc = doc.innerText;
  if (!c.doc.trim()) return;
  const prompt = (c.system.trim() ? c.system.trim() + "\n\n" : "") + c.doc;
  const gen = document.createElement("span");
  gen.className = "gen";
  doc.append(gen);
  const body = { model: state.model, prompt, ...settings() };
  const r = await stream("/v1/completions", body, (seg) => { gen.textContent += seg; });
  c.doc = doc.innerText;
  if (c.title === "New scene") c.title = c.doc.slice(0, 28);
  save(); renderList();
  if (r.bondsKey) showBonds(r.bondsKey);
}

// ---- the bonds view --------------------------------------------------------------------------------
let shown = null, pinned = null;
function showBonds(key) {
  const rec = state.bonds.get(key);
  if (!rec) return;
  shown = rec; pinned = null;
  $("bonds-panel").hidden = false;
  const strip = $("bond-strip");
  strip.textContent = "";
  const nPrompt = rec.context.length;
  rec.context.forEach((t, pos) => strip.append(tokSpan(t, pos, false)));
  rec.tokens.forEach((b, j) => strip.append(tokSpan(b.text, nPrompt + j, true, j)));
  $("bond-info").textContent = `${nPrompt} prompt tokens, ${rec.tokens.length} generated`;
}
function tokSpan(text, pos, gen, j) {
  const s = document.createElement("span");
  s.textContent = text;
  s.dataset.pos = pos;
  if (gen) {
    s.className = "gen";
    s.dataset.j = j;
    s.onmouseenter = () => { if (pinned === null) highlight(j); };
    s.onclick = () => { pinned = pinned === j ? null : j; highlight(j); };
  }
  return s;
}
function weightsFor(b) {
  const sel = $("layer").value;
  if (!b.weights || !b.weights.length) return b.keys.map(() => 1);   // backend gave no weights: row only
  if (sel !== "avg") return b.weights[parseInt(sel)];
  const n = b.keys.length, L = b.weights.length, w = new Array(n).fill(0);
  for (const lw of b.weights) for (let i = 0; i < n; i++) w[i] += lw[i] / L;
  return w;
}
function highlight(j) {
  const b = shown.tokens[j];
  const strip = $("bond-strip");
  for (const el of strip.querySelectorAll(".allowed, .selected")) {
    el.classList.remove("allowed", "selected");
    el.style.background = "";
    delete el.dataset.w;
  }
  const self = strip.querySelector(`span[data-pos="${b.pos}"]`);
  if (!b.keys) { $("bond-info").textContent = "no plan row (the context was full)"; return; }
  const w = weightsFor(b);
  const max = Math.max(...w, 1e-9);
  b.keys.forEach((k, i) => {
    const el = strip.querySelector(`span[data-pos="${k}"]`);
    if (!el) return;
    el.classList.add("allowed");
    el.dataset.w = w[i].toFixed(5);
    el.style.background = `rgba(230, 140, 0, ${(0.08 + 0.82 * w[i] / max).toFixed(3)})`;
  });
  self.classList.add("selected");
  const top = b.keys.map((k, i) => [w[i], b.key_text[i]]).sort((x, y) => y[0] - x[0]).slice(0, 3)
    .map(([x, t]) => `${JSON.stringify(t)} ${(100 * x).toFixed(0)}%`).join(", ");
  $("bond-info").textContent = `token ${JSON.stringify(b.text)} at ${b.pos}: ${b.keys.length} allowed of ` +
    `${b.pos + 1} earlier tokens; most attention: ${top}`;
}

// ---- wiring ----------------------------------------------------------------------------------------
async function init() {
  load();
  try {
    const r = await fetch("/v1/models", { headers: $("api-key").value ? { Authorization: "Bearer " + $("api-key").value } : {} });
    const m = (await r.json()).data[0];
    state.model = m.id;
    state.nLayer = m.asa.n_layer;
    state.ctxSize = m.asa.ctx_size;
    if (m.asa.chat_template) state.tpl = m.asa.chat_template;
    document.title = `ASA local: ${m.id}`;
    $("ctx").textContent = `context -/${m.asa.ctx_size}`;
    for (let i = 0; i < m.asa.n_layer; i++) {
      const o = document.createElement("option");
      o.value = i; o.textContent = `layer ${i}`;
      $("layer").append(o);
    }
  } catch (e) { $("status").textContent = "cannot reach the server: " + e.message; }
  renderAll();
}
$("composer").onsubmit = (e) => { e.preventDefault(); if (state.controller) return;
  conv().mode === "chat" ? sendChat() : sendWrite(); };
$("input").onkeydown = (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); } };
$("stop").onclick = () => { if (state.controller) state.controller.abort(); };
$("new-conv").onclick = () => { if (!state.controller) { newConv(); save(); renderAll(); } };
$("mode").onchange = () => { conv().mode = $("mode").value; save(); renderAll(); };
$("system").onchange = () => { conv().system = $("system").value; save(); };
$("doc").oninput = () => { conv().doc = $("doc").innerText; save(); };
for (const id of ["temperature", "max-tokens", "repeat-penalty", "api-key", "bonds"]) $(id).onchange = save;
$("layer").onchange = () => { const j = pinned; if (shown && j !== null) highlight(j); };
$("close-bonds").onclick = () => { $("bonds-panel").hidden = true; };
init();
