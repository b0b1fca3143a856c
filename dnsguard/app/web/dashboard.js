// dnsguard dashboard: talks to the daemon's /api/ only. Data is inserted as text, never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "dnsguard-token";
  const LOG_REFRESH_MS = 3000;
  const OVERVIEW_REFRESH_MS = 15000;
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  let page = "overview";
  let timer = null;
  let groups = [];

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // -- talking to the API ---------------------------------------------------------------------

  async function api(path, options = {}) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    const init = { method: options.method || "GET", headers, cache: "no-store", credentials: "omit" };
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    const response = await fetch(path, init);
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (response.status === 401) {
      showLogin(token ? "The token was not accepted." : "");
      throw new ApiError(401, "login needed");
    }
    if (!response.ok) {
      throw new ApiError(response.status, (body && body.error) || response.statusText);
    }
    return body;
  }

  // -- small DOM helpers ----------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = value;
      else node.setAttribute(key, String(value));
    }
    return node;
  }

  function fillTable(table, head, rows) {
    table.replaceChildren();
    if (head) {
      table.append(el("thead", {}, el("tr", {}, ...head.map((h) => el("th", h.num ? { class: "num", text: h.text } : { text: h })))));
    }
    const body = el("tbody");
    for (const row of rows) body.append(row);
    if (!rows.length) body.append(el("tr", {}, el("td", { class: "muted", text: "nothing yet", colSpan: 9 })));
    table.append(body);
  }

  const QTYPES = { 1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV", 64: "SVCB", 65: "HTTPS", 255: "ANY" };

  function epoch(time) {
    if (typeof time === "number") return time;
    const parsed = Date.parse(time);
    return Number.isNaN(parsed) ? null : parsed / 1000;
  }

  function clock(time) {
    const seconds = epoch(time);
    return seconds === null ? String(time) : new Date(seconds * 1000).toLocaleTimeString();
  }

  function shortClock(time) {
    const seconds = epoch(time);
    return seconds === null ? String(time) : new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function dateTime(time) {
    const seconds = epoch(time);
    return seconds === null ? "never" : new Date(seconds * 1000).toLocaleString();
  }

  function say(text, isError) {
    const message = $("message");
    message.textContent = text;
    message.className = isError ? "error" : "muted";
  }

  function failed(error) {
    if (error instanceof ApiError && error.status === 401) return;
    say(error.message || String(error), true);
  }

  // -- login ----------------------------------------------------------------------------------

  function showLogin(reason) {
    stopTimer();
    $("app").hidden = true;
    $("login").hidden = false;
    $("logout").hidden = true;
    $("login-error").textContent = reason || "";
    $("token").focus();
  }

  async function login(event) {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    await start();
  }

  function logout() {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("");
  }

  // -- blocking and pauses --------------------------------------------------------------------

  function pauseText(state) {
    if (state.enabled) return null;
    if (state.paused_until === null || state.paused_until === undefined) return "paused until resumed";
    return "paused until " + clock(state.paused_until);
  }

  function showBlocking(state) {
    const box = $("blocking-state");
    box.replaceChildren();
    const global = pauseText(state);
    box.append(
      "Blocking: ",
      el("span", { class: global ? "state-paused" : "state-on", text: global || "on", id: "blocking-global" }),
    );
    groups = Object.keys(state.groups || {});
    const paused = groups.filter((name) => !state.groups[name].enabled);
    for (const name of paused) {
      box.append(
        el("span", { class: "state-paused", text: ` · ${name} ${pauseText(state.groups[name])} ` }),
        el("button", { type: "button", class: "small secondary", text: "resume", "data-group": name, onclick: () => resume(name) }),
      );
    }
    const select = $("pause-group");
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "", text: "all groups" }), ...groups.map((name) => el("option", { value: name, text: "group " + name })));
    select.value = groups.includes(chosen) ? chosen : "";
  }

  async function loadBlocking() {
    showBlocking(await api("/api/blocking"));
  }

  async function pause(event) {
    event.preventDefault();
    const minutes = $("pause-minutes").value;
    const body = { minutes: minutes === "" ? null : Number(minutes) };
    if ($("pause-group").value) body.group = $("pause-group").value;
    try {
      showBlocking(await api("/api/blocking/pause", { method: "POST", body }));
      say("Blocking paused" + (body.group ? " for group " + body.group : "") + ".");
    } catch (error) {
      failed(error);
    }
  }

  async function resume(group) {
    try {
      showBlocking(await api("/api/blocking/resume", { method: "POST", body: group ? { group } : {} }));
      say("Blocking resumed" + (group ? " for group " + group : "") + ".");
    } catch (error) {
      failed(error);
    }
  }

  // -- overview -------------------------------------------------------------------------------

  function card(value, label, id) {
    return el("div", { class: "card" }, el("div", { class: "value", text: value, id: id || "" }), el("div", { class: "label", text: label }));
  }

  function drawChart(buckets) {
    const box = $("chart");
    box.replaceChildren();
    if (!buckets || !buckets.length) {
      box.append(el("p", { class: "muted", text: "No queries in this window yet." }));
      return;
    }
    const width = 800, height = 220, left = 44, bottom = 22, top = 8;
    const most = Math.max(1, ...buckets.map((b) => b.queries || 0));
    const step = (width - left) / buckets.length;
    const scale = (value) => ((height - bottom - top) * value) / most;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "queries and blocked queries over time", preserveAspectRatio: "none" });
    chart.append(svg("line", { x1: left, y1: height - bottom, x2: width, y2: height - bottom, class: "axis" }));
    chart.append(svg("text", { x: left - 6, y: top + 10, "text-anchor": "end", text: String(most) }));
    chart.append(svg("text", { x: left - 6, y: height - bottom, "text-anchor": "end", text: "0" }));
    buckets.forEach((bucket, i) => {
      const x = left + i * step + step * 0.1;
      const w = Math.max(1, step * 0.8);
      const q = scale(bucket.queries || 0), b = scale(bucket.blocked || 0);
      const bar = svg("rect", { x, y: height - bottom - q, width: w, height: q, class: "bar-queries" });
      bar.append(svg("title", { text: `${clock(bucket.time)}: ${bucket.queries} queries, ${bucket.blocked} blocked` }));
      chart.append(bar, svg("rect", { x, y: height - bottom - b, width: w, height: b, class: "bar-blocked" }));
    });
    const labels = [[0, "start"], [Math.floor(buckets.length / 2), "middle"], [buckets.length - 1, "end"]];
    for (const [i, anchor] of labels) {
      const x = anchor === "start" ? left + i * step : anchor === "end" ? width : left + i * step + step / 2;
      chart.append(svg("text", { x, y: height - 6, "text-anchor": anchor, text: shortClock(buckets[i].time) }));
    }
    box.append(chart, el("div", { class: "legend muted" },
      el("span", {}, el("span", { class: "swatch queries" }), "queries"),
      el("span", {}, el("span", { class: "swatch blocked" }), "blocked")));
  }

  function topRows(items, key) {
    return (items || []).slice(0, 10).map((item) => {
      const label = key === "client" && item.client_name ? `${item.client_name} (${item.client})` : item[key];
      return el("tr", {}, el("td", { class: "name", text: label }), el("td", { class: "num", text: item.count }));
    });
  }

  async function loadOverview() {
    const status = await api("/api/status");
    $("daemon").textContent = `${status.kind} · dnsguard ${status.version}`;
    const dns = status.dns || { queries: {}, upstreams: [] };
    let stats = null;
    try {
      stats = await api("/api/stats?window=24h");
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 404) throw error;
    }
    const counters = $("counters");
    counters.replaceChildren();
    if (stats) {
      const share = stats.total ? ((100 * stats.blocked) / stats.total).toFixed(1) + " %" : "–";
      counters.append(card(stats.total, "queries, last 24 h", "count-total"), card(stats.blocked, "blocked", "count-blocked"), card(share, "blocked share"));
      $("stats-note").textContent = `From ${dateTime(stats.since)} to ${dateTime(stats.until)}.`;
      drawChart(stats.buckets);
      fillTable($("top-names"), null, topRows(stats.top_names, "name"));
      fillTable($("top-blocked"), null, topRows(stats.top_blocked, "name"));
      fillTable($("top-clients"), null, topRows(stats.top_clients, "client"));
    } else {
      const queries = dns.queries || {};
      const total = Object.values(queries).reduce((a, b) => a + b, 0);
      const blocked = queries.blocked || 0;
      const share = total ? ((100 * blocked) / total).toFixed(1) + " %" : "–";
      counters.append(card(total, "queries since start", "count-total"), card(blocked, "blocked", "count-blocked"), card(share, "blocked share"));
      $("stats-note").textContent = "This daemon keeps no statistics over time (no /api/stats): counters since it started, and the chart from the recent query log.";
      const log = await api("/api/queries?limit=1000");
      drawChart(bucketsOf(log.queries || []));
      fillTable($("top-names"), null, topRows(countBy(log.queries, (q) => q.name), "name"));
      fillTable($("top-blocked"), null, topRows(countBy(log.queries.filter((q) => q.result === "blocked"), (q) => q.name), "name"));
      fillTable($("top-clients"), null, topRows(countBy(log.queries, (q) => q.client).map((c) => ({ client: c.name, count: c.count })), "client"));
    }
    counters.append(card(Math.round(status.uptime_seconds / 60) + " min", "up"));
    fillTable($("upstreams"), ["Upstream", { text: "Queries", num: true }, { text: "Failures", num: true }, { text: "Latency ms", num: true }, "Last error"],
      (dns.upstreams || []).map((u) => el("tr", {}, el("td", { text: u.name }), el("td", { class: "num", text: u.queries }), el("td", { class: "num", text: u.failures }),
        el("td", { class: "num", text: u.latency_ms === null ? "–" : u.latency_ms.toFixed(1) }), el("td", { text: u.last_error || "" }))));
  }

  function countBy(items, key) {
    const counts = new Map();
    for (const item of items || []) counts.set(key(item), (counts.get(key(item)) || 0) + 1);
    return [...counts].map(([name, count]) => ({ name, count })).sort((a, b) => b.count - a.count);
  }

  function bucketsOf(queries) {
    const times = queries.map((q) => epoch(q.time)).filter((t) => t !== null);
    if (!times.length) return [];
    const newest = Math.max(...times), count = 24, size = 300;
    const first = newest - count * size;
    const buckets = Array.from({ length: count }, (_, i) => ({ time: first + (i + 1) * size, queries: 0, blocked: 0 }));
    for (const q of queries) {
      const t = epoch(q.time);
      if (t === null || t <= first) continue;
      const bucket = buckets[Math.min(count - 1, Math.floor((t - first) / size))];
      bucket.queries += 1;
      if (q.result === "blocked") bucket.blocked += 1;
    }
    return buckets;
  }

  // -- query log ------------------------------------------------------------------------------

  async function changeRule(action, name) {
    try {
      const result = await api("/api/rules", { method: "POST", body: { action, name } });
      const done = { allow: "allowed", block: "blocked", remove: "removed from the managed lists" }[action];
      say(result.changed ? `${name} ${done}; the lists are reloaded.` : `${name} was already ${done}.`);
      await refresh();
    } catch (error) {
      failed(error);
    }
  }

  async function loadLog() {
    const params = new URLSearchParams({ limit: "200" });
    const filters = { client: $("filter-client").value.trim(), name: $("filter-name").value.trim(), result: $("filter-result").value,
      qtype: $("filter-qtype").value, list: $("filter-list").value.trim() };
    for (const [key, value] of Object.entries(filters)) if (value) params.set(key, value);
    const since = $("filter-since").value;
    if (since) params.set("since", String(Date.now() / 1000 - Number(since)));
    const log = await api("/api/queries?" + params.toString());
    $("log-note").textContent = log.source === "querylog"
      ? `From the lasting query log${log.next !== null ? " (the newest 200 matches)" : ""}.`
      : `From the last ${log.capacity} queries in memory (the lasting query log is off).`;
    const rows = (log.queries || []).map((q) => {
      const blocked = q.result === "blocked";
      const action = blocked ? "allow" : "block";
      const client = q.client_name ? `${q.client_name} (${q.client})` : q.client;
      return el("tr", { "data-name": q.name, "data-result": q.result },
        el("td", { text: clock(q.time) }),
        el("td", { text: client }),
        el("td", { class: "name", text: q.count > 1 ? `${q.name} ×${q.count}` : q.name }),
        el("td", { text: q.qtype_name || QTYPES[q.qtype] || q.qtype }),
        el("td", { class: "result-" + q.result, text: q.result }),
        el("td", { text: q.group }),
        el("td", { text: q.reason || "" }),
        el("td", { class: "num", text: typeof q.elapsed_ms === "number" ? q.elapsed_ms.toFixed(1) : "" }),
        el("td", {}, el("button", { type: "button", class: "small " + (blocked ? "" : "secondary"), text: blocked ? "Allow" : "Block",
          "data-action": action, onclick: () => changeRule(action, q.name) })));
    });
    const table = $("log-table");
    const body = el("tbody");
    body.append(...rows);
    if (!rows.length) body.append(el("tr", {}, el("td", { class: "muted", text: "no queries match", colSpan: 9 })));
    table.replaceChild(body, table.tBodies[0]);
  }

  // -- clients --------------------------------------------------------------------------------

  async function loadClients() {
    let known = null;
    try {
      known = await api("/api/clients");
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 404) throw error;
    }
    const log = await api("/api/queries?limit=1000");
    const seen = new Map();
    for (const q of log.queries || []) {
      const entry = seen.get(q.client) || { count: 0, blocked: 0, last: q.time, group: q.group, name: q.client_name || "" };
      entry.count += 1;
      if (q.result === "blocked") entry.blocked += 1;
      seen.set(q.client, entry);
    }
    const table = $("clients-table");
    if (known && Array.isArray(known.clients)) {
      $("clients-note").textContent = "Clients the daemon knows, with their recent queries.";
      fillTable(table, ["Name", "Address", "MAC", "Group", "Source", { text: "Recent queries", num: true }, { text: "Blocked", num: true }],
        known.clients.map((c) => {
          const recent = seen.get(c.address) || { count: 0, blocked: 0 };
          return el("tr", {}, el("td", { text: c.name || "" }), el("td", { text: c.address }), el("td", { text: c.mac || "" }), el("td", { text: c.group || "" }),
            el("td", { text: c.source || "" }), el("td", { class: "num", text: recent.count }), el("td", { class: "num", text: recent.blocked }));
        }));
    } else {
      $("clients-note").textContent = "Clients seen in the recent query log.";
      fillTable(table, ["Client", "Group", { text: "Recent queries", num: true }, { text: "Blocked", num: true }, "Last query"],
        [...seen].map(([address, c]) => el("tr", {}, el("td", { text: c.name ? `${c.name} (${address})` : address }), el("td", { text: c.group }),
          el("td", { class: "num", text: c.count }), el("td", { class: "num", text: c.blocked }), el("td", { text: clock(c.last) }))));
    }
  }

  // -- lists ----------------------------------------------------------------------------------

  async function loadLists(data) {
    const lists = data || (await api("/api/lists"));
    $("lists-compiled").textContent = lists.compiled_at ? "compiled " + dateTime(lists.compiled_at) : "";
    fillTable($("lists-table"), ["List", { text: "Entries", num: true }, "Last update", { text: "Failed updates", num: true }, "Sources"],
      Object.entries(lists.lists || {}).map(([name, list]) => el("tr", { "data-list": name },
        el("td", { text: name }),
        el("td", { class: "num", text: list.entries }),
        el("td", { text: list.last_update ? dateTime(list.last_update) : "–" }),
        el("td", { class: "num", text: list.update_failures }),
        el("td", { class: "name" }, ...list.sources.map((s) => el("div", { text: `${s.location}: ${s.rules} rules${s.error ? " (" + s.status + ": " + s.error + ")" : ""}` }))))));
    const rules = await api("/api/rules");
    const rows = [];
    for (const [kind, names] of [["allowed", rules.allow], ["blocked", rules.block]]) {
      for (const name of names) {
        rows.push(el("tr", {}, el("td", { class: "name", text: name }), el("td", { class: kind === "blocked" ? "result-blocked" : "result-allowed", text: kind }),
          el("td", {}, el("button", { type: "button", class: "small secondary", text: "Remove", onclick: () => changeRule("remove", name) }))));
      }
    }
    fillTable($("rules-table"), ["Name", "Rule", ""], rows);
  }

  async function refreshLists() {
    const button = $("refresh-lists");
    button.disabled = true;
    say("Refreshing the lists…");
    try {
      await loadLists(await api("/api/lists/refresh", { method: "POST" }));
      say("Lists refreshed.");
    } catch (error) {
      failed(error);
    } finally {
      button.disabled = false;
    }
  }

  async function submitRule(event) {
    event.preventDefault();
    const action = event.submitter ? event.submitter.getAttribute("data-action") : "block";
    const name = $("rule-name").value.trim();
    if (name) await changeRule(action, name);
  }

  // -- pages and refreshing -------------------------------------------------------------------

  const loaders = { overview: loadOverview, log: loadLog, clients: loadClients, lists: () => loadLists() };

  function stopTimer() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
  }

  function schedule() {
    stopTimer();
    const every = page === "log" ? ($("auto-refresh").checked ? LOG_REFRESH_MS : 0) : page === "overview" ? OVERVIEW_REFRESH_MS : 0;
    if (every) timer = setTimeout(refresh, every);
  }

  async function refresh() {
    try {
      await Promise.all([loadBlocking(), loaders[page]()]);
      document.body.setAttribute("data-loaded", page);
    } catch (error) {
      failed(error);
      if (error instanceof ApiError && error.status === 401) return;
    }
    schedule();
  }

  function show() {
    const wanted = (location.hash || "#overview").slice(1);
    page = wanted in loaders ? wanted : "overview";
    for (const name of Object.keys(loaders)) $("page-" + name).hidden = name !== page;
    for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.getAttribute("data-page") === page);
    document.body.removeAttribute("data-loaded");
    say("");
    refresh();
  }

  async function start() {
    try {
      const status = await api("/api/status");
      $("daemon").textContent = `${status.kind} · dnsguard ${status.version}`;
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) return;
      failed(error);
    }
    $("login").hidden = true;
    $("app").hidden = false;
    $("logout").hidden = !sessionStorage.getItem(TOKEN_KEY);
    show();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
    $("pause-form").addEventListener("submit", pause);
    $("resume-button").addEventListener("click", () => resume(null));
    $("log-filters").addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
    $("auto-refresh").addEventListener("change", schedule);
    $("refresh-lists").addEventListener("click", refreshLists);
    $("rule-form").addEventListener("submit", submitRule);
    window.addEventListener("hashchange", show);
    start();
  });
})();
