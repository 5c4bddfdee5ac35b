// Moorage management UI: a small single-page app on the management API (/api).
// No build step. Credentials live in sessionStorage for this tab only and go
// with every request as HTTP basic auth, as rabbitmqadmin sends them.
"use strict";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const loginForm = document.getElementById("login");
let refreshTimer = null;
const history = []; // [time, ready, unacked] samples for the overview chart
const rateHistory = []; // [time, publish/s, deliver_get/s, ack/s] for the overview's rate chart
const queueHistories = new Map(); // "vhost/name" -> the same samples for a queue's page
const RATE_SERIES = [[1, "#2b6cb0", "publish"], [2, "#2f7d32", "deliver / get"], [3, "#d08b1a", "ack"]];
// (the legend's colours are in style.css, .series-1 to .series-3: the page allows no inline style)

function auth() {
  return sessionStorage.getItem("moorage-auth");
}

async function api(method, path, body) {
  // X-Requested-With: the server then leaves out WWW-Authenticate on a 401, so the
  // browser does not open its own login dialog over ours.
  const headers = { Authorization: "Basic " + auth(), "X-Requested-With": "XMLHttpRequest" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch("/api" + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 && path !== "/whoami") { logout(); }
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const reason = data && data.reason !== undefined ? data.reason : response.statusText;
    throw new Error(typeof reason === "string" ? reason : JSON.stringify(reason));
  }
  return data;
}

const enc = encodeURIComponent;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

function field(item, dotted) {
  return dotted.split(".").reduce((v, k) => (v == null ? undefined : v[k]), item);
}

// A sortable, filterable table: columns are [title, dotted field, link(item)?].
function table(items, columns, id) {
  let sortKey = null;
  let reverse = false;
  let filter = "";
  const body = el("tbody");
  const heads = columns.map(([title, key]) => el("th", { "data-key": key, onclick: () => {
    reverse = sortKey === key ? !reverse : false;
    sortKey = key;
    heads.forEach((h) => h.classList.toggle("sorted", h.dataset.key === sortKey));
    heads.forEach((h) => h.classList.toggle("reverse", h.dataset.key === sortKey && reverse));
    render();
  } }, title));
  function render() {
    let rows = items.filter((item) => !filter || String(item.name ?? "").includes(filter));
    if (sortKey) {
      rows = rows.slice().sort((a, b) => {
        const x = field(a, sortKey), y = field(b, sortKey);
        const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
        return reverse ? -order : order;
      });
    }
    body.replaceChildren(...rows.map((item) => el("tr", {}, columns.map(([, key, link]) => {
      const value = field(item, key);
      const text = Array.isArray(value) ? value.join(", ") : value === undefined ? "" : String(value);
      return el("td", {}, link ? el("a", { href: link(item) }, text) : text);
    }))));
  }
  render();
  const search = el("input", { class: "filter", placeholder: "Filter by name", "aria-label": "Filter",
    oninput: (e) => { filter = e.target.value; render(); } });
  return el("div", { id }, search, el("div", { class: "scroll" },
    el("table", {}, el("thead", {}, el("tr", {}, heads)), body)));
}

function tiles(pairs) {
  return el("div", { class: "tiles" }, pairs.map(([label, value, id]) =>
    el("div", { class: "tile" }, label, el("b", { id }, value))));
}

// Lines of `samples` ([time, v1, v2, ...]) on a canvas; `series` is [[index, color], ...].
// The scale's top value is written in the corner.
function draw(canvas, samples, series, unit = "") {
  const ctx = canvas.getContext("2d");
  const max = Math.max(1, ...samples.flatMap((s) => series.map(([index]) => s[index])));
  ctx.clearRect(0, 0, 600, 140);
  ctx.fillStyle = "#5a6b7d";
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillText(`${Math.round(max * 10) / 10}${unit}`, 4, 12);
  series.forEach(([index, color]) => {
    ctx.strokeStyle = color;
    ctx.beginPath();
    samples.forEach((sample, i) => {
      const x = samples.length < 2 ? 0 : (i / (samples.length - 1)) * 600;
      const y = 135 - (sample[index] / max) * 120;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  });
  return canvas;
}

function chart(samples) {
  const canvas = el("canvas", { id: "chart", width: 600, height: 140, "aria-label": "Queued messages" });
  return draw(canvas, samples, [[1, "#2b6cb0"], [2, "#d08b1a"]]);
}

function rate(stats, name) {
  return (stats && stats[name + "_details"] && stats[name + "_details"].rate) || 0;
}

function pushRates(samples, stats) {
  samples.push([Date.now(), rate(stats, "publish"), rate(stats, "deliver_get"), rate(stats, "ack")]);
  if (samples.length > 120) samples.shift();
}

function rateChart(samples, id) {
  const canvas = el("canvas", { id, width: 600, height: 140, "aria-label": "Message rates" });
  return draw(canvas, samples, RATE_SERIES, "/s");
}

function rateLegend() {
  return el("p", { class: "legend" }, RATE_SERIES.map(([index, , label]) =>
    el("span", { class: `series-${index}` }, `\u25A0 ${label} `)));
}

// -- pages -------------------------------------------------------------------------------

// The node's failover role as the overview shows it: "single node" without failover.
function nodeRole(failover) {
  if (!failover) return "single node";
  const how = failover.mode === "shared-storage" ? "shared storage" : "replicated";
  return `${failover.role} (${how}, epoch ${failover.epoch ?? "?"})`;
}

async function overviewPage() {
  const [o, alarms] = await Promise.all([api("GET", "/overview"), api("GET", "/health/checks/alarms").catch((e) => ({ status: "failed", alarms: [e.message] }))]);
  const q = o.queue_totals, t = o.object_totals;
  history.push([Date.now(), q.messages_ready, q.messages_unacknowledged]);
  if (history.length > 120) history.shift();
  const m = o.message_stats || {};
  pushRates(rateHistory, m);
  return [
    el("h1", {}, "Overview"),
    tiles([
      ["Ready", q.messages_ready, "ready"], ["Unacked", q.messages_unacknowledged, "unacked"],
      ["Queues", t.queues, "queues"], ["Connections", t.connections, "connections"],
      ["Consumers", t.consumers, "consumers"],
      ["Alarms", alarms.status === "ok" ? "none" : (alarms.alarms || []).join(", "), "alarms"],
      ["Node role", nodeRole(o.failover), "role"],
    ]),
    el("div", { class: "card" }, el("h2", {}, "Queued messages (ready in blue, unacked in orange)"), chart(history)),
    tiles([
      ["Publish /s", rate(m, "publish"), "publish-rate"], ["Deliver /s", rate(m, "deliver_get"), "deliver-rate"],
      ["Ack /s", rate(m, "ack"), "ack-rate"], ["Published", m.publish || 0, "published"],
    ]),
    el("div", { class: "card" }, el("h2", {}, "Message rates"), rateChart(rateHistory, "rate-chart"), rateLegend()),
    el("p", {}, `${o.product_name} ${o.product_version} on ${o.node}; listening on `,
      o.listeners.map((l) => l.port).join(", ")),
  ];
}

async function queuesPage() {
  const queues = await api("GET", "/queues");
  return [el("h1", {}, "Queues"), table(queues, [
    ["Virtual host", "vhost"], ["Name", "name", (q) => `#/queue/${enc(q.vhost)}/${enc(q.name)}`],
    ["Ready", "messages_ready"], ["Unacked", "messages_unacknowledged"], ["Total", "messages"],
    ["Consumers", "consumers"], ["Publish /s", "message_stats.publish_details.rate"],
    ["Deliver /s", "message_stats.deliver_get_details.rate"], ["Durable", "durable"],
  ], "queues-table")];
}

function form(id, fields, submit, label) {
  const status = el("p", { class: "error", role: "status" });
  const node = el("form", { id, class: "card", onsubmit: async (e) => {
    e.preventDefault();
    status.className = "error";
    status.textContent = "";
    try {
      status.textContent = (await submit(new FormData(node))) || "Done";
      status.className = "ok";
    } catch (err) { status.textContent = err.message; }
  } }, fields, el("button", { type: "submit" }, label), status);
  return node;
}

async function queuePage(vhost, name) {
  const path = `/queues/${enc(vhost)}/${enc(name)}`;
  const [q, bindings] = await Promise.all([api("GET", path), api("GET", path + "/bindings")]);
  const messages = el("div", { id: "messages" });
  const key = `${vhost}/${name}`;
  if (!queueHistories.has(key)) queueHistories.set(key, []);
  const samples = queueHistories.get(key);
  pushRates(samples, q.message_stats);
  const canvas = rateChart(samples, "queue-rate-chart");
  const counters = tiles([["Ready", q.messages_ready, "ready"], ["Unacked", q.messages_unacknowledged, "unacked"],
    ["Consumers", q.consumers, "consumers"], ["Durable", q.durable, "durable"]]);
  // Only the counters and the chart refresh (every 5 s), so the forms keep what is typed.
  const refresh = async () => {
    try {
      const now = await api("GET", path);
      pushRates(samples, now.message_stats);
      draw(canvas, samples, RATE_SERIES, "/s");
      counters.querySelector("#ready").textContent = now.messages_ready;
      counters.querySelector("#unacked").textContent = now.messages_unacknowledged;
      counters.querySelector("#consumers").textContent = now.consumers;
    } catch (err) { return; }
    if (location.hash === `#/queue/${enc(vhost)}/${enc(name)}`) refreshTimer = setTimeout(refresh, 5000);
  };
  refreshTimer = setTimeout(refresh, 5000);
  return [
    el("h1", {}, `Queue ${name}`),
    counters,
    el("div", { class: "card" }, el("h2", {}, "Message rates"), canvas, rateLegend()),
    el("p", {}, "Arguments: ", JSON.stringify(q.arguments)),
    el("h2", {}, "Bindings"),
    table(bindings.map((b) => ({ ...b, source: b.source || "(default)" })),
      [["From", "source"], ["Routing key", "routing_key"]], "bindings-table"),
    el("h2", {}, "Get messages"),
    form("get-form", [
      el("label", {}, "Count ", el("input", { name: "count", type: "number", min: 1, value: 1 })),
      el("label", {}, "Mode ", el("select", { name: "ackmode" },
        el("option", { value: "ack_requeue_true" }, "Requeue"),
        el("option", { value: "ack_requeue_false" }, "Remove"))),
    ], async (data) => {
      const got = await api("POST", path + "/get", { count: Number(data.get("count")), ackmode: data.get("ackmode"), encoding: "auto" });
      messages.replaceChildren(...got.map((m) => el("pre", {}, `${m.routing_key}: ${m.payload}`)));
      return `${got.length} message(s)`;
    }, "Get"),
    messages,
    el("h2", {}, "Publish to this queue"),
    form("publish-form", [el("label", {}, "Payload", el("textarea", { name: "payload" }))],
      async (data) => {
        const r = await api("POST", `/exchanges/${enc(vhost)}/amq.default/publish`,
          { routing_key: name, payload: data.get("payload"), payload_encoding: "string", properties: {} });
        return r.routed ? "Published" : "Not routed";
      }, "Publish"),
    el("h2", {}, "Purge or delete"),
    el("div", { class: "card" },
      el("button", { id: "purge", class: "danger", type: "button", onclick: async () => {
        if (confirm(`Purge ${name}?`)) { await api("DELETE", path + "/contents"); route(); }
      } }, "Purge"), " ",
      el("button", { id: "delete", class: "danger", type: "button", onclick: async () => {
        if (confirm(`Delete ${name}?`)) { await api("DELETE", path); location.hash = "#/queues"; }
      } }, "Delete")),
  ];
}

async function exchangesPage() {
  const exchanges = await api("GET", "/exchanges");
  return [el("h1", {}, "Exchanges"), table(exchanges.map((x) => ({ ...x, name: x.name || "(default)" })), [
    ["Virtual host", "vhost"], ["Name", "name"], ["Type", "type"], ["Durable", "durable"],
  ], "exchanges-table")];
}

async function connectionsPage() {
  const connections = await api("GET", "/connections");
  return [el("h1", {}, "Connections"), table(connections, [
    ["Name", "name"], ["Protocol", "protocol"], ["User", "user"], ["Virtual host", "vhost"],
    ["Channels", "channels"], ["Publish /s", "message_stats.publish_details.rate"],
    ["Deliver /s", "message_stats.deliver_get_details.rate"],
  ], "connections-table")];
}

async function usersPage() {
  const users = await api("GET", "/users");
  return [el("h1", {}, "Users"), table(users, [["Name", "name"], ["Tags", "tags"]], "users-table")];
}

const pages = {
  overview: overviewPage, queues: queuesPage, queue: queuePage, exchanges: exchangesPage,
  connections: connectionsPage, users: usersPage,
};

async function route() {
  clearTimeout(refreshTimer);
  if (!auth()) { showLogin(); return; }
  const [name, ...args] = location.hash.replace(/^#\//, "").split("/").map(decodeURIComponent);
  const page = pages[name] || overviewPage;
  nav.querySelectorAll("a").forEach((a) => a.classList.toggle("active", a.hash === `#/${name || "overview"}`));
  try {
    main.replaceChildren(...await page(...args));
  } catch (err) {
    main.replaceChildren(el("p", { class: "error", role: "alert" }, err.message));
  }
  if (page === overviewPage) refreshTimer = setTimeout(route, 5000);
}

function showLogin() {
  nav.hidden = true;
  main.replaceChildren(loginForm);
}

function logout() {
  sessionStorage.removeItem("moorage-auth");
  showLogin();
}

loginForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  const data = new FormData(loginForm);
  const utf8 = new TextEncoder().encode(`${data.get("user")}:${data.get("password")}`);
  sessionStorage.setItem("moorage-auth", btoa(String.fromCharCode(...utf8)));
  try {
    await api("GET", "/whoami");
  } catch (err) {
    sessionStorage.removeItem("moorage-auth");
    document.getElementById("login-error").textContent = err.message;
    return;
  }
  nav.hidden = false;
  route();
});
document.getElementById("logout").addEventListener("click", logout);
window.addEventListener("hashchange", route);
if (auth()) { nav.hidden = false; route(); } else { showLogin(); }
