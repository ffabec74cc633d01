// Overview: totals, requests (or tokens, cost) over time by hour or day, and the split by model, source,
// key and provider. Everything comes from /v1/usage/summary, which reads the hourly rollups: days are
// cut in the selected time zone by the gateway.
import { api, fmt, h, table } from "./dom.js";
import { barChart } from "./chart.js";

const HOUR = 3600;
const browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
const prefs = { range: "24h", grain: "hour", tz: browserZone, metric: "requests" };
const RANGES = { "24h": { label: "Last 24 hours", days: 1 }, "7d": { label: "Last 7 days", days: 7 },
                 "30d": { label: "Last 30 days", days: 30 } };

function zones() {
  let all = [];
  try { all = Intl.supportedValuesOf("timeZone"); } catch { all = []; }
  return Array.from(new Set(["UTC", browserZone, ...all]));
}

function localDate(epochSeconds, tz) {
  return new Intl.DateTimeFormat("en-CA", { timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit" })
    .format(new Date(epochSeconds * 1000));
}

function addDays(isoDate, n) {
  const [y, m, d] = isoDate.split("-").map(Number);
  return new Date(Date.UTC(y, m - 1, d + n)).toISOString().slice(0, 10);
}

// The buckets to draw (empty ones included) and the `since` to ask for.
function buckets(range, grain, tz) {
  const now = Math.floor(Date.now() / 1000);
  const days = RANGES[range].days;
  if (grain === "hour") {
    const last = Math.floor(now / HOUR) * HOUR;
    const first = last - (days * 24 - 1) * HOUR;
    const hourFmt = new Intl.DateTimeFormat("en-GB", { timeZone: tz, hour: "2-digit", minute: "2-digit",
                                                       day: days > 1 ? "2-digit" : undefined,
                                                       month: days > 1 ? "2-digit" : undefined });
    const list = [];
    for (let t = first; t <= last; t += HOUR) {
      list.push({ key: String(t), label: new Date(t * 1000).toLocaleString("en-GB", { timeZone: tz }),
                  short: hourFmt.format(new Date(t * 1000)) });
    }
    return { since: String(first), list, keyOf: (row) => String(Date.parse(row.hour) / 1000) };
  }
  const today = localDate(now, tz);
  const first = addDays(today, -(days - 1));
  const list = [];
  for (let d = first; d <= today; d = addDays(d, 1)) list.push({ key: d, label: d, short: d.slice(5) });
  return { since: first, list, keyOf: (row) => row.day };
}

const METRICS = {
  requests: { title: "Requests", value: (r) => r.requests, format: (v) => Number.isInteger(v) ? fmt.int(v) : v.toFixed(1) },
  tokens: { title: "Tokens", value: (r) => r.total_tokens, format: (v) => Number.isInteger(v) ? fmt.int(v) : v.toFixed(1) },
  cost: { title: "Cost (USD)", value: (r) => r.cost, format: (v) => `$${v < 1 ? v.toFixed(4) : v.toFixed(2)}` },
};

function select(id, label, options, value, onChange, testid) {
  return h("div", {},
    h("label", { for: id }, label),
    h("select", { id, "data-testid": testid, onchange: (e) => onChange(e.target.value) },
      options.map(([v, text]) => h("option", { value: v, selected: v === value }, text))));
}

const GROUP_TABLES = [["model", "By model"], ["provider", "By provider"], ["source", "By source"], ["key", "By key"]];

const TOP = 15;

function breakdown(group, rows) {
  return table([
    { title: group[0].toUpperCase() + group.slice(1), cell: (r) => r[group] ?? "(none)" },
    { title: "Requests", num: true, cell: (r) => fmt.int(r.requests) },
    { title: "Tokens", num: true, cell: (r) => fmt.int(r.total_tokens) },
    { title: "Cost", num: true, cell: (r) => fmt.usd(r.cost) },
    { title: "Errors", num: true, cell: (r) => fmt.int(r.errors) },
    { title: "Cache hits", num: true, cell: (r) => fmt.pct(r.cache_hits, r.requests) },
    { title: "Avg latency", num: true, cell: (r) => fmt.ms(r.avg_latency_ms) },
  ], rows.slice().sort((a, b) => b.requests - a.requests).slice(0, TOP));
}

// `#/overview?range=30d&by=day&tz=Europe/Berlin` opens a view directly (links, bookmarks, measurements).
function fromHash() {
  const q = new URLSearchParams(location.hash.split("?")[1] || "");
  if (RANGES[q.get("range")]) { prefs.range = q.get("range"); prefs.grain = prefs.range === "24h" ? "hour" : "day"; }
  if (["hour", "day"].includes(q.get("by"))) prefs.grain = q.get("by");
  if (q.get("tz")) prefs.tz = q.get("tz");
  if (METRICS[q.get("chart")]) prefs.metric = q.get("chart");
}

export async function overview(root) {
  if (root.dataset.hashRead !== location.hash) { root.dataset.hashRead = location.hash; fromHash(); }
  const focused = document.activeElement && root.contains(document.activeElement) ? document.activeElement.id : null;
  const rerender = () => overview(root);
  const b = buckets(prefs.range, prefs.grain, prefs.tz);
  const qs = (group) => `/v1/usage/summary?group_by=${group}&since=${encodeURIComponent(b.since)}` +
    `&tz=${encodeURIComponent(prefs.tz)}&histogram=false`;
  const [series, ...groups] = await Promise.all([qs(prefs.grain), ...GROUP_TABLES.map(([g]) => qs(g))]
    .map((url) => api(url)));
  const t = series.total;
  const byKey = new Map(series.data.map((r) => [b.keyOf(r), r]));
  const metric = METRICS[prefs.metric];
  const points = b.list.map((bk) => {
    const r = byKey.get(bk.key);
    return { label: bk.label, short: bk.short, value: r ? metric.value(r) : 0,
             errors: r && prefs.metric === "requests" ? r.errors : 0 };
  });
  const stat = (label, value, testid) => h("div", { class: "stat" },
    h("div", { class: "label" }, label), h("div", { class: "value", "data-testid": testid }, value));
  root.replaceChildren(
    h("h1", {}, "Overview"),
    h("div", { class: "controls" },
      select("ov-range", "Range", Object.entries(RANGES).map(([k, v]) => [k, v.label]), prefs.range, (v) => {
        prefs.range = v; prefs.grain = v === "24h" ? "hour" : "day"; rerender();
      }),
      select("ov-grain", "By", [["hour", "Hour"], ["day", "Day"]], prefs.grain, (v) => { prefs.grain = v; rerender(); }),
      select("ov-tz", "Time zone", zones().map((z) => [z, z]), prefs.tz, (v) => { prefs.tz = v; rerender(); }, "tz"),
      select("ov-metric", "Chart", Object.entries(METRICS).map(([k, v]) => [k, v.title]), prefs.metric,
             (v) => { prefs.metric = v; rerender(); })),
    h("div", { class: "stats" },
      stat("Requests", String(t.requests), "total-requests"),
      stat("Tokens", fmt.int(t.total_tokens), "total-tokens"),
      stat("Cost", fmt.usd(t.cost), "total-cost"),
      stat("Cache hit rate", fmt.pct(t.cache_hits, t.requests), "cache-hit-rate"),
      stat("Errors", fmt.int(t.errors), "total-errors")),
    h("div", { class: "card chart", "data-testid": "chart-requests" },
      h("h2", {}, `${metric.title} by ${prefs.grain} (${prefs.tz})`),
      barChart(points, { title: `${metric.title} per ${prefs.grain}`, format: metric.format,
                         showErrors: prefs.metric === "requests" }),
      prefs.metric === "requests"
        ? h("div", { class: "legend" }, h("span", {}, h("span", { class: "swatch" }), "requests"),
            h("span", {}, h("span", { class: "swatch err" }), "errors"))
        : null),
    h("div", { class: "grid2" }, GROUP_TABLES.map(([g, title], i) =>
      h("div", {}, h("h2", {}, title), breakdown(g, groups[i].data),
        groups[i].data.length > TOP ? h("p", { class: "muted" }, `Top ${TOP} of ${groups[i].data.length}.`) : null))),
  );
  if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
}
