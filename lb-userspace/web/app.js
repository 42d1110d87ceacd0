// The dashboard: Pools > pool > Servers, and Nodes in a cluster. Everything comes from the agent's
// HTTP API (/api/v1); the page polls it twice a second, which reads the
// agent's snapshot and never waits behind a change. Rows are updated in
// place, so ticked checkboxes and keyboard focus survive every refresh.
"use strict";

const POLL_MS = 500;
const TOKEN_KEY = "lb-token";

// ---- the API -------------------------------------------------------------

class ApiError extends Error {
  constructor(status, data) {
    super(data.error || `HTTP ${status}`);
    this.status = status;
    this.code = data.code;
  }
}

async function api(method, path, body) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  // A refusal of a request sent before the token changed (a poll that was
  // under way while the operator typed it) says nothing of the new token.
  if (response.status === 401 && sessionStorage.getItem(TOKEN_KEY) === token) askForToken(data.error);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

function askForToken(why) {
  const dialog = document.getElementById("token-dialog");
  if (dialog.open) return;
  sessionStorage.removeItem(TOKEN_KEY);
  dialog.querySelector("p").textContent = why;
  dialog.showModal();
}

document.getElementById("token-form").addEventListener("submit", () => {
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token-input").value.trim());
  document.getElementById("token-input").value = "";
  route();
});

// ---- small helpers -------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

// A count as people read large ones: 1,000,000.
function count(n) {
  return n.toLocaleString("en-US");
}

function bytes(n) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

function timeLeft(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const two = (v) => String(v).padStart(2, "0");
  return h > 0 ? `${h}:${two(m)}:${two(sec)}` : `${m}:${two(sec)}`;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

function list(names) {
  return names.length <= 1 ? names.join("") : `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}`;
}

// New flows per second, from two samples of a counter.
const samples = new Map();
function rate(key, total) {
  const now = performance.now();
  const before = samples.get(key);
  samples.set(key, { now, total, rate: before ? before.rate : null });
  if (!before || now - before.now < 200) return before ? before.rate : null;
  const value = Math.max(0, (total - before.total) / ((now - before.now) / 1000));
  samples.get(key).rate = value;
  return value;
}

function perSecond(value) {
  return value === null ? "–" : value.toFixed(1);
}

// Rows keyed by name: created once, updated in place, removed when gone.
function syncRows(tbody, items, key, create, update) {
  const seen = new Set();
  items.forEach((item, index) => {
    const id = key(item);
    seen.add(id);
    let row = tbody.querySelector(`:scope > [data-key="${CSS.escape(id)}"]`);
    if (!row) {
      row = create(item);
      row.dataset.key = id;
    }
    if (tbody.children[index] !== row) tbody.insertBefore(row, tbody.children[index] || null);
    update(row, item);
  });
  for (const row of [...tbody.children]) if (!seen.has(row.dataset.key)) row.remove();
}

// ---- live status, events and notices -------------------------------------

const live = document.getElementById("live");
function connected(ok, error) {
  live.classList.toggle("lost", !ok);
  setText(live, ok ? `live · updated ${clock(Date.now())}` : `connection lost (${error}): retrying`);
}

const events = { all: [], lastId: null };

async function pollEvents() {
  const path = events.lastId === null ? "/api/v1/events" : `/api/v1/events?since=${events.lastId}`;
  const fresh = await api("GET", path);
  const first = events.lastId === null;
  events.all.push(...fresh);
  events.all.splice(0, Math.max(0, events.all.length - 1000));
  if (fresh.length) events.lastId = fresh[fresh.length - 1].id;
  else if (first) events.lastId = 0;
  if (!first) for (const e of fresh) if (e.kind === "drained" || e.kind === "deadline") notice(e);
}

// An event's subject as people read it: "web/web-1", "pool web", "agent".
function subjectText(subject) {
  switch (subject.kind) {
    case "server": return `${subject.pool}/${subject.server}`;
    case "service": return `${subject.pool}: service ${subject.service}`;
    case "pool": return `pool ${subject.pool}`;
    default: return "agent";
  }
}

// "DRAINING (deadline)", from a state and its reason.
function stateText(label) {
  return label.why ? `${label.state} (${label.why})` : label.state;
}

// "DOWN (wrong status 500)", "UNCHECKED", from a server's typed health.
function reasonText(reason) {
  switch (reason.kind) {
    case "refused": return "refused";
    case "reset": return "reset";
    case "timed_out": return "timed out";
    case "unreachable": return "unreachable";
    case "not_http": return "not an HTTP reply";
    case "wrong_status": return `wrong status ${reason.status}`;
    case "string_not_found": return "string not found";
    default: return reason.message || reason.kind;
  }
}

function healthText(health) {
  if (health.status === "up") {
    return health.queued ? `UP, queued for maintenance (${health.queued} in line)` : "UP";
  }
  if (health.status === "unchecked") return "UNCHECKED";
  const down = health.reason ? `DOWN (${reasonText(health.reason)})` : "DOWN";
  return health.fail_open ? `${down}, serving: every server is down` : down;
}

// "http: status 200, 1.2 ms, 0.4 s ago"
function checkText(c) {
  const found = c.result === "fail" && c.reason ? reasonText(c.reason)
    : c.result === "maintenance" ? `maintenance (${c.maintenance})`
    : c.status ? `status ${c.status}` : "answered";
  return `${c.monitor}: ${found}, ${c.latency_ms.toFixed(1)} ms, ${(c.ago_ms / 1000).toFixed(1)} s ago`;
}

const SET_BY = { config: "set by the config", operator: "set by an operator", monitor: "set by its health monitor" };

function notice(event) {
  const box = el("div", { class: "notice", role: "status" },
    el("strong", { text: `${subjectText(event.subject)} ${event.kind}` }), `: ${event.message}`);
  const close = el("button", { type: "button", "aria-label": "Dismiss", text: "×" });
  close.addEventListener("click", () => box.remove());
  box.append(close);
  document.getElementById("notices").append(box);
  setTimeout(() => box.remove(), 20000);
}

function renderEvents(ol, pool) {
  const shown = events.all.filter((e) => !pool || e.subject.pool === pool).slice(-100).reverse();
  syncRows(ol, shown, (e) => String(e.id), (e) => el("li", {},
    el("time", { text: clock(e.time_ms) }), el("span", { class: "kind", text: e.kind }),
    `${subjectText(e.subject)}: ${e.message}`), () => {});
  if (!shown.length && !ol.children.length) ol.append(el("li", { "data-key": "none", text: "No events yet." }));
}

// ---- pages ---------------------------------------------------------------

const main = document.getElementById("main");
const crumbs = document.getElementById("crumbs");
let generation = 0;

function route() {
  generation++;
  const match = location.hash.match(/^#\/pools\/([^/]+)$/);
  const server = location.hash.match(/^#\/pools\/([^/]+)\/servers\/([^/]+)$/);
  if (location.hash !== "#/nodes" && inCluster) nodesLink.hidden = false;
  const page = location.hash === "#/nodes" ? nodesPage()
    : server ? serverPage(decodeURIComponent(server[1]), decodeURIComponent(server[2]))
    : match ? poolPage(decodeURIComponent(match[1])) : poolsPage();
  loop(generation, page);
}

// In a cluster, the Nodes page is linked from every page (a node alone has none).
const nodesLink = document.getElementById("nodes-link");
let inCluster = false;
api("GET", "/api/v1/nodes").then(() => {
  inCluster = true;
  nodesLink.hidden = location.hash === "#/nodes";
}, () => {});

async function loop(mine, page) {
  while (mine === generation) {
    try {
      await pollEvents();
      await page.refresh();
      connected(true);
    } catch (e) {
      if (mine !== generation) return;
      if (e.status === 404) return page.gone(e.message);
      connected(false, e.message);
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

function crumb(...parts) {
  crumbs.replaceChildren(...parts.map(([text, href]) =>
    el("span", {}, href ? el("a", { href, text }) : el("span", { "aria-current": "page", text }))));
}

function poolsPage() {
  document.title = "lb: pools";
  crumb(["Pools"]);
  const tbody = el("tbody");
  const ol = el("ol", { class: "events", id: "events" });
  main.replaceChildren(
    el("h1", { text: "Pools" }),
    el("div", { class: "table-wrap" }, el("table", { id: "pools" },
      el("thead", {}, el("tr", {},
        el("th", { text: "Pool" }), el("th", { text: "Services" }),
        el("th", { class: "num", text: "In service / total" }), el("th", { class: "num", text: "Enabled" }),
        el("th", { class: "num", text: "Draining" }), el("th", { class: "num", text: "Disabled" }),
        el("th", { class: "num", text: "Active flows" }), el("th", { class: "num", text: "New flows/s" }))),
      tbody)),
    el("h2", { text: "Events" }), ol);
  const create = (p) => el("tr", {},
    el("td", {}, el("a", { href: `#/pools/${encodeURIComponent(p.pool)}`, text: p.pool })),
    ...["services", "up", "enabled", "draining", "disabled", "flows", "rate"].map((c) =>
      el("td", { class: c === "services" ? c : `num ${c}` })));
  const update = (row, p) => {
    const cell = (c) => row.querySelector(`.${c}`);
    setText(cell("services"), p.services.join(", "));
    setText(cell("up"), `${p.in_service} / ${p.servers}`);
    setText(cell("enabled"), String(p.enabled));
    setText(cell("draining"), String(p.draining));
    setText(cell("disabled"), String(p.disabled));
    setText(cell("flows"), count(p.active_flows));
    setText(cell("rate"), perSecond(rate(`pool:${p.pool}`, p.new_flows)));
  };
  return {
    async refresh() {
      const pools = await api("GET", "/api/v1/pools");
      syncRows(tbody, pools, (p) => p.pool, create, update);
      renderEvents(ol);
    },
    gone(message) { main.replaceChildren(el("p", { class: "message error", text: message })); },
  };
}

function poolPage(pool) {
  document.title = `lb: pool ${pool}`;
  crumb(["Pools", "#/pools"], [pool]);
  const view = poolView(pool);
  main.replaceChildren(...view.nodes);
  return view;
}

function poolView(pool) {
  const tbody = el("tbody");
  const selectAll = el("input", { type: "checkbox", id: "select-all", "aria-label": "Select every server" });
  const buttons = {
    disable: el("button", { type: "button", id: "disable", class: "danger", text: "Disable" }),
    graceful: el("button", { type: "button", id: "graceful", text: "Gracefully…" }),
    enable: el("button", { type: "button", id: "enable", text: "Enable" }),
  };
  const selection = el("span", { class: "count", id: "selection", "aria-live": "polite" });
  const result = el("div", { id: "result", "aria-live": "assertive" });
  const services = el("p", { class: "services" });
  const ol = el("ol", { class: "events", id: "events" });
  const deadlines = new Map();
  // In a cluster: the active flows are the fleet's, and each node's are shown.
  const flowsByNode = el("th", { text: "By node", hidden: "" });

  const checked = () => [...tbody.querySelectorAll("input[type=checkbox]:checked")].map((c) => c.value);
  const onSelection = () => {
    const names = checked();
    for (const b of Object.values(buttons)) b.disabled = names.length === 0;
    setText(selection, names.length ? `${names.length} selected: ${names.join(", ")}` : "No server selected");
    for (const row of tbody.children) row.classList.toggle("checked", row.querySelector("input").checked);
    const all = tbody.querySelectorAll("input[type=checkbox]").length;
    selectAll.checked = all > 0 && names.length === all;
    selectAll.indeterminate = names.length > 0 && names.length < all;
  };
  selectAll.addEventListener("change", () => {
    for (const c of tbody.querySelectorAll("input[type=checkbox]")) c.checked = selectAll.checked;
    onSelection();
  });

  const create = (s) => {
    const box = el("input", { type: "checkbox", value: s.name, "aria-label": `Select ${s.name}` });
    box.addEventListener("change", onSelection);
    return el("tr", { "data-server": s.name },
      el("td", {}, box),
      el("td", { class: "name" }, el("a", { href: serverHref(pool, s.name), text: s.name })),
      el("td", { class: "address hide-narrow" }),
      el("td", { class: "num weight hide-narrow" }),
      el("td", { class: "state-cell" }, el("span", { class: "state" }), " ", el("span", { class: "why" }), " ",
        el("span", { class: "countdown" }), " ", el("span", { class: "source" }), " ", el("span", { class: "health" })),
      el("td", { class: "num flows" }), el("td", { class: "by-node", hidden: "" }), el("td", { class: "num rate" }),
      el("td", { class: "history hide-narrow" }), el("td", { class: "num bytes hide-narrow" }));
  };
  const update = (row, s) => {
    const cell = (c) => row.querySelector(`.${c}`);
    setText(cell("address"), s.address);
    setText(cell("weight"), String(s.weight));
    cell("state").dataset.state = s.state;
    setText(cell("state"), s.state);
    // Back in service with a ramp (ramp_up): the part of its weight it has now.
    const ramp = s.ramp_up_percent ? `(ramping up: ${s.ramp_up_percent}% of its weight)` : "";
    // Added by a fleet reload: no new flows until every node has it.
    const awaiting = s.awaiting_fleet ? "(awaiting the fleet: new flows once every node has it)" : "";
    // An immediate disable or a deadline: its flows are being reset (a
    // million take seconds); the count is of those going.
    const resetting = s.resetting ? " · resetting its flows" : "";
    setText(cell("why"), (s.why ? `(${s.why})` : awaiting || ramp) + resetting);
    // Who set it (the config, an operator, a monitor), when it is out of service or leaving.
    const setBy = SET_BY[s.source] || `set by ${s.source}`;
    setText(cell("source"), s.removing ? "· removed from the config" : s.state === "ENABLED" ? "" : `· ${setBy}`);
    // The monitors' view, when it is not simply UP: DOWN (why), not checked yet,
    // queued for maintenance (rolling maintenance: it serves until its turn).
    // In a cluster the status is the fleet's; the tooltip has each node's view.
    const health = cell("health");
    const byNode = Object.entries((s.health && s.health.by_node) || {});
    const downOn = byNode.filter(([, v]) => v !== "UP").map(([n]) => n);
    const fleetUp = s.health && s.health.status === "up" && downOn.length ? `· UP for the fleet (DOWN on ${list(downOn)})` : "";
    const shown = s.health && (s.health.status !== "up" || s.health.queued);
    setText(health, shown ? `· ${healthText(s.health)}` : fleetUp);
    health.classList.toggle("down", Boolean(s.health && s.health.status === "down"));
    health.title = [
      s.health && s.health.last_check ? `last check: ${checkText(s.health.last_check)}` : "",
      ...byNode.map(([n, v]) => `${n}: ${v}`),
    ].filter(Boolean).join("\n");
    if (s.deadline_left_ms === null) deadlines.delete(s.name);
    else deadlines.set(s.name, performance.now() + s.deadline_left_ms);
    // In a cluster: the fleet's live flows, and each node's.
    const byNodeFlows = Object.entries(s.flows_by_node || {});
    const fleetFlows = byNodeFlows.reduce((sum, [, v]) => sum + v, 0);
    setText(cell("flows"), count(byNodeFlows.length ? fleetFlows : s.active_flows));
    setText(cell("by-node"), byNodeFlows.map(([n, v]) => `${n} ${count(v)}`).join(" · "));
    flowsByNode.hidden = !byNodeFlows.length;
    cell("by-node").hidden = !byNodeFlows.length;
    setText(cell("rate"), perSecond(rate(`server:${pool}/${s.name}`, s.new_flows)));
    setText(cell("bytes"), `${bytes(s.bytes_to)} / ${bytes(s.bytes_from)}`);
    tickCountdown(row, s.name);
  };
  const tickCountdown = (row, name) => {
    const at = deadlines.get(name);
    const state = row.querySelector(".state").dataset.state;
    const text = at === undefined ? (state === "DRAINING" ? "until the last flow ends" : "")
      : `terminated in ${timeLeft(at - performance.now())}`;
    setText(row.querySelector(".countdown"), text);
  };
  const ticker = setInterval(() => {
    if (!tbody.isConnected) return clearInterval(ticker);
    for (const row of tbody.children) tickCountdown(row, row.dataset.key);
  }, 250);

  const history = histories(pool);
  const refresh = async () => {
    const view = await api("GET", `/api/v1/pools/${encodeURIComponent(pool)}`);
    const drawn = await history.fetch();
    if (drawn) {
      for (const row of tbody.children) {
        row.querySelector(".history").replaceChildren(sparkline(drawn.get(row.dataset.key) || []));
      }
    }
    const leaving = (view.leaving_services || []).map((l) => `${l.service} (removed: ${count(l.active_flows)} flows left)`);
    setText(services, `Services: ${[...view.services, ...leaving].join(", ") || "none"} · flows counted ${(view.counted_ms_ago / 1000).toFixed(1)} s ago`);
    syncRows(tbody, view.servers, (s) => s.name, create, update);
    onSelection();
    renderEvents(ol, pool);
  };
  const actions = poolActions(pool, checked, result, refresh);
  buttons.disable.addEventListener("click", actions.disable);
  buttons.graceful.addEventListener("click", actions.graceful);
  buttons.enable.addEventListener("click", actions.enable);

  const nodes = [
    el("h1", { text: `Pool ${pool}` }), services,
    el("div", { class: "tabs", role: "tablist" }, el("span", { role: "tab", "aria-selected": "true", text: "Servers" })),
    el("div", { class: "toolbar", role: "toolbar", "aria-label": "Act on the selected servers" },
      buttons.disable, buttons.graceful, buttons.enable, selection),
    result,
    el("div", { class: "table-wrap" }, el("table", { id: "servers" },
      el("thead", {}, el("tr", {},
        el("th", {}, selectAll), el("th", { text: "Server" }), el("th", { class: "hide-narrow", text: "Address" }),
        el("th", { class: "num hide-narrow", text: "Weight" }), el("th", { text: "State" }),
        el("th", { class: "num", text: "Active flows" }), flowsByNode, el("th", { class: "num", text: "New flows/s" }),
        el("th", { class: "hide-narrow", text: "Last 5 min", title: "Live flows (blue) and new flows/s (green)" }),
        el("th", { class: "num hide-narrow", text: "Bytes to / from" }))),
      tbody)),
    el("h2", { text: "Events" }), ol,
  ];
  return {
    nodes, refresh,
    gone(message) { main.replaceChildren(el("p", { class: "message error", text: message }), el("a", { href: "#/pools", text: "Back to the pools" })); },
  };
}

function serverHref(pool, name) {
  return `#/pools/${encodeURIComponent(pool)}/servers/${encodeURIComponent(name)}`;
}

// A pool's history, fetched at most every 2 s (it changes once a second and
// weighs more than the pool's view): a Map of server name to points, or
// null when not fetched this time.
function histories(pool) {
  let last = 0;
  return {
    async fetch() {
      if (performance.now() - last < 2000) return null;
      last = performance.now();
      const h = await api("GET", `/api/v1/pools/${encodeURIComponent(pool)}/history`);
      return new Map(h.servers.map((s) => [s.name, s.points]));
    },
  };
}

// ---- a server's own page: its chart and its drain ---------------------------

function serverPage(pool, name) {
  document.title = `lb: ${pool}/${name}`;
  crumb(["Pools", "#/pools"], [pool, `#/pools/${encodeURIComponent(pool)}`], [name]);
  const facts = el("dl", { class: "server-facts", id: "server-facts" });
  const figure = el("div", { id: "server-chart" });
  const ol = el("ol", { class: "events", id: "events" });
  main.replaceChildren(
    el("h1", { text: `Server ${name}` }), facts,
    el("h2", { text: "Live flows and new flows, last 5 minutes" }), figure,
    el("p", { class: "legend" }, el("span", { class: "flows-key", text: "━ live flows" }), " (left scale) · ",
      el("span", { class: "rate-key", text: "━ new flows/s" }), " (right scale) · ",
      el("span", { class: "deadline-key", text: "┆ drain deadline" }), " · the time axis reaches the deadline"),
    el("h2", { text: "Events" }), ol);
  const history = histories(pool);
  let points = [];
  const fact = (term, text) => [el("dt", { text: term }), el("dd", { text })];
  return {
    async refresh() {
      const view = await api("GET", `/api/v1/pools/${encodeURIComponent(pool)}`);
      const s = view.servers.find((x) => x.name === name);
      if (!s) throw new ApiError(404, { error: `no server ${name} in pool ${pool}` });
      const drawn = await history.fetch();
      if (drawn) points = drawn.get(name) || [];
      const left = s.deadline_ms ? `terminated at ${clock(s.deadline_ms)} (in ${timeLeft(s.deadline_ms - Date.now())})`
        : s.state === "DRAINING" ? "until the last flow ends" : "–";
      facts.replaceChildren(
        ...fact("State", `${stateText(s)}${s.ramp_up_percent ? ` (ramping up: ${s.ramp_up_percent}%)` : ""}`),
        ...fact("Address", s.address),
        ...fact("Live flows", `${count(s.active_flows)}${s.resetting ? " (being reset)" : ""}`),
        ...fact("Drain", s.state === "DRAINING" ? `${count(s.active_flows)} flow(s) left, ${left}` : left),
        ...fact("Health", s.health ? healthText(s.health) : "not monitored"));
      figure.replaceChildren(serverChart(points, s, Date.now()));
      const shown = events.all.filter((e) => e.subject.pool === pool && e.subject.server === name);
      ol.replaceChildren(...shown.slice(-50).reverse().map((e) => el("li", {},
        el("time", { text: clock(e.time_ms) }), el("span", { class: "kind", text: e.kind }), e.message)));
    },
    gone(message) {
      main.replaceChildren(el("p", { class: "message error", text: message }),
        el("a", { href: `#/pools/${encodeURIComponent(pool)}`, text: `Back to pool ${pool}` }));
    },
  };
}

// ---- nodes (a cluster) ---------------------------------------------------

function ago(ms) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  return s < 60 ? `${s.toFixed(1)} s ago` : `${Math.floor(s / 60)} min ago`;
}

// A node's maintenance state, as `lb nodes` says it: a drain shows its progress.
function nodeState(n) {
  const a = n.admin;
  if (a.state === "in_service") return "in service";
  if (a.state === "draining") {
    const arriving = n.still_arriving === undefined || n.still_arriving === null ? "" : `, ${n.still_arriving} flow(s) still arriving`;
    const deadline = a.deadline_ms ? `, deadline in ${Math.max(0, Math.ceil((a.deadline_ms - Date.now()) / 1000))}s` : ", until its flows have moved";
    return `draining (withdrawn)${arriving}${deadline}`;
  }
  return `disabled (${{ immediate: "withdrawn at once", drained: "drained", deadline: "deadline passed" }[a.reason]})`;
}

function nodesPage() {
  document.title = "lb: nodes";
  crumb(["Pools", "#/pools"], ["Nodes"]);
  nodesLink.hidden = true;
  const tbody = el("tbody");
  const status = el("p", { class: "services", id: "cluster-status" });
  const result = el("div", { id: "node-result", "aria-live": "polite" });
  main.replaceChildren(
    el("h1", { text: "Nodes" }), status, result,
    el("div", { class: "table-wrap" }, el("table", { id: "nodes" },
      el("thead", {}, el("tr", {},
        el("th", { text: "Node" }), el("th", { text: "Status" }), el("th", { text: "State" }), el("th", { text: "" }),
        el("th", { text: "Announces" }), el("th", { text: "Last synced" }),
        el("th", { class: "num", text: "Revision" }), el("th", { class: "num", text: "Live flows" }),
        el("th", { text: "Config" }), el("th", { class: "num", text: "Clock offset" }))),
      tbody)),
    el("p", { class: "services", text: "Deadlines are absolute: the nodes' clocks must be synchronised (NTP). An offset is estimated from the nodes' records in the store: a few ms off once it has seen a minute of them." }));
  let refresh = async () => {};
  const actions = nodeActions(result, () => refresh());
  const create = (n) => {
    const takeOut = el("button", { type: "button", class: "take-out", text: "Take out…" });
    takeOut.addEventListener("click", () => actions.takeOut(n.node));
    const putBack = el("button", { type: "button", class: "put-back", text: "Put back" });
    putBack.addEventListener("click", () => actions.putBack(n.node));
    const cell = (c) => el("td", { class: c });
    return el("tr", {}, ...["name", "up", "admin"].map(cell), el("td", { class: "node-actions" }, takeOut, putBack),
      ...["announces", "sync", "num revision", "num flows", "config", "num offset"].map(cell));
  };
  const update = (row, n, view) => {
    const cell = (c) => row.querySelector(`.${c}`);
    setText(cell("name"), n.node === view.node ? `${n.node} (this node)` : n.node);
    const up = cell("up");
    setText(up, n.up ? (n.stale ? "UP · STALE (started without the store)" : "UP") : "GONE (its lease ended)");
    up.dataset.state = n.up && !n.stale ? "ENABLED" : "DISABLED";
    up.className = "up state";
    setText(cell("sync"), ago(n.last_sync_ms));
    setText(cell("revision"), String(n.revision));
    const flows = cell("flows");
    setText(flows, count(n.flows));
    flows.title = Object.entries(n.flows_by_server).map(([k, v]) => `${k}: ${v}`).join("\n");
    const config = cell("config");
    setText(config, n.same_config ? `${n.config_hash} · same` : `${n.config_hash} · DIFFERS from this node's`);
    config.classList.toggle("differs", !n.same_config);
    setText(cell("offset"), n.clock_offset_ms === null ? "–" : `${n.clock_offset_ms > 0 ? "+" : ""}${n.clock_offset_ms} ms`);
    setText(cell("announces"), n.announced.length ? n.announced.join(", ") : "–");
    const admin = cell("admin");
    setText(admin, nodeState(n));
    admin.dataset.state = { in_service: "ENABLED", draining: "DRAINING", disabled: "DISABLED" }[n.admin.state];
    admin.className = "admin state";
    admin.title = n.admin_by ? `decided through ${n.admin_by}` : "";
    row.querySelector(".take-out").hidden = n.admin.state === "disabled";
    row.querySelector(".put-back").hidden = n.admin.state === "in_service";
  };
  refresh = async () => {
    const view = await api("GET", "/api/v1/nodes");
    const store = view.store_reachable ? "the store answers" : "THE STORE IS UNREACHABLE: changes are refused";
    setText(status, `This node: ${view.node} · ${store} · revision ${view.revision ?? "–"}${view.stale ? " · STALE" : ""}`);
    status.classList.toggle("error", !view.store_reachable);
    syncRows(tbody, view.nodes, (n) => n.node, create, (row, n) => update(row, n, view));
  };
  return {
    refresh: () => refresh(),
    gone(message) { main.replaceChildren(el("p", { class: "message error", text: message })); },
  };
}

// ---- changes -------------------------------------------------------------

function ask(dialog) {
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
  });
}

// Taking a balancer node out of service (its VIPs withdrawn; the other
// nodes continue its flows) and putting it back; offers to force a refusal
// of the last-node guard.
function nodeActions(result, refresh) {
  const say = (kind, ...content) => result.replaceChildren(el("div", { class: `message ${kind}` }, ...content));
  const send = async (verb, body) => {
    try {
      const c = await api("POST", `/api/v1/nodes/${verb}`, body);
      say("done", `${c.node}: ${nodeState({ admin: c.from })} → ${nodeState({ admin: c.to })}`);
    } catch (e) {
      if (e.code === "last_node") {
        const force = el("button", { type: "button", id: "node-force", class: "danger", text: "Force it" });
        force.addEventListener("click", () => send(verb, { ...body, force: true }));
        say("error", `The last-node guard: ${e.message}. `, force);
        force.focus();
      } else {
        say("error", `Refused: ${e.message}`);
      }
    }
    await refresh().catch(() => {});
  };
  return {
    async takeOut(node) {
      document.getElementById("node-text").textContent =
        `${node} will withdraw its VIPs from its routers; the other nodes continue its flows.`;
      if (await ask(document.getElementById("node-dialog")) !== "take-out") return;
      const mode = document.querySelector("input[name=node-mode]:checked").value;
      if (mode === "now") return send("disable", { node, mode: "immediate" });
      let timeout = null;
      if (mode === "within") {
        const n = Number(document.getElementById("node-seconds").value);
        if (!Number.isInteger(n) || n < 1) return say("error", "The time must be a whole number above 0.");
        timeout = `${n}s`;
      }
      await send("disable", { node, mode: "graceful", timeout });
    },
    async putBack(node) {
      await send("enable", { node });
    },
  };
}

function poolActions(pool, checked, result, refresh) {
  const say = (kind, ...content) => result.replaceChildren(el("div", { class: `message ${kind}` }, ...content));

  // Sends one change for every ticked server; offers to force a refusal
  // of the last-server guard.
  const send = async (verb, body) => {
    try {
      const changes = await api("POST", `/api/v1/pools/${encodeURIComponent(pool)}/${verb}`, body);
      const lines = changes.map((c) => `${c.server}: ${stateText(c.from)} → ${stateText(c.to)}` +
        (c.flows_reset ? ` (${c.flows_reset} connections reset)` : ""));
      say("done", lines.length ? lines.join("; ") : "Nothing to change.");
    } catch (e) {
      if (e.code === "last_server") {
        const force = el("button", { type: "button", id: "force", class: "danger", text: "Force it" });
        force.addEventListener("click", () => send(verb, { ...body, force: true }));
        say("error", `The last-server guard ${e.message}. `, force);
        force.focus();
      } else {
        say("error", `Refused: ${e.message}`);
      }
    }
    await refresh().catch(() => {});
  };

  return {
    async disable() {
      const names = checked();
      document.getElementById("confirm-text").textContent =
        `Disable ${list(names)} now? Their sessions will be terminated: both ends of every connection are reset.`;
      if (await ask(document.getElementById("confirm-dialog")) === "disable") {
        await send("disable", { servers: names, mode: "immediate" });
      }
    },
    async graceful() {
      const names = checked();
      document.getElementById("graceful-text").textContent =
        `${list(names)} will take no new sessions. What happens to those they have?`;
      if (await ask(document.getElementById("graceful-dialog")) !== "start") return;
      let timeout = null;
      if (document.getElementById("graceful-after").checked) {
        const n = Number(document.getElementById("graceful-n").value);
        if (!Number.isInteger(n) || n < 1) return say("error", "The time must be a whole number above 0.");
        timeout = `${n}${document.getElementById("graceful-unit").value}`;
      }
      await send("disable", { servers: names, mode: "graceful", timeout });
    },
    async enable() {
      await send("enable", { servers: checked() });
    },
  };
}

window.addEventListener("hashchange", route);
if (!location.hash) history.replaceState(null, "", "#/pools");
route();
