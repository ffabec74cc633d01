// Master-key pages: budgets (spend against amount, alerts fired), providers (breaker, in flight, latency, errors) and
// keys (create with the secret shown once, revoke after a confirmation, rotate).
import { api, fmt, h, showStatus, table } from "./dom.js";

export async function budgets(root) {
  const list = await api("/admin/budgets?limit=1000");
  const meter = (b) => {
    if (b.spent_usd === undefined) return h("span", { class: "muted" }, "per key / source / team");
    const used = b.amount_usd > 0 ? (b.spent_usd + (b.reserved_usd || 0)) / b.amount_usd : 1;
    const bar = h("span");
    bar.style.width = `${Math.min(100, used * 100).toFixed(1)}%`;
    return h("div", { class: "row" },
      h("div", { class: `meter${used >= 1 ? " over" : used >= 0.8 ? " high" : ""}`, role: "meter",
                 "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.round(used * 100),
                 "aria-label": `${b.id} used` }, bar),
      h("span", {}, `${fmt.usd(b.spent_usd)} of ${fmt.usd(b.amount_usd)} (${(used * 100).toFixed(1)}%)`));
  };
  // Each threshold crossed this period, once per pool (a key / source / team of a scoped budget says whose).
  const alerts = (b) => (b.alerts || []).length === 0 ? h("span", { class: "muted" }, "none") :
    h("ul", { class: "alerts" }, b.alerts.map((a) => h("li", { title: `${fmt.usd(a.spent_usd)} spent` },
      `${a.threshold}%${a.scope_value === "*" ? "" : ` (${a.scope_value})`} at ` +
      new Date(a.fired_at * 1000).toLocaleString([], { dateStyle: "short", timeStyle: "short" }))));
  root.replaceChildren(
    h("h1", {}, "Budgets"),
    h("p", { class: "muted" }, "Spend in the current period against each budget's amount; reserved is what calls in " +
      "flight may still spend; alerts fired are the thresholds (budgets.alerts.thresholds) crossed this period. " +
      "Create budgets with POST /admin/budgets."),
    table([
      { title: "Budget", cell: (b) => b.name ? `${b.name} (${b.id})` : b.id },
      { title: "Period", cell: (b) => `${b.period} since ${b.period_start.slice(0, 10)}` },
      { title: "Scope", cell: (b) => b.scope },
      { title: "Spent", cell: meter },
      { title: "Reserved", num: true, cell: (b) => b.reserved_usd === undefined ? "–" : fmt.usd(b.reserved_usd) },
      { title: "Limit", cell: (b) => b.hard ? "hard" : "soft (alerts only)" },
      { title: "Alerts fired", cell: alerts, attrs: { "data-testid": "budget-alerts" } },
    ], list.data, () => ({ "data-testid": "budget-row" })));
}

function percentile(hist, bounds, q) {
  const n = hist.reduce((a, b) => a + b, 0);
  if (!n) return null;
  let seen = 0;
  for (let i = 0; i < hist.length; i++) {
    seen += hist[i];
    if (seen >= q * n) return i < bounds.length ? bounds[i] : Infinity;
  }
  return null;
}

const bound = (v) => v === null ? "–" : v === Infinity ? "> 60 s" : `≤ ${v} ms`;

export async function providers(root) {
  const since = Math.floor(Date.now() / 1000 / 3600) * 3600 - 23 * 3600;
  const [live, usage] = await Promise.all([api("/admin/providers"),
                                           api(`/v1/usage/summary?group_by=provider&since=${since}`)]);
  const byName = new Map(usage.data.map((r) => [r.provider, r]));
  const rows = live.data.map((p) => {
    const targets = Object.values(p.targets || {});
    const states = Array.from(new Set(targets.map((t) => t.state)));
    return { ...p, states: states.length ? states : ["closed"], inflight: targets.reduce((a, t) => a + t.inflight, 0),
             usage: byName.get(p.name) };
  });
  root.replaceChildren(
    h("h1", {}, "Providers"),
    h("p", { class: "muted" }, `Breaker state and calls in flight now (${live.inflight} in the gateway); latency and ` +
      "errors over the last 24 hours, from the usage rollups (percentiles are histogram bucket bounds)."),
    table([
      { title: "Provider", cell: (p) => `${p.name} (${p.type})` },
      { title: "Breaker", cell: (p) => p.states.map((s) => h("span", { class: `pill ${s}` }, s.replace("_", " "))) },
      { title: "Health check", cell: (p) => p.health ? h("span", { class: `pill ${p.health.healthy ? "healthy" : "unhealthy"}` },
        p.health.healthy ? "healthy" : `unhealthy ${p.health.error || ""}`) : h("span", { class: "muted" }, "not probed") },
      { title: "In flight", num: true, cell: (p) => fmt.int(p.inflight) },
      { title: "Requests (24 h)", num: true, cell: (p) => fmt.int(p.usage ? p.usage.requests : 0) },
      { title: "Error rate", num: true, cell: (p) => p.usage ? fmt.pct(p.usage.errors, p.usage.requests) : "–" },
      { title: "Latency p50", num: true, cell: (p) => p.usage ? bound(percentile(p.usage.latency_histogram, usage.latency_bounds_ms, 0.5)) : "–" },
      { title: "p95", num: true, cell: (p) => p.usage ? bound(percentile(p.usage.latency_histogram, usage.latency_bounds_ms, 0.95)) : "–" },
      { title: "Avg", num: true, cell: (p) => p.usage ? fmt.ms(p.usage.avg_latency_ms) : "–" },
    ], rows, () => ({ "data-testid": "provider-row" })));
}

function secretBox(title, rec) {
  const code = h("code", { "data-testid": "key-secret" }, rec.key);
  return h("div", { class: "secret", role: "status" },
    h("strong", {}, title), " Copy it now: it is not stored and will not be shown again.", code,
    h("button", { type: "button", class: "secondary", onclick: async (e) => {
      try { await navigator.clipboard.writeText(rec.key); e.target.textContent = "Copied"; }
      catch { e.target.textContent = "Select the key and copy it"; }
    } }, "Copy"));
}

export async function keys(root) {
  const list = await api("/admin/keys?limit=1000");
  const reveal = h("div");
  const reload = async (box) => { await keys(root); if (box) root.querySelector("#key-secret-slot").replaceChildren(box); };
  const actions = (k) => {
    const cell = h("div", { class: "row" });
    const confirmThen = (label, danger, run) => (ev) => {
      const back = () => { cell.replaceChildren(...buttons()); ev.target.focus(); };
      const yes = h("button", { type: "button", class: danger ? "danger" : null, "data-testid": "confirm",
                                onclick: async () => {
                                  try { await run(); } catch (e) { showStatus(e.message); back(); }
                                } }, `Yes, ${label}`);
      cell.replaceChildren(h("span", { class: "confirm" }, `${label[0].toUpperCase() + label.slice(1)} ${k.name || k.id}?`,
        yes, h("button", { type: "button", class: "secondary", "data-testid": "cancel", onclick: back }, "Cancel")));
      yes.focus();
    };
    const buttons = () => [
      h("button", { type: "button", class: "secondary", "data-testid": "key-rotate",
                    onclick: confirmThen("rotate", false, async () => {
                      const rec = await api(`/admin/keys/${encodeURIComponent(k.id)}/rotate`, { method: "POST", body: {} });
                      await reload(secretBox(`New secret for ${rec.name || rec.id}.`, rec));
                    }) }, "Rotate"),
      h("button", { type: "button", class: "danger", "data-testid": "key-revoke",
                    onclick: confirmThen("revoke", true, async () => {
                      await api(`/admin/keys/${encodeURIComponent(k.id)}`, { method: "DELETE" });
                      await reload(null);
                      showStatus(`Key ${k.name || k.id} revoked.`, "info");
                    }) }, "Revoke"),
    ];
    cell.append(...buttons());
    return cell;
  };
  const form = h("form", { class: "card", onsubmit: async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const body = { name: f.elements.name.value.trim() };
    const models = f.elements.models.value.split(",").map((s) => s.trim()).filter(Boolean);
    if (models.length) body.models = models;
    if (f.elements.budget.value.trim()) body.budget_id = f.elements.budget.value.trim();
    if (f.elements.rpm.value) body.rpm = Number(f.elements.rpm.value);
    try {
      const rec = await api("/admin/keys", { method: "POST", body });
      await reload(secretBox(`Key ${rec.name || rec.id} created.`, rec));
    } catch (e) { showStatus(e.message); }
  } },
  h("h2", {}, "Create a key"),
  h("div", { class: "controls" },
    h("div", {}, h("label", { for: "key-name" }, "Name"), h("input", { id: "key-name", name: "name", type: "text", "data-testid": "key-name", required: true })),
    h("div", {}, h("label", { for: "key-models" }, "Models (comma-separated, empty: all)"), h("input", { id: "key-models", name: "models", type: "text" })),
    h("div", {}, h("label", { for: "key-budget" }, "Budget id"), h("input", { id: "key-budget", name: "budget", type: "text" })),
    h("div", {}, h("label", { for: "key-rpm" }, "Requests / minute"), h("input", { id: "key-rpm", name: "rpm", type: "number", min: 1 })),
    h("div", {}, h("button", { type: "submit", "data-testid": "key-create" }, "Create key"))));
  root.replaceChildren(
    h("h1", {}, "Keys"),
    h("div", { id: "key-secret-slot" }, reveal),
    form,
    table([
      { title: "Name", cell: (k) => k.name || h("span", { class: "muted" }, "(unnamed)") },
      { title: "Prefix", cell: (k) => h("code", {}, `${k.key_prefix}…`) },
      { title: "Id", cell: (k) => h("code", {}, k.id) },
      { title: "Models", cell: (k) => k.models ? k.models.join(", ") : "all" },
      { title: "Budget", cell: (k) => k.budget_id || "–" },
      { title: "Created", cell: (k) => k.created_at ? new Date(k.created_at * 1000).toISOString().slice(0, 16).replace("T", " ") : "–" },
      { title: "", cell: actions },
    ], list.data, (k) => ({ "data-testid": "key-row", "data-key-id": k.id })));
}
