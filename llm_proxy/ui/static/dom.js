// Small helpers shared by the views. Every value from the audit trail is
// hostile input: it only ever becomes a text node or an attribute value set
// through the DOM, never markup (no innerHTML anywhere in this UI).

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// el("a", {href: "#/"}, "text", child): attributes and properties, then children.
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "hidden" || key === "open" || key === "selected" || key === "disabled") node[key] = Boolean(value);
    else if (key === "value") node.value = value;
    else node.setAttribute(key, String(value));
  }
  append(node, children);
  return node;
}

// Replace what ``node`` shows; children as el() takes them (null skipped, arrays flattened).
export function render(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

export function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export async function api(path, options = {}) {
  const response = await fetch(`/ui/api/${path}`, {
    credentials: "same-origin",
    headers: options.body ? { "Content-Type": "application/json" } : {},
    ...options,
  });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) throw new ApiError(response.status, (body && body.error) || response.statusText);
  return body;
}

export function when(stamp) {
  if (!stamp) return "";
  const date = new Date(stamp);
  if (Number.isNaN(date.getTime())) return String(stamp);
  return date.toLocaleString(undefined, {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

export function ms(value) {
  if (value === null || value === undefined) return "–";
  if (value < 1000) return `${value} ms`;
  return `${(value / 1000).toFixed(value >= 10000 ? 0 : 1)} s`;
}

export function pretty(text) {
  if (text === null || text === undefined) return "";
  if (typeof text !== "string") return JSON.stringify(text, null, 2);
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

export function statusClass(row) {
  return row.error || (row.status_code || 0) >= 400 ? "status bad" : "status good";
}

// Copy to the clipboard; on plain http to a LAN address the async clipboard is
// not there, so fall back to a selected textarea.
export async function copy(text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return toast("Copied");
    }
  } catch {
    // fall through to the old way
  }
  const area = el("textarea", { class: "offscreen", "aria-hidden": "true" });
  area.value = text;
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.append(area);
  area.select();
  const done = document.execCommand("copy");
  area.remove();
  toast(done ? "Copied" : "Copy failed: select the text instead");
}

export function toast(text) {
  const note = el("div", { class: "toast", role: "status" }, text);
  document.body.append(note);
  setTimeout(() => note.remove(), 1500);
}

// A POSIX shell word: single quotes, each ' written as '\''.
export function shellQuote(text) {
  return `'${String(text).replaceAll("'", "'\\''")}'`;
}

export function curl(exchange) {
  const url = `${location.origin}${exchange.endpoint}`;
  const parts = [`curl -X ${exchange.method || "POST"} ${shellQuote(url)}`];
  if (exchange.request_body) parts.push("-H 'Content-Type: application/json'");
  if (exchange.key_name) parts.push('-H "Authorization: Bearer $LLM_PROXY_KEY"');
  if (exchange.request_body) parts.push(`--data-binary ${shellQuote(exchange.request_body)}`);
  return parts.join(" \\\n  ");
}
