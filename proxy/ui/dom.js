// Small helpers shared by the pages: element building (no innerHTML: nothing typed by anyone becomes
// markup), the gateway's REST API with the signed-in key, and number formats.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const KEY = "llm-service.key";
export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set key(v) { if (v) sessionStorage.setItem(KEY, v); else sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

export async function api(path, opts = {}) {
  const headers = { authorization: `Bearer ${opts.key || session.key}` };
  if (opts.body !== undefined) headers["content-type"] = "application/json";
  const r = await fetch(path, { method: opts.method || "GET", headers,
                                body: opts.body !== undefined ? JSON.stringify(opts.body) : undefined });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!r.ok) {
    const msg = data && data.error && data.error.message ? data.error.message : `HTTP ${r.status}`;
    throw new ApiError(r.status, msg);
  }
  return data;
}

export function showStatus(msg, kind = "error") {
  const el = document.getElementById("status");
  if (!msg) { el.hidden = true; el.textContent = ""; return; }
  el.textContent = msg;
  el.className = kind === "info" ? "status info" : "status";
  el.hidden = false;
}

export const fmt = {
  int: (n) => (n ?? 0).toLocaleString("en-US"),
  usd: (n) => n === null || n === undefined ? "unpriced" : `$${n < 0.01 && n > 0 ? n.toFixed(6) : n.toFixed(2)}`,
  usdExact: (n) => n === null || n === undefined ? "unpriced" : `$${n.toFixed(6)}`,
  pct: (a, b) => b ? `${(100 * a / b).toFixed(1)}%` : "–",
  ms: (n) => n === null || n === undefined ? "–" : `${Math.round(n)} ms`,
};

export function table(columns, rows, rowAttrs = () => ({})) {
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.title)))),
    h("tbody", {}, rows.length ? rows.map((r) => h("tr", rowAttrs(r), columns.map((c) =>
      h("td", { class: c.num ? "num" : null, ...(c.attrs || {}) }, c.cell(r)))))
      : h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, "Nothing yet."))));
}
