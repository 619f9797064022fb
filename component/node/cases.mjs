// Tollgate's policy component from Node, through jco: runs the shared case table
// (component/cases.json) against tollgate_component.wasm and checks every answer with the same
// rule as the Rust hosts (component/src/cases.rs). Exit status 1 on any difference.
//
//   node cases.mjs <tollgate_component.wasm>      (run.sh transpiles it first; docs/component.md)
//
// jco maps the WIT types onto JavaScript: records → objects (camelCase), variants → {tag, val},
// enums → strings, list<u8> → Uint8Array, u64/s64 → BigInt, a result's error → a thrown
// ComponentError whose `payload` is the typed error.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const { api } = await import(join(here, 'out', 'tollgate.js'));
const table = JSON.parse(readFileSync(join(here, '..', 'cases.json'), 'utf8'));

const text = (bytes) => Buffer.from(bytes).toString('utf8');
const num = (n) => (n === undefined ? null : Number(n));
const opt = (v) => (v === undefined ? null : v);
const dialects = { 'openai': 'openai', 'azure-openai': 'azure_openai', 'anthropic': 'anthropic', 'gemini': 'gemini' };

// The same check as component/src/cases.rs `check`.
function check(expect, answer, at = '') {
  for (const [key, want] of Object.entries(expect)) {
    if (key.endsWith('_contains')) {
      const field = key.slice(0, -'_contains'.length);
      const got = typeof answer?.[field] === 'string' ? answer[field] : '';
      for (const part of want) {
        if (!got.includes(part)) throw new Error(`${at}\`${field}\` should contain ${JSON.stringify(part)}, got ${JSON.stringify(got)}`);
      }
    } else {
      const got = answer?.[key] ?? null;
      if (want && typeof want === 'object' && !Array.isArray(want) && got && typeof got === 'object') {
        check(want, got, `${at}${key}.`);
      } else if (JSON.stringify(got) !== JSON.stringify(want)) {
        throw new Error(`${at}\`${key}\` should be ${JSON.stringify(want)}, got ${JSON.stringify(got)}`);
      }
    }
  }
}

function configText(c) {
  if (typeof c.config_text === 'string') return c.config_text;
  return JSON.stringify(table.configs[c.config ?? 'main']);
}

function engine(c) {
  return api.Engine.create(configText(c));
}

function principal(p) {
  const out = {};
  for (const [k, js] of [['org', 'org'], ['cost_center', 'costCenter'], ['team', 'team'], ['user', 'user'],
    ['key_id', 'keyId'], ['use_case', 'useCase'], ['tier', 'tier'], ['task', 'task']]) {
    if (p[js] !== undefined) out[k] = p[js];
  }
  return out;
}

function decision(d) {
  switch (d.tag) {
    case 'pass-through': return { kind: 'pass-through' };
    case 'deny': return { kind: 'deny', status: d.val.status, code: d.val.code, message: d.val.message, param: opt(d.val.param), body: text(d.val.body) };
    case 'forward': {
      const r = d.val;
      return {
        kind: 'forward', dialect: dialects[r.dialect], endpoint: r.endpoint, principal: principal(r.principal),
        requested_model: r.requestedModel, routed_model: r.routedModel, rule: opt(r.rule),
        set_headers: r.setHeaders.map((h) => [h.name, h.value]), path: opt(r.path),
        body: r.body === undefined ? null : text(r.body), streaming: r.streaming, max_output_tokens: num(r.maxOutputTokens),
      };
    }
    default: throw new Error(`unknown decision ${d.tag}`);
  }
}

const kinds = {
  config(c) {
    try {
      engine(c)[Symbol.dispose]();
      return { ok: true };
    } catch (e) {
      if (!e.payload) throw e;
      return { error: { field: e.payload.field, problem: e.payload.problem } };
    }
  },
  recognise(c) {
    const r = c.request;
    const body = r.body_bytes ? Uint8Array.from(r.body_bytes) : new TextEncoder().encode(r.body ?? '');
    return decision(engine(c).recognise({ method: r.method, path: r.path, headers: r.headers.map(([name, value]) => ({ name, value })), body }));
  },
  meter(c) {
    const meter = engine(c).meter(c.path, c.format === 'sse' ? 'sse' : 'json');
    if (!meter) return null;
    for (const chunk of c.chunks) meter.feed(new TextEncoder().encode(chunk));
    const m = meter.finish();
    const u = m.usage;
    return {
      usage: u === undefined ? null : { input: num(u.input), output: num(u.output), cache_read: num(u.cacheRead), cache_write: num(u.cacheWrite), reasoning: num(u.reasoning) },
      model: opt(m.model), completed: m.completed, content_bytes: num(m.contentBytes),
    };
  },
  price(c) {
    const u = c.usage;
    const usage = { input: BigInt(u.input ?? 0), output: BigInt(u.output ?? 0), cacheRead: BigInt(u.cache_read ?? 0), cacheWrite: BigInt(u.cache_write ?? 0), reasoning: BigInt(u.reasoning ?? 0) };
    try {
      const cost = engine(c).price(c.model, usage);
      return { ok: { micros: num(cost.micros), known_price: cost.knownPrice, long_context: cost.longContext } };
    } catch (e) {
      if (!e.payload) throw e;
      return { error: e.payload.tag, message: e.payload.val };
    }
  },
};

let failures = 0;
let ran = 0;
for (const [kind, answer] of Object.entries(kinds)) {
  for (const c of table[kind]) {
    ran += 1;
    let got;
    try {
      got = answer(c);
      check(c.expect, got);
    } catch (e) {
      failures += 1;
      console.error(`FAIL ${kind} \`${c.name}\`: ${e.message}\n  answer: ${JSON.stringify(got)}`);
    }
  }
}
console.log(`node (jco): ${ran - failures} of ${ran} cases give core's answers`);
process.exit(failures === 0 && ran > 0 ? 0 : 1);
