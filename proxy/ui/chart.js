// A bar chart drawn as SVG: one bar per hour or day, errors stacked in red. Small on purpose (no
// library, nothing to load): the dashboard draws at most a few hundred bars.

const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// points: [{label, short, value, errors}] ; format: value -> text
export function barChart(points, { title, format = String, showErrors = true } = {}) {
  const W = 900, H = 240, L = 56, R = 10, T = 10, B = 28;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title || "chart",
                         preserveAspectRatio: "none" });
  const max = niceMax(Math.max(0, ...points.map((p) => p.value)));
  const iw = W - L - R, ih = H - T - B;
  for (let i = 0; i <= 4; i++) {
    const y = T + ih - (ih * i) / 4;
    svg.append(s("line", { x1: L, x2: W - R, y1: y, y2: y, class: "gridline" }));
    svg.append(s("text", { x: L - 6, y: y + 4, "text-anchor": "end", class: "axis" }, format((max * i) / 4)));
  }
  const n = Math.max(1, points.length);
  const bw = iw / n;
  const every = Math.ceil(n / 12);
  points.forEach((p, i) => {
    const x = L + i * bw;
    const hgt = (ih * p.value) / max;
    if (i % every === 0) {
      svg.append(s("text", { x: x + bw / 2, y: H - 8, "text-anchor": "middle", class: "axis" }, p.short));
    }
    if (p.value <= 0) return;
    const bar = s("rect", { x: x + bw * 0.1, y: T + ih - hgt, width: Math.max(1, bw * 0.8), height: hgt, class: "bar" });
    bar.append(s("title", {}, `${p.label}: ${format(p.value)}${showErrors && p.errors ? ` (${p.errors} errors)` : ""}`));
    svg.append(bar);
    if (showErrors && p.errors) {
      const eh = (ih * Math.min(p.errors, p.value)) / max;
      svg.append(s("rect", { x: x + bw * 0.1, y: T + ih - eh, width: Math.max(1, bw * 0.8), height: eh, class: "bar-err" }));
    }
  });
  return svg;
}
