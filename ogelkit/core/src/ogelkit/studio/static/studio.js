// ogelkit Studio: a single page over the admin API. No framework and no third-party code:
// a small element builder, hash routes, and SVG charts fed by polling /admin/stats.
"use strict";

const $ = (sel) => document.querySelector(sel);

// h("tag.class", {attr: value, onclick: fn}, child, ...): text is never parsed as HTML.
function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag || "div");
  if (classes.length) el.className = classes.join(" ");
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function toast(text) {
  const t = $("#toast");
  t.textContent = text;
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), 3000);
}

// -- the API -----------------------------------------------------------------------------
const session = {
  get token() { return sessionStorage.getItem("ogelkit.token"); },
  set token(v) { v ? sessionStorage.setItem("ogelkit.token", v) : sessionStorage.removeItem("ogelkit.token"); },
  who: null,
};

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function api(method, path, body) {
  const headers = {accept: "application/json"};
  if (session.token) headers.authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const r = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  if (r.status === 204) return null;
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    if (r.status === 401 && session.token && path !== "/admin/login") {
      session.token = null;
      location.hash = "#/signin";
    }
    throw new ApiError(r.status, data);
  }
  return data;
}

const enc = encodeURIComponent;
const tenantPath = (slug) => `/admin/tenants/${enc(slug)}`;
const dbPath = (slug, db) => `${tenantPath(slug)}/databases/${enc(db)}`;
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "-");
const bytes = (n) => (n === null || n === undefined ? "-" :
  n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`);

function problemText(err) {
  const p = err.problem || {};
  const parts = [err.message];
  if (p.layer) parts.push(`layer ${p.layer}`);
  if (p.reason) parts.push(`reason ${p.reason}`);
  if (p.hint) parts.push(p.hint);
  return parts.join(" · ");
}

// -- routing -----------------------------------------------------------------------------
let stopLive = () => {};

async function route() {
  stopLive();
  stopLive = () => {};
  const main = $("#main");
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (!session.token) return render(main, signin());
  if (!session.who) {
    try { session.who = await api("GET", "/admin/whoami"); }
    catch (e) { session.token = null; return render(main, signin(e.message)); }
  }
  header();
  const [view, a, b] = parts;
  try {
    if (view === "tenant" && a) return render(main, await tenantView(a));
    if (view === "db" && a && b) return render(main, await databaseView(a, b));
    if (view === "audit") return render(main, await auditView());
    if (session.who.role === "tenant") { location.hash = `#/tenant/${enc(session.who.tenant)}`; return; }
    return render(main, await tenantsView());
  } catch (e) {
    render(main, h("section", {}, h("p.error", {text: problemText(e)})));
  }
}

function render(main, ...nodes) {
  main.replaceChildren(...nodes);
}

function header() {
  const who = session.who;
  const links = who.role === "operator"
    ? [["#/tenants", "Tenants"], ["#/audit", "Audit log"]]
    : [[`#/tenant/${enc(who.tenant)}`, "My databases"], ["#/audit", "Refusals and logins"]];
  $("#nav").replaceChildren(...links.map(([href, text]) =>
    h("a", {href, class: location.hash.startsWith(href) ? "on" : null, text})));
  $("#who").textContent = who.role === "operator" ? "operator" : `tenant ${who.tenant}`;
  $("#signout").hidden = false;
}

// -- sign in -----------------------------------------------------------------------------
function signin(message) {
  $("#nav").replaceChildren();
  $("#who").textContent = "";
  $("#signout").hidden = true;
  const err = h("p.error", {id: "signin-error", text: message || ""});
  const operator = h("form", {id: "operator-signin", onsubmit: async (ev) => {
    ev.preventDefault();
    session.token = operator.elements.token.value.trim();
    session.who = null;
    route();
  }}, h("label", {}, "Admin token", h("input", {name: "token", type: "password", required: true, autocomplete: "off"})),
  h("button", {type: "submit", text: "Sign in as operator"}));
  const tenant = h("form", {id: "tenant-signin", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const r = await api("POST", "/admin/login", {tenant: tenant.elements.tenant.value.trim(),
                                                   password: tenant.elements.password.value});
      session.token = r.token;
      session.who = null;
      location.hash = `#/tenant/${enc(r.tenant)}`;
      route();
    } catch (e) { err.textContent = e.message; }
  }}, h("label", {}, "Tenant", h("input", {name: "tenant", required: true})),
  h("label", {}, "Password", h("input", {name: "password", type: "password", required: true})),
  h("button", {type: "submit", text: "Sign in as tenant"}));
  return h("div.grid", {},
    h("section", {}, h("h2", {text: "Operator"}), operator),
    h("section", {}, h("h2", {text: "Tenant"}), tenant, err));
}

// -- tenants (operator) -------------------------------------------------------------------
async function tenantsView() {
  const page = await api("GET", "/admin/tenants?limit=1000");
  const out = h("div.secret", {id: "new-tenant-secret", hidden: true});
  const form = h("form", {id: "create-tenant", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const t = await api("POST", "/admin/tenants", {slug: form.elements.slug.value.trim(),
                                                      tier: form.elements.tier.value});
      out.hidden = false;
      out.replaceChildren(`Created tenant ${t.slug}. Its password, shown only now: `,
        h("code", {id: "new-tenant-password", text: t.password}), " ",
        h("a", {href: `#/tenant/${enc(t.slug)}`, text: "open"}));
      tbody.prepend(tenantRow(t));
    } catch (e) { toast(problemText(e)); }
  }}, h("label", {}, "Slug", h("input", {name: "slug", required: true, pattern: "[a-z][a-z0-9-]*"})),
  h("label", {}, "Tier", h("select", {name: "tier"}, ...["free", "starter", "pro", "enterprise"].map(
    (t) => h("option", {value: t, text: t})))),
  h("button", {type: "submit", text: "Create tenant"}));
  const tbody = h("tbody", {}, ...page.items.map(tenantRow));
  return h("div", {},
    h("section", {}, h("h2", {text: "Tenants"}), form, out,
      h("table", {id: "tenants"}, h("thead", {}, h("tr", {}, ...["Tenant", "Tier", "Status", "Created"].map(
        (c) => h("th", {text: c})))), tbody)),
    await liveSection(null));
}

function tenantRow(t) {
  return h("tr", {"data-tenant": t.slug},
    h("td", {}, h("a", {href: `#/tenant/${enc(t.slug)}`, text: t.slug})),
    h("td", {text: t.tier}), h("td", {text: t.status}), h("td", {text: when(t.created_at)}));
}

// -- one tenant --------------------------------------------------------------------------
async function tenantView(slug) {
  const [tenant, usage, backends] = await Promise.all([
    api("GET", tenantPath(slug)), api("GET", `${tenantPath(slug)}/usage`), api("GET", "/admin/backends")]);
  let advice = null;
  try { advice = await api("GET", `${tenantPath(slug)}/advice`); } catch (e) { advice = null; }
  const operator = session.who.role === "operator";
  const secret = h("div.secret", {id: "new-db-secret", hidden: true});
  const kinds = [...new Set(backends.map((b) => b.kind))];
  const form = h("form", {id: "create-database", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const r = await api("POST", `${tenantPath(slug)}/databases`, {
        name: form.elements.name.value.trim(), kind: form.elements.kind.value});
      secret.hidden = false;
      secret.replaceChildren(`Created ${r.database.kind} database ${r.database.name}. Connection string: `,
        h("code", {id: "new-db-dsn", text: r.connection_string}),
        r.password ? h("div", {}, "Password, shown only now: ", h("code", {id: "new-db-password", text: r.password})) : "");
      dbBody.append(databaseRow(slug, r.database, r.connection_string));
    } catch (e) { toast(problemText(e)); }
  }}, h("label", {}, "Name", h("input", {name: "name", required: true})),
  h("label", {}, "Kind", h("select", {name: "kind"}, ...kinds.map((k) => h("option", {value: k, text: k})))),
  h("button", {type: "submit", text: "Create database"}));
  const dbBody = h("tbody", {}, ...tenant.databases.map((d) => databaseRow(slug, d)));
  const limits = tenant.limits || {};
  const inv = usage.invoice;
  const tierForm = operator ? h("form", {id: "tenant-actions", onsubmit: (ev) => ev.preventDefault()},
    h("label", {}, "Tier", h("select", {name: "tier", onchange: async (ev) => {
      try { await api("PATCH", tenantPath(slug), {tier: ev.target.value}); toast(`tier ${ev.target.value}`); route(); }
      catch (e) { toast(problemText(e)); }
    }}, ...["free", "starter", "pro", "enterprise"].map((t) => h("option", {value: t, selected: t === tenant.tier, text: t})))),
    h("button.plain", {type: "button", onclick: async () => {
      const status = tenant.status === "suspended" ? "active" : "suspended";
      try { await api("PATCH", tenantPath(slug), {status}); route(); } catch (e) { toast(problemText(e)); }
    }, text: tenant.status === "suspended" ? "Resume" : "Suspend"})) : "";
  const rotate = h("button.plain", {id: "rotate-password", onclick: async () => {
    try {
      const r = await api("POST", `${tenantPath(slug)}/credentials`);
      secret.hidden = false;
      secret.replaceChildren("New password, shown only now: ", h("code", {text: r.password}));
      if (!operator) { session.token = null; toast("password changed: sign in again"); }
    } catch (e) { toast(problemText(e)); }
  }, text: "New password"});
  return h("div", {},
    h("section", {}, h("h2", {text: `Tenant ${slug}`}),
      h("p", {}, `Tier `, h("strong", {id: "tenant-tier", text: tenant.tier}), ` · status `,
        h("strong", {id: "tenant-status", text: tenant.status}), ` · ${tenant.sessions} open sessions`),
      tierForm, rotate),
    h("section", {}, h("h2", {text: "Databases"}), form, secret,
      h("table", {id: "databases"}, h("thead", {}, h("tr", {}, ...["Name", "Kind", "State", "Backend", "Connection", "Storage", ""].map(
        (c) => h("th", {text: c})))), dbBody)),
    h("div.grid", {},
      h("section", {}, h("h2", {text: "Tier limits"}), kv({
        connections: limits.connections, "operations/s": limits.ops_per_second, burst: limits.burst,
        "statement timeout (s)": limits.statement_timeout, "cost ceiling": limits.cost_ceiling,
        "sleeps after idle (s)": limits.idle_before_sleep, storage: bytes(limits.storage)})),
      h("section", {id: "invoice"}, h("h2", {text: `Invoice preview ${usage.month}`}), kv({
        base: inv.base, "vCPU hours": inv.vcpu_hours.toFixed(3), "GB hours": inv.gb_hours.toFixed(3),
        overage: (inv.vcpu_overage + inv.gb_overage).toFixed(2), total: inv.total.toFixed(2)})),
      h("section", {id: "advice"}, h("h2", {text: "Upgrade advice"}), adviceBody(advice))),
    await liveSection(slug));
}

function kv(obj) {
  return h("table", {}, h("tbody", {}, ...Object.entries(obj).map(([k, v]) =>
    h("tr", {}, h("th", {text: k}), h("td", {text: v === null || v === undefined ? "unlimited" : v})))));
}

function adviceBody(advice) {
  if (!advice) return h("p.muted", {text: "No advice (the intelligence layer is not installed)."});
  const reasons = advice.reasons || [];
  return h("div", {},
    h("p", {}, advice.recommended_tier ? ["Recommended tier: ", h("strong", {text: advice.recommended_tier})]
      : "The current tier fits."),
    h("ul", {}, ...reasons.map((r) => h("li", {text: typeof r === "string" ? r : (r.text || JSON.stringify(r))}))));
}

function databaseRow(slug, d, dsn) {
  const actions = h("td", {},
    h("a", {href: `#/db/${enc(slug)}/${enc(d.name)}`, text: "console"}), " ",
    ...["sleep", "wake"].map((a) => h("button.plain", {onclick: async () => {
      try { await api("POST", `${dbPath(slug, d.name)}/${a}`); toast(`${a} requested`); }
      catch (e) { toast(problemText(e)); }
    }, text: a})),
    h("button.plain", {onclick: async () => {
      if (!confirm(`Drop ${d.kind} database ${d.name}? Its data is lost.`)) return;
      try { await api("DELETE", dbPath(slug, d.name)); route(); } catch (e) { toast(problemText(e)); }
    }, text: "delete"}));
  const conn = h("td.mono", {text: dsn || "…"});
  const storage = h("td", {text: "…"});
  api("GET", dbPath(slug, d.name)).then((full) => {
    conn.textContent = dsn || full.connection_string || "-";
    storage.textContent = bytes(full.storage_bytes);
  }).catch(() => { conn.textContent = "-"; storage.textContent = "-"; });
  return h("tr", {"data-db": d.name}, h("td", {text: d.name}), h("td", {text: d.kind}),
    h("td", {class: `state-${d.state}`, text: d.state}), h("td", {text: d.backend}), conn, storage, actions);
}

// -- live view ---------------------------------------------------------------------------
async function liveSection(slug) {
  const opsChart = chart("operations/s"), latChart = chart("average latency (ms)");
  const rej = h("tbody");
  const refusals = h("tbody");
  const section = h("section", {id: "live"}, h("h2", {text: slug ? "Live traffic" : "Live traffic (all tenants)"}),
    h("div.grid", {}, opsChart.el, latChart.el),
    h("h3", {text: "Rejections by layer and reason"}),
    h("table", {id: "rejections"}, h("thead", {}, h("tr", {}, ...["Layer", "Reason", "Count", "Last second"].map(
      (c) => h("th", {text: c})))), rej),
    h("h3", {text: "Recent refusals"}),
    h("table", {id: "recent-refusals"}, h("thead", {}, h("tr", {}, ...["Time", "Tenant", "Database", "Layer", "Reason", "Detail"].map(
      (c) => h("th", {text: c})))), refusals));
  let last = null;
  let alive = true;
  const q = slug ? `?tenant=${enc(slug)}` : "";
  async function tick() {
    if (!alive) return;
    try {
      const s = await api("GET", `/admin/stats${q}`);
      if (last) {
        const dt = Math.max(0.001, s.time - last.time);
        const dops = s.operations - last.operations;
        opsChart.push(dops / dt);
        latChart.push(dops > 0 ? ((s.seconds - last.seconds) / dops) * 1000 : 0);
      }
      const before = new Map((last ? last.rejections : []).map((r) => [`${r.layer}/${r.reason}`, r.count]));
      rej.replaceChildren(...s.rejections.map((r) => h("tr", {"data-layer": r.layer},
        h("td", {text: r.layer}), h("td", {text: r.reason}), h("td", {text: r.count}),
        h("td", {text: r.count - (before.get(`${r.layer}/${r.reason}`) || 0)}))));
      last = s;
      const d = await api("GET", `/admin/decisions${q ? q + "&" : "?"}limit=20`);
      refusals.replaceChildren(...d.recent.map((e) => h("tr", {},
        h("td", {text: when(e.ts)}), h("td", {text: e.tenant || "-"}), h("td", {text: e.database || "-"}),
        h("td", {text: e.layer || "-"}), h("td", {text: e.reason || "-"}), h("td", {text: e.text || ""}))));
    } catch (e) { /* the next tick retries */ }
    if (alive) setTimeout(tick, 1000);
  }
  tick();
  const previous = stopLive;
  stopLive = () => { previous(); alive = false; };
  return section;
}

function chart(title) {
  const n = 60, values = [];
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 300 100");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "chart");
  const path = document.createElementNS(svg.namespaceURI, "polyline");
  path.setAttribute("class", "line");
  svg.append(path);
  const label = h("div.legend", {text: `${title}: -`});
  return {
    el: h("div", {}, label, svg),
    push(v) {
      values.push(v);
      if (values.length > n) values.shift();
      const max = Math.max(1, ...values);
      path.setAttribute("points", values.map((x, i) => `${(i * 300) / (n - 1)},${100 - (x / max) * 95}`).join(" "));
      label.textContent = `${title}: ${v.toFixed(v < 10 ? 2 : 0)} (max ${max.toFixed(1)})`;
    },
  };
}

// -- console per kind --------------------------------------------------------------------
async function databaseView(slug, name) {
  const d = await api("GET", dbPath(slug, name));
  const out = h("div", {id: "console-result"});
  const run = async (request) => {
    out.replaceChildren(h("p.muted", {text: "running…"}));
    try {
      const r = await api("POST", `${dbPath(slug, name)}/console`, request);
      out.replaceChildren(resultView(r));
      return r;
    } catch (e) {
      out.replaceChildren(h("p.error", {id: "console-error", text: problemText(e)}));
      return null;
    }
  };
  let panel;
  if (d.kind === "postgres" || d.kind === "neon") {
    const form = h("form", {id: "sql-console", onsubmit: (ev) => { ev.preventDefault(); run({sql: form.elements.sql.value}); }},
      h("textarea", {name: "sql", text: "select now(), current_database()"}),
      h("button", {type: "submit", text: "Run"}));
    panel = h("section", {}, h("h2", {text: "SQL console"}),
      h("p.muted", {text: "Runs as this tenant through the gateway's layers (rate limit, cost, timeout, usage)."}), form);
  } else if (d.kind === "redis") {
    const keys = h("ul", {id: "keys"});
    const form = h("form", {id: "key-browser", onsubmit: async (ev) => {
      ev.preventDefault();
      const r = await run({command: ["SCAN", "0", "MATCH", form.elements.pattern.value || "*", "COUNT", "200"]});
      const found = r && r.result && Array.isArray(r.result[1]) ? r.result[1] : [];
      keys.replaceChildren(...found.map((k) => h("li", {}, h("a", {href: "#", onclick: (e) => {
        e.preventDefault(); run({command: ["TYPE", k]}).then(() => run({command: ["DUMPVALUE", k]}));
      }, text: k}))));
    }}, h("label", {}, "Pattern", h("input", {name: "pattern", value: "*"})), h("button", {type: "submit", text: "Scan"}));
    panel = h("section", {}, h("h2", {text: "Key browser"}), form, keys);
  } else if (d.kind === "mongodb") {
    const colls = h("ul", {id: "collections"});
    const form = h("form", {id: "collection-browser", onsubmit: async (ev) => {
      ev.preventDefault();
      const r = await run({document: {listCollections: 1}});
      const names = r && Array.isArray(r.rows) ? r.rows.map((row) => row[0]) : [];
      colls.replaceChildren(...names.map((c) => h("li", {}, h("a", {href: "#", onclick: (e) => {
        e.preventDefault(); run({document: {find: c, limit: 50}});
      }, text: c}))));
    }}, h("button", {type: "submit", text: "List collections"}));
    panel = h("section", {}, h("h2", {text: "Collection browser"}), form, colls);
  } else if (d.kind === "convex") {
    const form = h("form", {id: "function-runner", onsubmit: (ev) => {
      ev.preventDefault();
      let args;
      try { args = JSON.parse(form.elements.args.value || "{}"); } catch (e) { out.replaceChildren(h("p.error", {text: "args must be JSON"})); return; }
      run({function: {kind: form.elements.kind.value, path: form.elements.path.value, args}});
    }}, h("label", {}, "Kind", h("select", {name: "kind"}, ...["query", "mutation", "action"].map((k) => h("option", {value: k, text: k})))),
    h("label", {}, "Function", h("input", {name: "path", placeholder: "messages:list", required: true})),
    h("label", {}, "Args (JSON)", h("input", {name: "args", value: "{}"})), h("button", {type: "submit", text: "Run"}));
    panel = h("section", {}, h("h2", {text: "Function runner"}), form);
  } else {
    panel = h("section", {}, h("p", {text: `${d.kind} databases have no console.`}));
  }
  return h("div", {},
    h("section", {}, h("h2", {}, h("a", {href: `#/tenant/${enc(slug)}`, text: slug}), ` / ${name}`),
      h("p", {}, `${d.kind} on ${d.backend} · `, h("span", {class: `state-${d.state}`, text: d.state}),
        ` · storage ${bytes(d.storage_bytes)}`),
      h("p.mono", {text: d.connection_string || ""})),
    panel, h("section", {}, h("h2", {text: "Result"}), out));
}

function resultView(r) {
  const meta = h("p.muted", {text: `${r.command || r.kind} · ${r.duration_ms} ms`});
  if (Array.isArray(r.columns)) {
    return h("div", {}, meta, h("table", {id: "result-table"},
      h("thead", {}, h("tr", {}, ...r.columns.map((c) => h("th", {text: c})))),
      h("tbody", {}, ...r.rows.map((row) => h("tr", {}, ...row.map((v) => h("td.mono", {
        text: v === null ? "NULL" : typeof v === "object" ? JSON.stringify(v) : String(v)})))))));
  }
  return h("div", {}, meta, h("pre.mono", {id: "result-value", text: JSON.stringify(r.result, null, 2)}));
}

// -- audit -------------------------------------------------------------------------------
async function auditView() {
  const body = h("tbody");
  const more = h("button.plain", {hidden: true, text: "More"});
  let cursor = null;
  const form = h("form", {id: "audit-search", onsubmit: (ev) => { ev.preventDefault(); cursor = null; body.replaceChildren(); load(); }},
    h("label", {}, "Search", h("input", {name: "q", placeholder: "tenant, address, reason…"})),
    h("label", {}, "Event", h("select", {name: "event"}, h("option", {value: "", text: "any"}),
      ...["operation_refused", "connection_refused", "login_failed", "tier_changed", "tenant_suspended", "tenant_changed", "credentials_rotated", "database_asleep", "database_woken", "wake_failed"].map(
        (e) => h("option", {value: e, text: e})))),
    h("button", {type: "submit", text: "Search"}));
  async function load() {
    const params = new URLSearchParams({limit: "50"});
    if (form.elements.q.value) params.set("q", form.elements.q.value);
    if (form.elements.event.value) params.set("event", form.elements.event.value);
    if (cursor) params.set("cursor", cursor);
    const page = await api("GET", `/admin/audit?${params}`);
    body.append(...page.items.map((e) => h("tr", {},
      h("td", {text: when(e.ts)}), h("td", {text: e.event}), h("td", {text: e.tenant || "-"}),
      h("td", {text: e.client || "-"}), h("td", {text: e.layer || "-"}), h("td", {text: e.reason || "-"}),
      h("td", {text: e.text || e.database || ""}))));
    cursor = page.next_cursor;
    more.hidden = !cursor;
  }
  more.addEventListener("click", load);
  await load();
  return h("section", {}, h("h2", {text: "Audit log"}), form,
    h("table", {id: "audit"}, h("thead", {}, h("tr", {}, ...["Time", "Event", "Tenant", "Client", "Layer", "Reason", "Detail"].map(
      (c) => h("th", {text: c})))), body), more);
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  $("#signout").addEventListener("click", () => { session.token = null; session.who = null; location.hash = "#/signin"; route(); });
  route();
});
