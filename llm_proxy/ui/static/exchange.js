// One exchange and one Home Assistant turn, rendered as a conversation.
import { api, copy, curl, el, ms, pretty, render, statusClass, when } from "./dom.js";

function images(list) {
  const shown = (list || []).filter((src) => typeof src === "string" && src.startsWith("data:image/"));
  if (!shown.length) return null;
  return el("div", { class: "thumbs" }, shown.map((src) => el("img", { src, alt: "image sent with the message" })));
}

function toolCalls(calls) {
  return (calls || []).map((call) =>
    el("div", { class: "call" },
      el("div", {}, "tool call ", el("span", { class: "call-name" }, call.name ?? "(no name)")),
      el("pre", { class: "code" }, pretty(call.arguments))));
}

export function message(msg) {
  const role = msg.role || "?";
  const kind = ["user", "assistant", "tool", "system"].includes(role) ? role : "other";
  const label = [role];
  if (msg.answer) label.push("answer");
  if (msg.tool_name || msg.name) label.push(msg.tool_name || msg.name);
  const body = [];
  if (msg.thinking) body.push(el("details", {}, el("summary", {}, "thinking"), el("p", { class: "text" }, msg.thinking)));
  if (msg.content) body.push(el("p", { class: "text" }, msg.content));
  body.push(...toolCalls(msg.tool_calls));
  body.push(images(msg.images));
  if (kind === "system") {
    const first = (msg.content || "").split("\n", 1)[0].slice(0, 120);
    return el("details", { class: "msg system" },
      el("summary", { class: "fold" }, `system prompt · ${(msg.content || "").length} characters · `, first), body);
  }
  return el("div", { class: `msg ${kind}` }, el("div", { class: "role" }, label.join(" · ")), body);
}

function fact(name, value) {
  if (value === null || value === undefined || value === "") return null;
  return el("div", {}, el("dt", {}, name), el("dd", {}, String(value)));
}

function tries(text) {
  // The backends tried, in order: "gpu 502 (unreachable), 12 ms → cpu 200, 340 ms"; the raw text if it is not JSON.
  if (!text) return null;
  let list;
  try { list = JSON.parse(text); } catch { return text; }
  if (!Array.isArray(list)) return text;
  return list.map((a) => `${a.backend} ${a.status ?? "–"}${a.error ? ` (${a.error})` : ""}, ${a.ms} ms`).join(" → ");
}

function trace(id, url) {
  // The OpenTelemetry trace (telemetry:), a link to the trace viewer when telemetry.trace_url is set.
  if (!id) return null;
  const shown = url ? el("a", { href: url, rel: "noopener noreferrer", target: "_blank" }, id) : id;
  return el("div", {}, el("dt", {}, "trace"), el("dd", {}, shown));
}

function raw(title, text, extra = []) {
  if (!text) return null;
  const shown = pretty(text);
  return el("section", {},
    el("div", { class: "raw-head" }, el("h2", {}, title),
      el("button", { type: "button", onclick: () => copy(text) }, "Copy"), extra),
    el("details", { open: shown.length < 4000 }, el("summary", {}, `${text.length} characters`),
      el("pre", { class: "code" }, shown)));
}

export async function showExchange(main, id) {
  const data = await api(`exchanges/${encodeURIComponent(id)}`);
  const x = data.exchange;
  const t = data.timing;
  render(main, 
    el("h1", {}, `#${x.id} `, el("span", { class: statusClass(x) }, String(x.status_code ?? "–")), ` ${x.method} ${x.endpoint}`,
      x.model ? ` · ${x.model}` : ""),
    x.error ? el("p", { class: "error", role: "alert" }, x.error) : null,
    data.turn_rounds > 1
      ? el("p", {}, el("a", { href: `#/turn/${x.turn_id}` }, `Round of a Home Assistant turn: all ${data.turn_rounds} rounds`))
      : null,
    el("h2", {}, "Conversation"),
    data.tools.length
      ? el("details", { class: "tools" }, el("summary", {}, `${data.tools.length} ${data.tools.length === 1 ? "tool" : "tools"} offered`),
        el("p", { class: "text" }, data.tools.join(", ")))
      : null,
    data.conversation.length
      ? el("div", { class: "messages" }, data.conversation.map(message))
      : el("p", { class: "muted" }, "No messages stored for this exchange."),
    el("h2", {}, "Facts"),
    el("dl", { class: "facts" },
      fact("when", when(x.timestamp)), fact("status", x.status_code), fact("done reason", x.done_reason),
      fact("API", x.api), fact("stream", x.stream === null ? null : x.stream ? "yes" : "no"),
      fact("model (client)", x.model), fact("model (backend)", x.backend_model), fact("backend", x.backend_name ? `${x.backend_name} (${x.backend_type})` : x.backend_type),
      fact("attempts", tries(x.attempts)),
      fact("prompt tokens", x.prompt_tokens), fact("answer tokens", x.completion_tokens),
      fact("tokens per second", t.tokens_per_s),
      fact("latency", ms(t.total_ms)), fact("first byte", ms(t.first_byte_ms)), fact("first token", ms(t.first_token_ms)),
      fact("streaming", t.streaming_ms === undefined ? null : ms(t.streaming_ms)),
      fact("backend (model's own time)", t.backend_model_ms === undefined ? null : ms(t.backend_model_ms)),
      fact("proxy, network and queue", t.proxy_and_network_ms === undefined ? null : ms(t.proxy_and_network_ms)),
      fact("key", x.key_name), fact("client", x.client_addr), fact("user agent", x.user_agent),
      fact("request id", x.request_id), fact("turn", x.turn_id), fact("cut short", x.truncated),
      trace(x.trace_id, data.trace_url)),
    raw("Client request", x.request_body,
      x.request_body ? [el("button", { type: "button", onclick: () => copy(curl(x)) }, "Copy as curl")] : []),
    raw("Backend request (translated)", x.backend_request),
    raw("Answer", x.response_body || x.response),
  );
}

export async function showTurn(main, id) {
  const data = await api(`turns/${encodeURIComponent(id)}`);
  render(main, 
    el("h1", {}, `Home Assistant turn ${data.turn_id} · ${data.rounds.length} rounds`),
    data.rounds.map((round, n) =>
      el("section", { class: "round" },
        el("div", { class: "round-head" }, `Round ${n + 1} · `, el("a", { href: `#/exchange/${round.id}` }, `#${round.id}`),
          " · ", el("span", { class: statusClass(round) }, String(round.status_code ?? "–")),
          ` · ${ms(round.latency_ms)} · ${when(round.timestamp)}`),
        round.error ? el("p", { class: "error" }, round.error) : null,
        el("div", { class: "messages" }, round.messages.map(message), round.answer ? message(round.answer) : null))),
  );
}
