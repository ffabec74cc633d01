// Playground: pick one of the key's models, send a system prompt and a message, watch the answer stream
// (fetch + server-sent events), then see the call's tokens, cost and latency from the usage ledger.
import { api, fmt, h, session, showStatus } from "./dom.js";

const prefs = { model: null, system: "", input: "" };

async function* sseData(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      const name = (event.split("\n").find((l) => l.startsWith("event:")) || "").slice(6).trim();
      if (data) yield { name, data };
    }
  }
}

export function usageText(u, cost, ms) {
  return `${fmt.int(u.total_tokens)} tokens (${fmt.int(u.prompt_tokens)} prompt + ${fmt.int(u.completion_tokens)} completion)` +
    ` · ${fmt.usdExact(cost)} · ${Math.round(ms)} ms`;
}

export async function playground(root) {
  const models = (await api("/v1/models")).data.map((m) => m.id);
  if (!models.includes(prefs.model)) prefs.model = models[0] || null;
  const output = h("div", { class: "output", "data-testid": "playground-output", "aria-live": "polite" });
  const usage = h("div", { class: "usage", "data-testid": "playground-usage" });
  const send = h("button", { type: "submit", "data-testid": "playground-send" }, "Send");
  const form = h("form", { class: "card", onsubmit: async (ev) => {
    ev.preventDefault();
    const f = ev.target.elements;
    prefs.model = f.model.value; prefs.system = f.system.value; prefs.input = f.input.value;
    if (!prefs.input.trim()) return;
    const messages = [];
    if (prefs.system.trim()) messages.push({ role: "system", content: prefs.system });
    messages.push({ role: "user", content: prefs.input });
    output.textContent = "";
    usage.textContent = "";
    showStatus(null);
    send.disabled = true;
    const t0 = performance.now();
    try {
      const r = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: { authorization: `Bearer ${session.key}`, "content-type": "application/json" },
        body: JSON.stringify({ model: prefs.model, messages, stream: true, stream_options: { include_usage: true } }),
      });
      if (!r.ok) {
        const body = await r.json().catch(() => null);
        throw new Error(body && body.error ? body.error.message : `HTTP ${r.status}`);
      }
      const requestId = r.headers.get("x-request-id");
      let u = null;
      for await (const ev of sseData(r)) {
        if (ev.data === "[DONE]") break;
        const chunk = JSON.parse(ev.data);
        if (ev.name === "error" || chunk.error) throw new Error(chunk.error ? chunk.error.message : "stream error");
        for (const c of chunk.choices || []) {
          if (c.delta && c.delta.content) output.append(c.delta.content);
        }
        if (chunk.usage) u = chunk.usage;
      }
      const ms = performance.now() - t0;
      let cost = null;
      if (requestId) {
        const ev = await api(`/v1/usage?request_id=${encodeURIComponent(requestId)}&limit=1`);
        if (ev.data.length) {
          cost = ev.data[0].cost;
          if (!u) u = { prompt_tokens: ev.data[0].tokens.prompt, completion_tokens: ev.data[0].tokens.completion,
                        total_tokens: ev.data[0].tokens.prompt + ev.data[0].tokens.completion };
        }
      }
      usage.textContent = u ? usageText(u, cost, ms) : `${Math.round(ms)} ms`;
    } catch (e) {
      showStatus(e.message || String(e));
    } finally {
      send.disabled = false;
    }
  } },
  h("div", { class: "controls" },
    h("div", {}, h("label", { for: "pg-model" }, "Model"),
      h("select", { id: "pg-model", name: "model", "data-testid": "playground-model" },
        models.map((m) => h("option", { value: m, selected: m === prefs.model }, m))))),
  h("label", { for: "pg-system" }, "System prompt"),
  h("textarea", { id: "pg-system", name: "system", "data-testid": "playground-system", rows: 2 }, prefs.system),
  h("label", { for: "pg-input" }, "Message"),
  h("textarea", { id: "pg-input", name: "input", "data-testid": "playground-input", rows: 4, required: true }, prefs.input),
  h("div", { class: "row" }, send, h("span", { class: "muted" }, "Ctrl+Enter sends")));
  form.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
  });
  root.replaceChildren(h("h1", {}, "Playground"),
    models.length ? form : h("p", {}, "This key may use no model."),
    h("h2", {}, "Answer"), output, usage);
}
