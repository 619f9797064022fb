// Tollgate console: one small module, no build step, no library. Every figure comes from the
// counter's admin API (the same endpoints the CLI reads); money stays integer micro-dollars until it
// is printed, exactly as the counter prints it (format_micros). Values are written as text nodes,
// never as HTML. docs/console.md describes the pages.

const TOKEN_KEY = "tollgate.admin_token";
const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6", "#dd4477", "#66aa00", "#b82e2e", "#316395"];
const DAY_MS = 86400000;

// ---- helpers -------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else if (k === "style") node.style.cssText = v; // CSSOM, allowed by the page's CSP (attributes are not)
    else if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

/** Micro-dollars → "1.234567", as the counter formats them. */
export function usd(micros) {
  const m = Number(micros) || 0;
  const abs = Math.abs(m);
  return (m < 0 ? "-" : "") + Math.floor(abs / 1e6) + "." + String(abs % 1e6).padStart(6, "0");
}

function csvField(text) {
  const t = String(text);
  return /[",\r\n]/.test(t) ? '"' + t.replaceAll('"', '""') + '"' : t;
}

function toCsv(header, rows) {
  return [header, ...rows].map((r) => r.map(csvField).join(",")).join("\r\n") + "\r\n";
}

function download(id, text) {
  const blob = new Blob([text], { type: "text/csv" });
  const a = el("a", { href: URL.createObjectURL(blob), download: `tollgate-${id}.csv` });
  document.body.append(a);
  a.click();
  a.remove();
}

/**
 * A titled table with a CSV download. `numeric` names right-aligned columns. Without `source` the
 * CSV is exactly the cells shown; with `source` (an API path and its query, for endpoints that
 * offer `format=csv`) it is the endpoint's own CSV for the same query, as the CLI prints it.
 */
function table(id, title, header, rows, numeric = [], source = null) {
  const link = el("a", { href: "#", class: "csv", "data-csv": id, "data-source": source ? source.path : "page" }, "CSV");
  const failure = el("span", { class: "error" });
  link.addEventListener("click", async (e) => {
    e.preventDefault();
    failure.textContent = "";
    try {
      const q = source ? new URLSearchParams({ ...source.query, format: "csv" }) : null;
      download(id, source ? await api(`${source.path}?${q}`, { raw: true }) : toCsv(header, rows));
    } catch (err) { failure.textContent = " " + err.message; }
  });
  const t = el("table", { id },
    el("thead", {}, el("tr", {}, header.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c, i) => {
      const td = el("td", { "data-col": header[i] }, c);
      if (numeric.includes(header[i])) td.className = "num";
      if (header[i] === "status") td.className = "status-" + c;
      if (header[i] === "overdue" && c === "true") td.className = "status-hard";
      if (header[i] === "action") td.className = "action-" + c;
      return td;
    })))));
  return el("div", { class: "table" }, el("h2", {}, title, link, failure), t, rows.length ? "" : el("p", { class: "muted" }, "No rows."));
}

function card(id, label, value) {
  return el("div", { class: "card", id }, el("div", { class: "label" }, label), el("div", { class: "value" }, value));
}

function isoDate(ms) {
  return new Date(ms).toISOString().slice(0, 10);
}

function dayStart(dateText) {
  const ms = Date.parse(dateText + "T00:00:00Z");
  if (Number.isNaN(ms)) throw new Error(`"${dateText}" is not a date; write YYYY-MM-DD`);
  return ms;
}

function hashParams() {
  const [page, query] = location.hash.slice(1).split("?");
  return { page: page || "overview", params: new URLSearchParams(query || "") };
}

function setParams(page, values) {
  const p = new URLSearchParams(values);
  location.hash = `${page}?${p}`;
}

/** The day the page reports "as of": `asof` in the address, else today (UTC). */
function asOf(params) {
  return params.get("asof") || isoDate(Date.now());
}

// ---- API -----------------------------------------------------------------------------------

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(path, options = {}) {
  const headers = { Authorization: "Bearer " + token(), ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    signOut("That token was refused (401). Sign in with a token of this counter (viewer, requester, approver, admin, or your personal token).");
    throw new Error("unauthorized");
  }
  const text = await response.text();
  if (!response.ok) {
    let message = text;
    try { message = JSON.parse(text).error.message; } catch (_) { /* not JSON */ }
    throw new Error(`${response.status}: ${message}`);
  }
  return options.raw ? text : JSON.parse(text);
}

function spend(groupBy, from, to) {
  const q = new URLSearchParams({ group_by: groupBy.join(","), from, to });
  return api(`/admin/reports/spend?${q}`);
}

// ---- pages ---------------------------------------------------------------------------------

/** A bar per budget: spend, with the soft line, the limit and the hard limit drawn across. */
function budgetBars(budgets) {
  const rowH = 26, width = 560, left = 170;
  const scale = Math.max(1, ...budgets.map((b) => Math.max(b.hard_limit_micros, b.spent_micros)));
  const x = (m) => left + ((width - left - 10) * m) / scale;
  const chart = svg("svg", { width, height: budgets.length * rowH + 10, id: "budget-bars", role: "img" });
  budgets.forEach((b, i) => {
    const y = 5 + i * rowH;
    const color = { ok: "var(--ok)", soft: "var(--soft)", hard: "var(--hard)" }[b.status] || "#888";
    const soft = Math.floor((b.effective_limit_micros * Math.min(...(b.budget.soft_thresholds_pct.length ? b.budget.soft_thresholds_pct : [100]))) / 100);
    chart.append(
      svg("text", { x: 0, y: y + 15 }, b.budget.id),
      svg("rect", { x: left, y: y + 3, width: Math.max(0, x(b.spent_micros) - left), height: rowH - 10, fill: color, opacity: 0.8 }),
      svg("line", { x1: x(soft), x2: x(soft), y1: y, y2: y + rowH - 4, stroke: "var(--soft)", "stroke-dasharray": "3 2" }),
      svg("line", { x1: x(b.effective_limit_micros), x2: x(b.effective_limit_micros), y1: y, y2: y + rowH - 4, stroke: "#333" }),
      svg("line", { x1: x(b.hard_limit_micros), x2: x(b.hard_limit_micros), y1: y, y2: y + rowH - 4, stroke: "var(--hard)", "stroke-width": 2 }),
    );
  });
  return el("div", {}, chart, el("div", { class: "legend" },
    el("span", {}, "bar: spent (green ok, orange soft, red hard)"), el("span", {}, "dashed: soft line"), el("span", {}, "black: limit"), el("span", {}, "red: hard limit")));
}

async function overview(params) {
  const day = asOf(params);
  const start = dayStart(day), end = start + DAY_MS;
  const weekday = (new Date(start).getUTCDay() + 6) % 7; // Monday = 0
  const d = new Date(start);
  const periods = [
    ["today", start],
    ["week", start - weekday * DAY_MS],
    ["month", Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1)],
  ];
  const answers = await Promise.all(periods.map(([, from]) => spend([], from, end)));
  // Templates are listed apart: they charge nobody (the budgets they made are in `budgets`).
  const { budgets, templates = [] } = await api("/admin/budgets");
  const rows = periods.map(([name, from], i) => [name, isoDate(from), isoDate(end), answers[i].total.requests, answers[i].total.cost_usd]);
  const budgetRows = budgets.map((b) => {
    const softPct = b.budget.soft_thresholds_pct.length ? Math.min(...b.budget.soft_thresholds_pct) : 100;
    return [b.budget.id, b.budget.scope, b.budget.window, usd(b.spent_micros), usd(Math.floor((b.effective_limit_micros * softPct) / 100)),
      usd(b.effective_limit_micros), usd(b.hard_limit_micros), b.status];
  });
  return [
    el("h1", {}, `Overview — as of ${day} (UTC)`),
    el("div", { class: "cards" }, rows.map(([name, , , , cost]) => card(`spend-${name}`, `Spend ${name === "today" ? "today" : "this " + name}`, "$" + cost))),
    table("overview-spend", "Spend by period (UTC, up to the end of the day)", ["period", "from", "to", "requests", "cost_usd"], rows, ["requests", "cost_usd"]),
    el("h2", {}, "Budgets: current window against the soft line, the limit and the hard limit"),
    budgetBars(budgets),
    table("overview-budgets", "Budgets", ["budget", "scope", "window", "spent_usd", "soft_line_usd", "limit_usd", "hard_limit_usd", "status"], budgetRows,
      ["spent_usd", "soft_line_usd", "limit_usd", "hard_limit_usd"]),
    ...(templates.length ? [table("overview-templates", "Templates (a budget for every new scope of their kind)", ["template", "scope", "window", "limit", "budgets_made"],
      templates.map((t) => [t.template.id, t.template.scope, t.template.window, t.template.limit, t.budgets_made]), ["budgets_made"])] : []),
  ];
}

const KINDS = [["team", "Teams"], ["cost_center", "Cost centers"], ["user", "Users"], ["workflow", "Workflows (team / use case)"], ["org", "Organisations"], ["key", "Keys"], ["task", "Tasks"]];

async function budgetsPage() {
  const rows = (await api("/admin/reports/utilization")).budgets;
  const header = ["budget", "scope", "window", "mode", "spent_usd", "limit_usd", "hard_limit_usd", "utilization_pct", "status", "leased_usd", "resets_at",
    "projected_end_usd", "hard_limit_day"];
  const out = [el("h1", {}, "Budgets")];
  const leased = rows.reduce((s, b) => s + b.leased_micros, 0);
  out.push(el("div", { class: "cards" },
    card("budgets-count", "Budgets", rows.length),
    card("budgets-hard", "At the hard limit", rows.filter((b) => b.status === "hard").length),
    card("budgets-soft", "Past a soft threshold", rows.filter((b) => b.status === "soft").length),
    card("budgets-leased", "Leases outstanding", "$" + usd(leased)),
    card("budgets-projected-over", "Projected over the hard limit", rows.filter((b) => b.forecast && b.forecast.projected_to_exceed).length)));
  for (const [kind, title] of KINDS) {
    const of = rows.filter((b) => b.scope.split(":")[0] === kind);
    if (!of.length) continue;
    out.push(table(`budgets-${kind}`, title, header, of.map((b) => [
      b.budget, b.scope, b.window, b.mode, usd(b.spent_micros), usd(b.limit_micros), usd(b.hard_limit_micros),
      (b.utilization * 100).toFixed(1), b.status, usd(b.leased_micros), b.resets_at ? new Date(b.resets_at * 1000).toISOString().replace(".000", "") : "",
      b.forecast && b.forecast.projected_end_micros !== null ? usd(b.forecast.projected_end_micros) : "",
      b.forecast && b.forecast.projected_to_exceed ? b.forecast.hard_limit_day : "",
    ]), ["spent_usd", "limit_usd", "hard_limit_usd", "utilization_pct", "leased_usd", "projected_end_usd"]));
  }
  out.push(el("p", { class: "muted" }, "projected_end_usd: spend at the window's end at the current pace (the trailing week, shaped by the weekday profile of the last 4 weeks); ",
    "hard_limit_day: the day the hard limit is reached at that pace, when it is before the window ends (docs/counter.md, Forecasts)."));
  return out;
}

function periodForm(page, params, extra = []) {
  const day = asOf(params);
  const from = params.get("from") || isoDate(dayStart(day) - 29 * DAY_MS);
  const to = params.get("to") || isoDate(dayStart(day) + DAY_MS);
  const form = el("form", { class: "inline", id: `${page}-form` },
    el("label", {}, "from", el("input", { name: "from", value: from })),
    el("label", {}, "to (exclusive)", el("input", { name: "to", value: to })),
    extra,
    el("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    setParams(page, Object.fromEntries(new FormData(form)));
  });
  return { form, from, to };
}

/** Stacked bars: one per x key, segments by series, heights in micro-dollars. */
function stackedBars(id, xs, series, value) {
  const width = Math.max(420, xs.length * 26 + 80), height = 240, left = 70, bottom = 40;
  const totals = xs.map((x) => series.reduce((s, k) => s + (value(x, k) || 0), 0));
  const max = Math.max(1, ...totals);
  const chart = svg("svg", { width, height, id, role: "img" });
  const bw = Math.max(6, (width - left - 10) / Math.max(1, xs.length) - 4);
  chart.append(svg("text", { x: 0, y: 12 }, "$" + usd(max)), svg("text", { x: 0, y: height - bottom }, "$0"));
  xs.forEach((x, i) => {
    let y = height - bottom;
    series.forEach((k, j) => {
      const v = value(x, k) || 0;
      const h = ((height - bottom - 10) * v) / max;
      y -= h;
      chart.append(svg("rect", { x: left + i * (bw + 4), y, width: bw, height: h, fill: COLORS[j % COLORS.length] },
        svg("title", {}, `${x} ${k}: $${usd(v)}`)));
    });
    if (xs.length <= 16 || i % Math.ceil(xs.length / 16) === 0) {
      chart.append(svg("text", { x: left + i * (bw + 4), y: height - bottom + 14, transform: `rotate(35 ${left + i * (bw + 4)} ${height - bottom + 14})` }, x.slice(5)));
    }
  });
  const legend = el("div", { class: "legend" }, series.map((k, j) => el("span", {}, el("i", { style: `background:${COLORS[j % COLORS.length]}` }), k || "(none)")));
  return el("div", {}, chart, legend);
}

async function spendPage(params) {
  const dim = params.get("dim") || "team";
  const select = el("select", { name: "dim" }, ["team", "use_case", "model", "cost_center", "user"].map((d) => el("option", d === dim ? { selected: "" } : {}, d)));
  const { form, from, to } = periodForm("spend", params, [el("label", {}, "by", select)]);
  const answer = await spend(["day", dim], from, to);
  const days = [...new Set(answer.rows.map((r) => r.day))].sort();
  const keys = [...new Set(answer.rows.map((r) => r[dim]))].sort();
  const cell = new Map(answer.rows.map((r) => [r.day + "\u0000" + r[dim], r.cost_micros]));
  return [
    el("h1", {}, `Spend over time by ${dim}`), form,
    el("div", { class: "cards" }, card("spend-total", "Total", "$" + answer.total.cost_usd), card("spend-requests", "Requests", answer.total.requests)),
    stackedBars("spend-chart", days, keys, (d, k) => cell.get(d + "\u0000" + k)),
    table("spend-rows", "Spend by day", ["day", dim, "requests", "cost_usd", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"],
      answer.rows.map((r) => [r.day, r[dim], r.requests, r.cost_usd, r.input_tokens, r.output_tokens, r.cache_read_tokens, r.cache_write_tokens]),
      ["requests", "cost_usd", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"]),
  ];
}

async function mixPage(params) {
  const { form, from, to } = periodForm("mix", params);
  const answer = await spend(["use_case", "model"], from, to);
  const useCases = [...new Set(answer.rows.map((r) => r.use_case))].sort();
  const models = [...new Set(answer.rows.map((r) => r.model))].sort();
  const byUseCase = new Map(useCases.map((u) => [u, answer.rows.filter((r) => r.use_case === u).reduce((s, r) => s + r.cost_micros, 0)]));
  const width = 620, left = 130, rowH = 24;
  const chart = svg("svg", { width, height: useCases.length * rowH + 10, id: "mix-chart", role: "img" });
  useCases.forEach((u, i) => {
    let x = left;
    const total = byUseCase.get(u) || 1;
    chart.append(svg("text", { x: 0, y: 5 + i * rowH + 14 }, u || "(none)"));
    models.forEach((m, j) => {
      const row = answer.rows.find((r) => r.use_case === u && r.model === m);
      if (!row) return;
      const w = ((width - left - 10) * row.cost_micros) / total;
      chart.append(svg("rect", { x, y: 5 + i * rowH, width: w, height: rowH - 6, fill: COLORS[j % COLORS.length] }, svg("title", {}, `${u} ${m}: $${row.cost_usd}`)));
      x += w;
    });
  });
  const legend = el("div", { class: "legend" }, models.map((m, j) => el("span", {}, el("i", { style: `background:${COLORS[j % COLORS.length]}` }), m)));
  return [
    el("h1", {}, "Model mix by use case (share of cost)"), form, chart, legend,
    table("mix-rows", "Cost by use case and model", ["use_case", "model", "requests", "cost_usd", "share_of_use_case_pct"],
      answer.rows.map((r) => [r.use_case, r.model, r.requests, r.cost_usd, byUseCase.get(r.use_case) ? ((100 * r.cost_micros) / byUseCase.get(r.use_case)).toFixed(1) : "0.0"]),
      ["requests", "cost_usd", "share_of_use_case_pct"]),
  ];
}

async function exemptionsPage() {
  const list = (await api("/admin/exemptions")).exemptions;
  const message = el("p", { id: "exemption-message", class: "error" });
  const form = el("form", { class: "inline", id: "exemption-form" },
    el("label", {}, "scope", el("input", { name: "scope", placeholder: "team:platform", required: "" })),
    el("label", {}, "amount ($)", el("input", { name: "amount", placeholder: "250", required: "" })),
    el("label", {}, "ends at", el("input", { name: "ends_at", placeholder: "YYYY-MM-DD", required: "" })),
    el("label", {}, "reason", el("input", { name: "reason", required: "" })),
    el("label", {}, "approver", el("input", { name: "approver", required: "" })),
    el("button", { type: "submit" }, "Add exemption"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await api("/admin/exemptions", { method: "POST", body: JSON.stringify(Object.fromEntries(new FormData(form))), headers: { "Content-Type": "application/json" } });
      render();
    } catch (err) { message.textContent = err.message; }
  });
  const t = table("exemptions", "Exemptions", ["id", "scope", "amount_usd", "starts_at", "ends_at", "reason", "approver", "created_by", "active"],
    list.map((x) => [x.id, x.scope, x.amount, new Date(x.starts_at_ms).toISOString(), new Date(x.ends_at_ms).toISOString(), x.reason, x.approver, x.created_by, String(x.active)]),
    ["amount_usd"]);
  // A revoke button on each active row (the CSV keeps the cells above).
  t.querySelectorAll("tbody tr").forEach((tr, i) => {
    const x = list[i];
    const td = el("td");
    if (x.active) {
      td.append(el("button", { "data-revoke": x.id, on: { click: async () => {
        try { await api(`/admin/exemptions/${x.id}`, { method: "DELETE" }); render(); } catch (err) { message.textContent = err.message; }
      } } }, "Revoke"));
    }
    tr.append(td);
  });
  return [el("h1", {}, "Exemptions"), el("p", { class: "muted" },
    "An exemption adds its amount to the limit and hard limit of every budget on its scope until it ends. Adding one here needs the admin role; anyone with the requester role can ask for one on the Requests page, and someone else with the approver role decides."),
    form, message, t];
}

// ---- governance pages: workflows, exemption requests, events, outcomes, the monthly review ------

/** A time as the counter prints it (`format_time_ms`): 2026-11-18T10:00:00Z; "" for none. */
function isoTime(ms) {
  return ms === null || ms === undefined ? "" : new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** Micro-dollars or nothing (a null cost per outcome prints empty, as in the counter's CSV). */
function usdOrEmpty(micros) {
  return micros === null || micros === undefined ? "" : usd(micros);
}

/** A percentage the counter already rounded to one decimal, printed as Rust's `{:.1}` does (-0.0 too). */
function pct1(p) {
  return p === null || p === undefined ? "" : Object.is(p, -0) ? "-0.0" : Number(p).toFixed(1);
}

function text(v) {
  return v === null || v === undefined ? "" : typeof v === "string" ? v : String(v);
}

/** A form whose fields become the page's address (empty fields left out). */
function filterForm(page, id, fields, button = "Show") {
  const form = el("form", { class: "inline", id }, fields, el("button", { type: "submit" }, button));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    setParams(page, Object.fromEntries([...new FormData(form)].filter(([, v]) => v !== "")));
  });
  return form;
}

function select(name, options, current) {
  return el("select", { name }, options.map(([value, label]) => el("option", value === current ? { value, selected: "" } : { value }, label)));
}

/** A message line for an action's result: the server's error (401/403/409 ...) as it answered. */
function messageLine(id) {
  return el("p", { id, class: "error", role: "status" });
}

async function workflowsPage() {
  const list = (await api("/admin/workflows")).workflows;
  // The first eight columns are `tollgate-counter workflows list`'s.
  const header = ["id", "team", "owner", "class", "weekly_cap", "monthly_cap", "review_date", "overdue",
    "default_tier", "escalation_tier", "cap_mode", "outcome_kind", "scope", "cap_budgets", "exception_path"];
  const rows = list.map((w) => [w.id, w.team, w.owner, w.class, text(w.weekly_cap), text(w.monthly_cap), text(w.review_date), String(w.overdue),
    text(w.default_tier), text(w.escalation_tier), w.cap_mode || "enforce", w.success_metric ? w.success_metric.outcome_kind : "", w.scope,
    (w.cap_budgets || []).join(";"), text(w.exception_path)]);
  return [
    el("h1", {}, "Workflows"),
    el("p", { class: "muted" }, "Every AI workflow with its owner, class, tiers, caps (budgets on workflow:<team>/<id>) and review date; overdue once the review date has passed. ",
      "Workflows are changed with an admin token (PUT /admin/workflows/{id} or tollgate-counter workflows set)."),
    el("div", { class: "cards" },
      card("workflows-count", "Workflows", list.length),
      card("workflows-overdue", "Review overdue", list.filter((w) => w.overdue).length),
      card("workflows-uncapped", "Without a monthly cap", list.filter((w) => !w.monthly_cap).length)),
    table("workflows", "Workflows", header, rows),
  ];
}

const REQUEST_HEADER = ["id", "scope", "amount_usd", "starts_at", "ends_at", "reason", "use_case", "requested_by", "requested_at", "state",
  "decided_by", "decided_at", "note", "exemption_id"];
const AUDIT_HEADER = ["seq", "at", "actor", "action", "subject", "state", "note", "before", "after"];

async function requestAudit(chosen) {
  if (!chosen) {
    // Every exemption request and exemption change among the latest 1000 audit entries.
    const entries = (await api("/admin/audit?limit=1000")).entries;
    return entries.filter((e) => e.action.startsWith("exemption_request.") || e.action.startsWith("exemption."));
  }
  const subjects = [`exemption_request:${chosen.id}`];
  if (chosen.exemption_id !== null && chosen.exemption_id !== undefined) subjects.push(`exemption:${chosen.exemption_id}`);
  const answers = await Promise.all(subjects.map((s) => api(`/admin/audit?${new URLSearchParams({ subject: s, limit: "1000" })}`)));
  return answers.flatMap((a) => a.entries).sort((a, b) => b.seq - a.seq);
}

async function requestsPage(params) {
  const state = params.get("state") || "";
  const auditId = params.get("audit") || "";
  const all = (await api("/admin/exemption-requests")).requests;
  const list = (await api(`/admin/exemption-requests${state ? "?" + new URLSearchParams({ state }) : ""}`)).requests;
  const message = messageLine("request-message");
  const form = el("form", { class: "inline", id: "request-form" },
    el("label", {}, "scope", el("input", { name: "scope", placeholder: "team:platform", required: "" })),
    el("label", {}, "amount ($)", el("input", { name: "amount", placeholder: "250", required: "" })),
    el("label", {}, "window start (default now)", el("input", { name: "starts_at", placeholder: "YYYY-MM-DD" })),
    el("label", {}, "window end", el("input", { name: "ends_at", placeholder: "YYYY-MM-DD", required: "" })),
    el("label", {}, "reason", el("input", { name: "reason", required: "" })),
    el("label", {}, "use case (workflow)", el("input", { name: "use_case", placeholder: "optional" })),
    el("button", { type: "submit" }, "File request"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = Object.fromEntries([...new FormData(form)].filter(([, v]) => v !== ""));
    try {
      const filed = await api("/admin/exemption-requests", { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
      setParams("requests", { audit: String(filed.id) });
    } catch (err) { message.textContent = err.message; }
  });
  const decide = async (id, verdict, note) => {
    try {
      await api(`/admin/exemption-requests/${id}/${verdict}`, note ? { method: "POST", body: JSON.stringify({ note }), headers: { "Content-Type": "application/json" } } : { method: "POST" });
      setParams("requests", { ...(state ? { state } : {}), audit: String(id) });
    } catch (err) { message.textContent = err.message; }
  };
  const t = table("requests", state ? `Exemption requests (${state})` : "Exemption requests", REQUEST_HEADER, list.map((r) => [
    r.id, r.scope, r.amount, isoTime(r.starts_at_ms), isoTime(r.ends_at_ms), r.reason, text(r.use_case), r.requested_by, isoTime(r.requested_at_ms), r.state,
    text(r.decided_by), isoTime(r.decided_at_ms), text(r.note), text(r.exemption_id)]), ["amount_usd"]);
  // Decision controls and the audit link on each row (the CSV keeps the cells above).
  t.querySelectorAll("tbody tr").forEach((tr, i) => {
    const r = list[i];
    const td = el("td", { class: "actions" });
    if (r.state === "pending") {
      const note = el("input", { "data-note": r.id, placeholder: "note", size: 10 });
      td.append(note,
        el("button", { "data-approve": r.id, on: { click: () => decide(r.id, "approve", note.value) } }, "Approve"),
        el("button", { "data-reject": r.id, on: { click: () => decide(r.id, "reject", note.value) } }, "Reject"));
    }
    td.append(el("a", { href: `#requests?${new URLSearchParams({ ...(state ? { state } : {}), audit: String(r.id) })}`, "data-audit": r.id }, "audit"));
    tr.append(td);
  });
  const chosen = auditId ? all.find((r) => String(r.id) === auditId) : null;
  if (auditId && !chosen) throw new Error(`no exemption request ${auditId}`);
  const entries = await requestAudit(chosen);
  const json = (v) => (v === null || v === undefined ? "" : JSON.stringify(v));
  const audit = table("request-audit", chosen ? `Audit trail of request ${chosen.id}${chosen.exemption_id !== null && chosen.exemption_id !== undefined ? ` and exemption ${chosen.exemption_id}` : ""}` : "Audit trail of exemption requests and exemptions (latest first)",
    AUDIT_HEADER, entries.map((e) => [e.seq, isoTime(e.at_ms), e.actor, e.action, e.subject, text(e.after && e.after.state), text(e.after && e.after.note), json(e.before), json(e.after)]));
  audit.querySelector("table").classList.add("audit");
  return [
    el("h1", {}, "Exemption requests"),
    el("p", { class: "muted" }, "A requester asks for a temporary increase; someone else with the approver role approves or rejects it; only an approval creates the exemption. ",
      "The counter enforces the roles and that the approver is not the requester: a refusal shows here as it answered."),
    el("div", { class: "cards" },
      card("requests-pending", "Pending", all.filter((r) => r.state === "pending").length),
      card("requests-approved", "Approved", all.filter((r) => r.state === "approved").length),
      card("requests-rejected", "Rejected", all.filter((r) => r.state === "rejected").length)),
    el("h2", {}, "File a request (requester role or above)"), form, message,
    filterForm("requests", "requests-filter", [el("label", {}, "state", select("state", [["", "all"], ["pending", "pending"], ["approved", "approved"], ["rejected", "rejected"]], state))]),
    t, audit,
  ];
}

const EVENT_KINDS = ["threshold", "hard_stop", "anomaly", "review_overdue", "projected_overrun"];

async function eventsPage(params) {
  const query = {};
  for (const k of ["kind", "scope", "limit"]) if (params.get(k)) query[k] = params.get(k);
  const form = filterForm("events", "events-form", [
    el("label", {}, "kind", select("kind", [["", "all"], ...EVENT_KINDS.map((k) => [k, k])], query.kind || "")),
    el("label", {}, "scope", el("input", { name: "scope", value: query.scope || "", placeholder: "team:platform" })),
    el("label", {}, "limit", el("input", { name: "limit", value: query.limit || "", placeholder: "100", size: 6 }))]);
  const rows = (await api(`/admin/events?${new URLSearchParams(query)}`)).events;
  const delivered = (r) => r.deliveries.filter((d) => d.delivered_at_ms !== null && d.delivered_at_ms !== undefined).length;
  const anomalies = rows.filter((r) => r.kind === "anomaly");
  const out = [
    el("h1", {}, "Events"),
    el("p", { class: "muted" }, "The counter's events log, newest first: thresholds, hard stops, spend anomalies and overdue workflow reviews, with the state of each webhook delivery."),
    form,
    el("div", { class: "cards" },
      card("events-count", "Events shown", rows.length),
      card("events-anomalies", "Anomalies", anomalies.length),
      card("events-pending", "Deliveries pending", rows.reduce((s, r) => s + r.deliveries.length - delivered(r), 0))),
    table("events", "Events", ["seq", "at", "key", "kind", "scope", "subject", "window", "title", "delivered", "pending"],
      rows.map((r) => [r.seq, isoTime(r.at_ms), r.key, r.kind, r.scope, text(r.subject), r.window, r.title, delivered(r), r.deliveries.length - delivered(r)]),
      ["delivered", "pending"], { path: "/admin/events", query }),
    table("anomalies", "Anomalies: today against the trailing 7-day average", ["seq", "scope", "day", "today_usd", "average_usd", "trailing_7d_usd", "factor_pct", "min_spend_usd"],
      anomalies.map((r) => [r.seq, r.scope, r.details.day, usd(r.details.today_micros), usd(r.details.average_micros), usd(r.details.trailing_7d_micros),
        r.details.factor_pct, usd(r.details.min_spend_micros)]),
      ["today_usd", "average_usd", "trailing_7d_usd", "factor_pct", "min_spend_usd"]),
  ];
  for (const r of anomalies) {
    out.push(table(`anomaly-${r.seq}`, `Breakdown of anomaly ${r.seq} (${r.scope}, ${r.details.day}): that day's spend by model and use case`,
      ["model", "use_case", "requests", "cost_usd"], (r.details.breakdown || []).map((b) => [b.model, b.use_case, b.requests, usd(b.cost_micros)]), ["requests", "cost_usd"]));
  }
  out.push(table("deliveries", "Webhook deliveries", ["seq", "key", "target", "state", "attempts", "delivered_at", "next_at", "last_error"],
    rows.flatMap((r) => r.deliveries.map((d) => [r.seq, r.key, d.target, d.delivered_at_ms !== null && d.delivered_at_ms !== undefined ? "delivered" : "pending",
      d.attempts, isoTime(d.delivered_at_ms), d.delivered_at_ms !== null && d.delivered_at_ms !== undefined ? "" : isoTime(d.next_at_ms), text(d.last_error)])),
    ["attempts"]));
  return out;
}

const OUTCOME_GROUPINGS = ["team", "use_case", "month", "team,use_case", "use_case,month", "team,month", "team,use_case,month"];

async function outcomesPage(params) {
  const groupBy = params.get("group_by") || "team,use_case";
  const kind = params.get("kind") || "";
  const period = params.get("period") || "month";
  const { form, from, to } = periodForm("outcomes", params, [
    el("label", {}, "group by", select("group_by", OUTCOME_GROUPINGS.map((g) => [g, g]), groupBy)),
    el("label", {}, "outcome kind", el("input", { name: "kind", value: kind, placeholder: "all kinds", size: 14 })),
    el("label", {}, "trend by", select("period", [["month", "month"], ["week", "week"]], period))]);
  const withKind = (q) => (kind ? { ...q, kind } : q);
  const cpoQuery = withKind({ group_by: groupBy, from, to });
  const trendQuery = withKind({ period, from, to });
  const mixQuery = { from, to };
  const listQuery = withKind({ from, to });
  const get = (path, q) => api(`${path}?${new URLSearchParams(q)}`);
  const [cpo, trend, mix, list] = await Promise.all([
    get("/admin/reports/outcomes", cpoQuery), get("/admin/reports/trend", trendQuery), get("/admin/reports/model-mix", mixQuery), get("/admin/outcomes", listQuery)]);
  const dims = cpo.group_by;
  const spend = cpo.rows.reduce((s, r) => s + r.spend_micros, 0);
  const count = cpo.rows.reduce((s, r) => s + r.outcomes, 0);
  return [
    el("h1", {}, "Cost per outcome"),
    el("p", { class: "muted" }, "Ledger spend (by each request's end) against recorded outcomes (merged PRs, resolved tickets, ...; by their time); cost per outcome is spend ÷ outcomes rounded down, empty without an outcome."),
    form,
    el("div", { class: "cards" },
      card("outcomes-spend", "Spend", "$" + usd(spend)),
      card("outcomes-count", kind ? `Outcomes (${kind})` : "Outcomes", count),
      card("outcomes-cpo", "Cost per outcome", count ? "$" + usd(Math.floor(spend / count)) : "—")),
    table("outcomes-cost", `Cost per outcome by ${dims.join(", ")}`, [...dims, "spend_usd", "outcomes", "cost_per_outcome_usd"],
      cpo.rows.map((r) => [...dims.map((d) => r[d]), r.spend_usd, r.outcomes, usdOrEmpty(r.cost_per_outcome_micros)]),
      ["spend_usd", "outcomes", "cost_per_outcome_usd"], { path: "/admin/reports/outcomes", query: cpoQuery }),
    table("outcomes-trend", `Trend by ${trend.period}`, ["period", "spend_usd", "outcomes", "cost_per_outcome_usd", "spend_change_pct", "outcomes_change_pct"],
      trend.rows.map((r) => [r.period, usd(r.spend_micros), r.outcomes, usdOrEmpty(r.cost_per_outcome_micros), pct1(r.spend_change_pct), pct1(r.outcomes_change_pct)]),
      ["spend_usd", "outcomes", "cost_per_outcome_usd", "spend_change_pct", "outcomes_change_pct"], { path: "/admin/reports/trend", query: trendQuery }),
    table("outcomes-mix", "Model mix by use case (share of spend)", ["use_case", "model", "spend_usd", "share_pct"],
      mix.use_cases.flatMap((u) => u.models.map((m) => [u.use_case, m.model, usd(m.spend_micros), pct1(m.share_pct)])),
      ["spend_usd", "share_pct"], { path: "/admin/reports/model-mix", query: mixQuery }),
    table("outcomes-list", "Outcomes recorded", ["id", "kind", "team", "user", "use_case", "task_id", "at", "url", "source"],
      list.outcomes.map((o) => [o.id, o.kind, text(o.team), text(o.user), text(o.use_case), text(o.task_id), isoTime(o.at_ms), text(o.url), o.source]),
      [], { path: "/admin/outcomes", query: listQuery }),
  ];
}

/** The month before the one holding `day` (YYYY-MM-DD): the month a review usually looks at. */
function previousMonth(day) {
  const d = new Date(dayStart(day));
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() - 1, 1)).toISOString().slice(0, 7);
}

const REVIEW_HEADER = ["workflow", "team", "owner", "class", "weekly_cap_usd", "monthly_cap_usd", "spend_usd", "previous_spend_usd", "weekly_spend",
  "outcome_kind", "outcomes", "previous_outcomes", "cost_per_outcome_usd", "previous_cost_per_outcome_usd", "cost_per_outcome_change_pct", "top_models",
  "exemptions", "exemption_usd", "anomalies", "review_date", "overdue", "action", "rule", "reason"];

async function reviewPage(params) {
  const month = params.get("month") || previousMonth(asOf(params));
  const form = filterForm("review", "review-form", [el("label", {}, "month", el("input", { name: "month", value: month, placeholder: "YYYY-MM", size: 8 }))]);
  const v = await api(`/admin/reports/review?${new URLSearchParams({ month })}`);
  const rows = v.workflows.map((r) => [r.workflow, r.team, r.owner, r.class, usdOrEmpty(r.weekly_cap_micros), usdOrEmpty(r.monthly_cap_micros),
    usd(r.spend_micros), usd(r.previous_spend_micros), r.weekly.map((w) => `${w.week}:${usd(w.spend_micros)}`).join(";"),
    text(r.outcome_kind), r.outcomes, r.previous_outcomes, usdOrEmpty(r.cost_per_outcome_micros), usdOrEmpty(r.previous_cost_per_outcome_micros),
    pct1(r.cost_per_outcome_change_pct), r.top_models.map((m) => `${m.model}:${pct1(m.share_pct)}%`).join(";"),
    r.exemptions.length, usd(r.exemptions.reduce((s, e) => s + e.amount_micros, 0)), r.anomalies.length, text(r.review_date), String(r.overdue), r.action, r.rule, r.reason]);
  const actions = ["keep", "cap", "reroute", "retire"];
  return [
    el("h1", {}, `Monthly review — ${v.month}`),
    el("p", { class: "muted" }, "One row per workflow: spend against the month before, outcomes of its success metric, cost per outcome, top models, exemptions and anomalies in the month, ",
      "and the suggested action with the rule that produced it (retire, cap, reroute or keep; docs/counter.md lists the rules)."),
    form,
    el("div", { class: "cards" }, actions.map((a) => card(`review-${a}`, a, v.workflows.filter((r) => r.action === a).length))),
    table("review-actions", "Suggested action per workflow", ["workflow", "team", "owner", "action", "rule", "reason"],
      v.workflows.map((r) => [r.workflow, r.team, r.owner, r.action, r.rule, r.reason])),
    table("review", `Review of ${v.month}: every figure`, REVIEW_HEADER, rows,
      ["weekly_cap_usd", "monthly_cap_usd", "spend_usd", "previous_spend_usd", "outcomes", "previous_outcomes", "cost_per_outcome_usd", "previous_cost_per_outcome_usd",
        "cost_per_outcome_change_pct", "exemptions", "exemption_usd", "anomalies"],
      { path: "/admin/reports/review", query: { month } }),
  ];
}

let simulatorModule = null;

async function loadSimulator() {
  if (!simulatorModule) {
    let mod;
    try {
      mod = await import("./sim/tollgate_simulator.js");
    } catch (err) {
      throw new Error("this counter was built without the simulator's browser build: run `make simulator`, then rebuild the counter (" + err.message + ")");
    }
    await mod.default({ module_or_path: "./sim/tollgate_simulator_bg.wasm" });
    simulatorModule = mod;
  }
  return simulatorModule;
}

const EXAMPLE_ROUTING = JSON.stringify({ rules: [
  { name: "autocomplete-to-mini", match: { use_case: "autocomplete" }, set_model: "gpt-4o-mini" },
] }, null, 2);

async function simulatorPage(params) {
  const routing = el("textarea", { id: "sim-routing", spellcheck: "false" }, sessionStorage.getItem("tollgate.sim.routing") || EXAMPLE_ROUTING);
  const pricing = el("textarea", { id: "sim-pricing", spellcheck: "false", placeholder: "optional: a pricing section, e.g. {\"models\": {...}}" }, sessionStorage.getItem("tollgate.sim.pricing") || "");
  const { form, from, to } = periodForm("simulator", params);
  form.querySelector("button").textContent = "Set period";
  const run = el("button", { id: "sim-run" }, "Run the simulation");
  const status = el("p", { id: "sim-status", class: "muted" });
  const output = el("div", { id: "sim-output" });
  run.addEventListener("click", async () => {
    sessionStorage.setItem("tollgate.sim.routing", routing.value);
    sessionStorage.setItem("tollgate.sim.pricing", pricing.value);
    output.replaceChildren();
    status.className = "muted";
    status.textContent = "Fetching the ledger…";
    try {
      const sim = await loadSimulator();
      const q = new URLSearchParams({ from, to, limit: "1000000" });
      const [ledger, budgets] = await Promise.all([api(`/admin/reports/requests?${q}`, { raw: true }), api("/admin/budgets", { raw: true })]);
      const started = performance.now();
      const answer = sim.simulate(ledger, routing.value, pricing.value, budgets);
      const elapsed = performance.now() - started;
      const v = JSON.parse(answer);
      const truncated = ledger.includes('"truncated":true');
      status.textContent = `Replayed ${v.requests} requests in ${elapsed.toFixed(0)} ms.` + (truncated ? " The period holds more than 1,000,000 requests: shorten it." : "");
      status.dataset.elapsedMs = elapsed.toFixed(1);
      output.append(
        el("div", { class: "cards" },
          card("sim-billed", "As billed", "$" + v.billed_usd),
          card("sim-candidate", "With the candidate", "$" + v.candidate_usd),
          card("sim-rerouted", "Rerouted", v.rerouted),
          card("sim-denied", "Denied", v.denied)),
        table("sim-groups", "Per team and use case", ["team", "use_case", "requests", "billed_usd", "candidate_usd", "rerouted", "denied", "unpriced"],
          v.groups.map((g) => [g.team, g.use_case, g.requests, usd(g.billed_micros), usd(g.candidate_micros), g.rerouted, g.denied, g.unpriced]),
          ["requests", "billed_usd", "candidate_usd", "rerouted", "denied", "unpriced"]),
        table("sim-budgets", "Budgets: the worst window of the period", ["budget", "scope", "window", "limit_usd", "hard_limit_usd", "billed_peak_usd", "candidate_peak_usd",
          "billed_windows_over_hard", "candidate_windows_over_limit", "candidate_windows_over_hard"],
          v.budgets.map((b) => [b.id, b.scope, b.window, usd(b.limit_micros), usd(b.hard_limit_micros), usd(b.billed_peak_micros), usd(b.candidate_peak_micros),
            b.billed_windows_over_hard, b.candidate_windows_over_limit, b.candidate_windows_over_hard]),
          ["limit_usd", "hard_limit_usd", "billed_peak_usd", "candidate_peak_usd"]),
        el("pre", { id: "sim-json", hidden: "" }, answer));
    } catch (err) {
      status.className = "error";
      status.textContent = String(err.message || err);
    }
  });
  return [
    el("h1", {}, "Policy simulator"),
    el("p", { class: "muted" }, "Replays the ledger's requests of the period through a candidate routing table with the filter's own routing and pricing code (compiled to WebAssembly). ",
      "It assumes a rerouted request uses the same tokens; rules on budget utilization never match; see docs/console.md."),
    form,
    el("div", { class: "two" },
      el("label", {}, "Candidate routing (the filter config's routing section)", routing),
      el("label", {}, "Prices (optional pricing section; default: bundled prices)", pricing)),
    el("p", {}, run), status, output,
  ];
}

async function mePage(params) {
  // A personal token (scoped to one user or key) sees its own principal only: the counter decides
  // whose rows these are (GET /reports/principal), not this page.
  const personal = whoami && whoami.kind === "personal";
  const own = personal ? whoami.scope.split(":") : null;
  const kind = personal ? own[0] : params.get("kind") || "user";
  const who = personal ? own.slice(1).join(":") : params.get("who") || "";
  const extra = personal ? [] : [
    el("label", {}, "kind", el("select", { name: "kind" }, ["user", "key"].map((k) => el("option", k === kind ? { selected: "" } : {}, k)))),
    el("label", {}, "user or key id", el("input", { name: "who", value: who })),
  ];
  const { form, from, to } = periodForm("me", params, extra);
  const out = [el("h1", {}, "My spend"), el("p", { class: "muted", id: "me-who" }, personal
    ? `Signed in with the personal token of ${kind} ${who}: your own budgets and spend, nobody else's.`
    : "One engineer's own budgets and spend, as their personal token shows it to them (docs/console.md)."), form];
  if (!who) return out;
  const query = { from, to };
  if (!personal) query.scope = `${kind}:${who}`;
  const page = await api(`/reports/principal?${new URLSearchParams(query)}`);
  out.push(
    el("div", { class: "cards" }, card("me-total", `Spend of ${kind} ${who}`, "$" + page.total.cost_usd),
      ...page.budgets.map((b) => card(`me-budget-${b.budget.id}`, `${b.budget.id} (${b.budget.window})`, `$${usd(b.spent_micros)} of $${usd(b.effective_limit_micros)} — ${b.status}`))),
    budgetBars(page.budgets),
    table("me-days", "By day", ["day", "requests", "cost_usd"], page.by_day.map((r) => [r.day, r.requests, r.cost_usd]), ["requests", "cost_usd"]),
    table("me-models", "By model", ["model", "requests", "cost_usd"], page.by_model.map((r) => [r.model, r.requests, r.cost_usd]), ["requests", "cost_usd"]));
  return out;
}

/** Outliers, not rankings: runs, workflow days and days far above their own baseline. */
async function outliersPage(params) {
  const k = params.get("k") || "";
  const { form, from, to } = periodForm("outliers", params, [el("label", {}, "k", el("input", { name: "k", value: k, placeholder: "3" }))]);
  const q = { from, to };
  if (k) q.k = k;
  const answer = await api(`/admin/reports/outliers?${new URLSearchParams(q)}`);
  const models = (o) => o.explanation.models.map((m) => `${m.model} ${m.requests}x $${usd(m.cost_micros)}`).join("; ");
  return [
    el("h1", {}, "Outliers"), form,
    el("p", { class: "muted" }, `Runs (task ids), workflow days and days whose cost is above median + ${answer.k} x MAD of their own group: `,
      "a run against the other runs of its workflow, a workflow's day against its other days, a day against the other days. ",
      "Nothing here ranks people by spend (docs/counter.md, Outliers)."),
    el("div", { class: "cards" }, card("outliers-count", "Outliers", answer.outliers.length), card("outliers-records", "Records read", answer.records)),
    table("outliers-rows", "Far above their own baseline",
      ["kind", "id", "workflow", "day", "cost_usd", "median_usd", "threshold_usd", "pct_of_median", "requests", "failed_requests", "input_tokens", "output_tokens", "models"],
      answer.outliers.map((o) => [o.kind, o.id, o.workflow || "", o.day, usd(o.cost_micros), usd(o.baseline.median_micros), usd(o.baseline.threshold_micros),
        o.pct_of_median === null ? "" : String(o.pct_of_median), o.explanation.requests, o.explanation.failed_requests, o.explanation.input_tokens,
        o.explanation.output_tokens, models(o)]),
      ["cost_usd", "median_usd", "threshold_usd", "pct_of_median", "requests", "failed_requests", "input_tokens", "output_tokens"],
      { path: "/admin/reports/outliers", query: q }),
  ];
}

// ---- shell ---------------------------------------------------------------------------------

const PAGES = {
  overview, budgets: budgetsPage, spend: spendPage, mix: mixPage, exemptions: exemptionsPage, simulator: simulatorPage, me: mePage,
  workflows: workflowsPage, requests: requestsPage, events: eventsPage, outcomes: outcomesPage, review: reviewPage, outliers: outliersPage,
};

/** What the signed-in token is (GET /whoami): admin-side with a role, or personal to one principal. */
let whoami = null;

function signOut(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  whoami = null;
  document.getElementById("signin-error").textContent = message;
  render();
}

async function render() {
  const signedIn = Boolean(token());
  document.getElementById("signin").hidden = signedIn;
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("signout").hidden = !signedIn;
  const page = document.getElementById("page");
  page.replaceChildren();
  page.removeAttribute("data-ready");
  if (!signedIn) {
    // Whatever the last token was, the next one is asked about afresh.
    whoami = null;
    return;
  }
  const hash = hashParams();
  const { params } = hash;
  let { page: name } = hash;
  try {
    if (!whoami) whoami = await api("/whoami");
    // A personal token opens its own "My spend" and nothing else (the counter refuses the rest).
    const personal = whoami.kind === "personal";
    for (const a of document.querySelectorAll("#nav a")) a.hidden = personal && a.getAttribute("href") !== "#me";
    if (personal) name = "me";
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.getAttribute("href") === "#" + name);
    const build = PAGES[name] || overview;
    page.replaceChildren(...(await build(params)));
  } catch (err) {
    if (err.message !== "unauthorized") page.replaceChildren(el("p", { class: "error", id: "page-error" }, String(err.message || err)));
  }
  // Tests and screenshots wait for this.
  page.dataset.ready = name;
}

document.getElementById("signin").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
  whoami = null;
  document.getElementById("token").value = "";
  document.getElementById("signin-error").textContent = "";
  render();
});
document.getElementById("signout").addEventListener("click", () => signOut());
window.addEventListener("hashchange", render);
render();
