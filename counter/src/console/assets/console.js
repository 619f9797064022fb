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

/** A titled table with a CSV download of exactly the cells shown. `numeric` names right-aligned columns. */
function table(id, title, header, rows, numeric = []) {
  const link = el("a", { href: "#", class: "csv", "data-csv": id }, "CSV");
  link.addEventListener("click", (e) => {
    e.preventDefault();
    const blob = new Blob([toCsv(header, rows)], { type: "text/csv" });
    const a = el("a", { href: URL.createObjectURL(blob), download: `tollgate-${id}.csv` });
    document.body.append(a);
    a.click();
    a.remove();
  });
  const t = el("table", { id },
    el("thead", {}, el("tr", {}, header.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c, i) => {
      const td = el("td", { "data-col": header[i] }, c);
      if (numeric.includes(header[i])) td.className = "num";
      if (header[i] === "status") td.className = "status-" + c;
      return td;
    })))));
  return el("div", { class: "table" }, el("h2", {}, title, link), t, rows.length ? "" : el("p", { class: "muted" }, "No rows."));
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
    signOut("That token was refused (401). Sign in with an admin token of this counter.");
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
  const budgets = (await api("/admin/budgets")).budgets;
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
  ];
}

const KINDS = [["team", "Teams"], ["cost_center", "Cost centers"], ["user", "Users"], ["workflow", "Workflows (team / use case)"], ["org", "Organisations"], ["key", "Keys"], ["task", "Tasks"]];

async function budgetsPage() {
  const rows = (await api("/admin/reports/utilization")).budgets;
  const header = ["budget", "scope", "window", "mode", "spent_usd", "limit_usd", "hard_limit_usd", "utilization_pct", "status", "leased_usd", "resets_at"];
  const out = [el("h1", {}, "Budgets")];
  const leased = rows.reduce((s, b) => s + b.leased_micros, 0);
  out.push(el("div", { class: "cards" },
    card("budgets-count", "Budgets", rows.length),
    card("budgets-hard", "At the hard limit", rows.filter((b) => b.status === "hard").length),
    card("budgets-soft", "Past a soft threshold", rows.filter((b) => b.status === "soft").length),
    card("budgets-leased", "Leases outstanding", "$" + usd(leased))));
  for (const [kind, title] of KINDS) {
    const of = rows.filter((b) => b.scope.split(":")[0] === kind);
    if (!of.length) continue;
    out.push(table(`budgets-${kind}`, title, header, of.map((b) => [
      b.budget, b.scope, b.window, b.mode, usd(b.spent_micros), usd(b.limit_micros), usd(b.hard_limit_micros),
      (b.utilization * 100).toFixed(1), b.status, usd(b.leased_micros), b.resets_at ? new Date(b.resets_at * 1000).toISOString().replace(".000", "") : "",
    ]), ["spent_usd", "limit_usd", "hard_limit_usd", "utilization_pct", "leased_usd"]));
  }
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
    "An exemption adds its amount to the limit and hard limit of every budget on its scope until it ends. Requests for approval by a second person arrive with the governance work (issue 11)."),
    form, message, t];
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
  const who = params.get("who") || "";
  const kind = params.get("kind") || "user";
  const select = el("select", { name: "kind" }, ["user", "key"].map((k) => el("option", k === kind ? { selected: "" } : {}, k)));
  const { form, from, to } = periodForm("me", params, [el("label", {}, "kind", select), el("label", {}, "user or key id", el("input", { name: "who", value: who }))]);
  const out = [el("h1", {}, "My spend"), el("p", { class: "muted" },
    "What one engineer may see of themselves: their own budgets and spend. Today this view needs an admin token (see docs/console.md: a self-scoped token arrives with the roles of issue 11)."), form];
  if (!who) return out;
  const dim = kind === "key" ? "key" : "user";
  const budgets = (await api("/admin/budgets")).budgets.filter((b) => b.budget.scope === `${kind}:${who}`);
  const byDay = (await spend([dim, "day"], from, to)).rows.filter((r) => r[dim] === who);
  const byModel = (await spend([dim, "model"], from, to)).rows.filter((r) => r[dim] === who);
  const total = byDay.reduce((s, r) => s + r.cost_micros, 0);
  out.push(
    el("div", { class: "cards" }, card("me-total", `Spend of ${kind} ${who}`, "$" + usd(total)),
      ...budgets.map((b) => card(`me-budget-${b.budget.id}`, `${b.budget.id} (${b.budget.window})`, `$${usd(b.spent_micros)} of $${usd(b.effective_limit_micros)} — ${b.status}`))),
    budgetBars(budgets),
    table("me-days", "By day", ["day", "requests", "cost_usd"], byDay.map((r) => [r.day, r.requests, r.cost_usd]), ["requests", "cost_usd"]),
    table("me-models", "By model", ["model", "requests", "cost_usd"], byModel.map((r) => [r.model, r.requests, r.cost_usd]), ["requests", "cost_usd"]));
  return out;
}

// ---- shell ---------------------------------------------------------------------------------

const PAGES = { overview, budgets: budgetsPage, spend: spendPage, mix: mixPage, exemptions: exemptionsPage, simulator: simulatorPage, me: mePage };

function signOut(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
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
  if (!signedIn) return;
  const { page: name, params } = hashParams();
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.getAttribute("href") === "#" + name);
  const build = PAGES[name] || overview;
  try {
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
  document.getElementById("token").value = "";
  document.getElementById("signin-error").textContent = "";
  render();
});
document.getElementById("signout").addEventListener("click", () => signOut());
window.addEventListener("hashchange", render);
render();
