// The dashboard: small SVG line charts drawn here, one line per model.
import { api, el, render, when } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2f7ed8", "#e4572e", "#29a36a", "#b05fd3", "#e0a526", "#17a2b8", "#d63384", "#7a8793", "#8c6d31"];
const W = 420, H = 170, LEFT = 44, RIGHT = 8, TOP = 10, BOTTOM = 22;

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function label(value, unit) {
  if (unit === "ms") return value >= 1000 ? `${Math.round(value / 100) / 10} s` : `${Math.round(value)} ms`;
  if (value >= 10000) return `${Math.round(value / 1000)}k`;
  return String(Math.round(value * 10) / 10);
}

// The axis top: the next 1, 2 or 5 times a power of ten at or above ``v``.
function nice(v) {
  const power = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * power).find((m) => m >= v);
}

// lines: [{name, values (null = no data), color, dashed}]
export function chart(title, lines, data, unit = "") {
  const count = data.buckets;
  const all = lines.flatMap((l) => l.values.filter((v) => v !== null && v !== undefined));
  const top = nice(Math.max(1, ...all));
  const x = (i) => LEFT + ((W - LEFT - RIGHT) * (i + 0.5)) / count;
  const y = (v) => TOP + (H - TOP - BOTTOM) * (1 - v / top);
  const drawing = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  for (const frac of [0, 0.5, 1]) {
    const v = top * frac;
    drawing.append(svg("line", { class: "grid", x1: LEFT, x2: W - RIGHT, y1: y(v), y2: y(v) }));
    drawing.append(svg("text", { x: LEFT - 4, y: y(v) + 4, "text-anchor": "end" }, label(v, unit)));
  }
  const start = new Date(data.start).getTime();
  const short = data.bucket_s * count <= 86400;
  const anchors = ["start", "middle", "end"];
  [0, Math.floor(count / 2), count - 1].forEach((i, n) => {
    const at = new Date(start + i * data.bucket_s * 1000);
    const text = short ? at.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" })
      : at.toLocaleDateString(undefined, { month: "short", day: "numeric" });
    const left = n === 0 ? LEFT : n === 2 ? W - RIGHT : x(i);
    drawing.append(svg("text", { x: left, y: H - 6, "text-anchor": anchors[n] }, text));
  });
  for (const line of lines) {
    let path = "";
    let pen = false;
    line.values.forEach((v, i) => {
      if (v === null || v === undefined) {
        pen = false;
        return;
      }
      path += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)} `;
      pen = true;
    });
    if (!path) continue;
    drawing.append(svg("path", {
      d: path, fill: "none", stroke: line.color, "stroke-width": 2, "stroke-linejoin": "round",
      "stroke-dasharray": line.dashed ? "5 4" : "none", "data-series": line.name,
    }));
    line.values.forEach((v, i) => {
      if (v) { // a dot where something happened; zeros are the line alone
        drawing.append(svg("circle", { cx: x(i), cy: y(v), r: 2.2, fill: line.color },
          svg("title", {}, `${line.name}: ${label(v, unit)}`)));
      }
    });
  }
  return el("figure", { class: "chart" }, el("h2", {}, title), drawing);
}

function perModel(data, key, dashed = false, suffix = "") {
  return data.models.map((name, i) => ({
    name: `${name}${suffix}`, values: data.series[name][key], color: COLORS[i % COLORS.length], dashed,
  }));
}

function backendBox(info) {
  const running = info.running || [];
  return el("section", {},
    el("h2", {}, info.backends.length > 1 ? "Backends" : "Backend"),
    el("ul", { class: "backends" }, info.backends.map((b) => el("li", {},
      `${b.name} · ${b.type} · ${b.endpoint || (b.models || []).join(", ")} · `,
      b.reachable ? el("span", { class: "status good" }, "reachable")
        : el("span", { class: "status bad" }, `unreachable: ${b.error || ""}`),
      b.state && b.state !== "closed" ? ` · breaker ${b.state}` : ""))),
    info.running === undefined ? null
      : running.length
        ? el("ul", {}, running.map((m) => el("li", {}, `${m.name} loaded`,
            m.context_length ? `, context ${m.context_length}` : "",
            m.expires_at ? `, stops ${new Date(m.expires_at).getFullYear() > 2100 ? "never (kept loaded)" : when(m.expires_at)}` : "")))
        : el("p", { class: "muted" }, "No model loaded now."));
}

export async function showDashboard(main, range) {
  const chosen = range || "24h";
  const picker = el("select", { "aria-label": "range", id: "range" },
    ["1h", "6h", "24h", "7d", "30d"].map((r) => el("option", { value: r, selected: r === chosen }, `last ${r}`)));
  picker.addEventListener("change", () => { location.hash = `#/dashboard/${picker.value}`; });
  const [data, info] = await Promise.all([api(`dashboard?range=${encodeURIComponent(chosen)}`), api("backend")]);
  const legend = el("div", { class: "legend" }, data.models.map((name, i) => {
    const item = el("span", {}, `${name} (${data.requests[name] ?? "…"} requests)`);
    item.style.setProperty("--swatch", COLORS[i % COLORS.length]);
    return item;
  }));
  render(main, 
    el("div", { class: "filters" }, el("h1", {}, "Dashboard"), picker),
    data.models.length ? legend : el("p", { class: "muted" }, "No exchanges in this range."),
    el("div", { class: "charts" },
      chart("Requests", perModel(data, "requests"), data),
      chart("Errors", perModel(data, "errors"), data),
      chart("Latency p50 (solid) and p95 (dashed)",
        [...perModel(data, "latency_p50"), ...perModel(data, "latency_p95", true, " p95")], data, "ms"),
      chart("Time to first token, p50", perModel(data, "ttft_p50"), data, "ms"),
      chart("Answer tokens per second", perModel(data, "tokens_per_s"), data),
      chart("Tokens in (solid) and out (dashed)",
        [...perModel(data, "tokens_in"), ...perModel(data, "tokens_out", true, " out")], data)),
    backendBox(info),
  );
}
