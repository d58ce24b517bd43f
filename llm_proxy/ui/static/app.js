// llm-proxy's web UI: the router, signing in, and the live list of exchanges.
// No build step, no third-party code: this file and its three neighbours.
import { showDashboard } from "./charts.js";
import { ApiError, api, el, ms, render, statusClass, when } from "./dom.js";
import { showExchange, showTurn } from "./exchange.js";

const main = document.getElementById("main");
const signOut = document.getElementById("sign-out");
let about = null; // GET /ui/api/session: sign-in needed?, key names, models
let live = null; // the EventSource of the list, closed when the view changes

const ENDPOINTS = ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/tags", "/api/show",
  "/api/ps", "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"];

function stopLive() {
  if (live) live.close();
  live = null;
}

// -- signing in -----------------------------------------------------------------

function showSignIn(message) {
  const input = el("input", { type: "password", id: "key", autocomplete: "current-password", required: true,
    "aria-label": "API key", placeholder: "API key" });
  const note = el("p", { class: message ? "error" : "muted", role: "status" },
    message || "This proxy has API keys: sign in with one that has admin: true.");
  const form = el("form", { class: "signin" }, el("h1", {}, "Sign in"), note, input,
    el("button", { type: "submit" }, "Sign in"),
    el("p", { class: "muted" }, "The key is sent once; the browser keeps only a session cookie."));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      about = await api("session", { method: "POST", body: JSON.stringify({ key: input.value }) });
      input.value = "";
      route();
    } catch (err) {
      note.className = "error";
      note.textContent = err.message;
    }
  });
  render(main, form);
  input.focus();
}

signOut.addEventListener("click", async () => {
  await api("session", { method: "DELETE" });
  about = null;
  route();
});

// -- the list -------------------------------------------------------------------

function options(list, chosen, empty) {
  return [el("option", { value: "" }, empty), ...list.map((v) => el("option", { value: v, selected: v === chosen }, v))];
}

function rowLink(row) {
  const text = row.error ? `⚠ ${row.error}` : row.prompt || row.response || "";
  return el("a", { class: "row", href: `#/exchange/${row.id}`, dataset: { id: row.id } },
    el("span", { class: "cell c-when" }, when(row.timestamp)),
    el("span", { class: `cell c-status ${statusClass(row)}` }, String(row.status_code ?? "–")),
    el("span", { class: "cell c-endpoint" }, row.endpoint),
    el("span", { class: "cell c-model" }, row.model || ""),
    el("span", { class: "cell c-latency" }, ms(row.latency_ms)),
    el("span", { class: "cell c-prompt" }, text));
}

function listHead() {
  return el("div", { class: "row head", "aria-hidden": "true" },
    ...["when", "status", "endpoint", "model", "latency", "prompt / answer"].map((h) => el("span", {}, h)));
}

function readFilters(params) {
  const chosen = {};
  for (const name of ["q", "model", "endpoint", "status", "api", "key", "since"]) {
    const value = params.get(name);
    if (value) chosen[name] = value;
  }
  return chosen;
}

async function showList(params) {
  const filters = readFilters(params);
  const search = el("input", { type: "search", name: "q", value: filters.q || "", placeholder: "Search prompts and answers",
    "aria-label": "search", id: "search" });
  const models = el("input", { name: "model", value: filters.model || "", placeholder: "model", list: "models",
    "aria-label": "model", size: 12 });
  const fields = [
    search, models,
    el("datalist", { id: "models" }, (about.models || []).map((m) => el("option", { value: m }))),
    el("select", { name: "endpoint", "aria-label": "endpoint" }, options(ENDPOINTS, filters.endpoint, "any endpoint")),
    el("select", { name: "status", "aria-label": "status" }, options(["2xx", "4xx", "5xx", "error"], filters.status, "any status")),
    el("select", { name: "api", "aria-label": "API" }, options(["ollama", "openai"], filters.api, "both APIs")),
    about.keys.length ? el("select", { name: "key", "aria-label": "key" }, options(about.keys, filters.key, "any key")) : null,
    el("select", { name: "since", "aria-label": "since" }, options(["1h", "24h", "7d", "30d"], filters.since, "any time")),
  ];
  const form = el("form", { class: "filters", role: "search" }, fields, el("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = new URLSearchParams();
    for (const field of form.elements) if (field.name && field.value) chosen.set(field.name, field.value);
    location.hash = `#/?${chosen}`;
  });
  for (const field of form.querySelectorAll("select")) field.addEventListener("change", () => form.requestSubmit());
  const state = el("span", { class: "live", id: "live" }, "connecting…");
  const rows = el("div", { class: "rows", id: "rows" }, listHead());
  const more = el("button", { type: "button", class: "more", hidden: true }, "Older exchanges");
  const empty = el("p", { class: "muted", hidden: true }, "No exchanges match.");
  render(main, el("div", { class: "filters" }, el("h1", {}, "Exchanges"), state), form, rows, empty, more);

  const shown = new Set();
  let top = 0;
  let next = null;
  let loaded = false;
  let known = 0; // the feed's newest id when this page joined: rows up to it are fetched, not pushed
  const early = [];
  const query = (extra) => {
    const p = new URLSearchParams({ ...filters, ...extra });
    return `exchanges?${p}`;
  };
  const add = (list, atTop) => {
    const fresh = list.filter((row) => !shown.has(row.id));
    for (const row of fresh) {
      shown.add(row.id);
      top = Math.max(top, row.id);
    }
    if (atTop) {
      // Newest first, wherever they arrive from: each goes above the first older row.
      for (const row of fresh) {
        const link = rowLink(row);
        link.classList.add("fresh");
        let below = rows.firstChild.nextSibling;
        while (below && Number(below.dataset.id) > row.id) below = below.nextSibling;
        rows.insertBefore(link, below);
      }
    } else rows.append(...fresh.map(rowLink));
    empty.hidden = shown.size > 0;
  };
  const catchUp = async () => {
    if (!loaded) return;
    const page = await api(query({ after: top }));
    add(page.exchanges, true);
  };
  const filtered = Object.keys(filters).length > 0;
  stopLive();
  live = new EventSource("/ui/api/events");
  const mine = live;
  live.addEventListener("open", () => { state.textContent = "live"; state.classList.add("on"); });
  live.addEventListener("error", () => { state.textContent = "reconnecting…"; state.classList.remove("on"); });
  live.addEventListener("message", (event) => {
    if (mine !== live) return;
    const data = JSON.parse(event.data);
    if (data.type === "hello") {
      known = data.last;
      if (loaded && known > top) catchUp();
    } else if (data.type === "signed-out") {
      stopLive();
      showSignIn("Your session ended: sign in again.");
    } else if (data.type === "resync") {
      catchUp();
    } else if (data.type === "exchange") {
      if (!loaded) early.push(data.exchange);
      else if (filtered) catchUp();
      else add([data.exchange], true);
    }
  });
  // A sparse filter answers a window at a time (docs/ui.md): ask on until a page is full.
  const fetchPage = async (before) => {
    let got = [];
    let cursor = before;
    let page = null;
    for (let tries = 0; tries < 20; tries += 1) {
      page = await api(query(cursor === null ? {} : { before: cursor }));
      got = got.concat(page.exchanges);
      cursor = page.next;
      if (got.length >= 50 || !page.more) break;
    }
    return { rows: got, next: page.more ? cursor : null };
  };
  const first = await fetchPage(null);
  add(first.rows, false);
  loaded = true;
  add(early, true);
  if (known > top) catchUp();
  next = first.next;
  more.hidden = next === null;
  more.addEventListener("click", async () => {
    more.disabled = true;
    const older = await fetchPage(next);
    add(older.rows, false);
    next = older.next;
    more.hidden = next === null;
    more.disabled = false;
  });
}

// -- the router -----------------------------------------------------------------

function mark(which) {
  document.getElementById("nav-list").classList.toggle("here", which === "list");
  document.getElementById("nav-dashboard").classList.toggle("here", which === "dashboard");
}

async function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, search] = hash.split("?");
  const parts = path.split("/").filter(Boolean);
  stopLive();
  try {
    if (!about || !about.signed_in) about = await api("session");
    signOut.hidden = !about.sign_in || !about.signed_in;
    if (!about.signed_in) {
      mark(null);
      return showSignIn();
    }
    if (parts[0] === "exchange" && parts[1]) {
      mark(null);
      document.title = `#${parts[1]} · llm-proxy`;
      return await showExchange(main, parts[1]);
    }
    if (parts[0] === "turn" && parts[1]) {
      mark(null);
      document.title = `turn ${parts[1]} · llm-proxy`;
      return await showTurn(main, parts[1]);
    }
    if (parts[0] === "dashboard") {
      mark("dashboard");
      document.title = "dashboard · llm-proxy";
      return await showDashboard(main, parts[1]);
    }
    mark("list");
    document.title = "exchanges · llm-proxy";
    return await showList(new URLSearchParams(search || ""));
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      about = null;
      return showSignIn("Your session ended: sign in again.");
    }
    render(main, el("h1", {}, "Something went wrong"), el("p", { class: "error", role: "alert" }, err.message));
  }
}

window.addEventListener("hashchange", route);
route();
