// The filter's own time in V8, without Envoy: a minimal proxy-wasm host (ABI 0.2.1) in Node,
// whose V8 compiles the same tollgate.wasm Envoy's V8 does, sending `make bench`'s request and
// the mock's answer (a workload file bench.py writes: part `v8`) through several filters in
// interleaved rounds and timing each request's callbacks, host functions included.
//
// Why: on the 2-vCPU bench machine Envoy's CPU per request moves by 10-40 µs between rounds, more
// than everything issue 15 §1 measures (Tollgate's work over the `calls` floor), and wasmtime's
// fuel counts wasm instructions, which V8's optimised code runs at very different rates (a
// byte-window loop of 225 k instructions took less time than Tollgate's 100 k). Here the host is
// the same JavaScript for every filter, so filter − `calls` is the filter's own work in V8, and
// rounds of a few milliseconds interleave finely enough that the machine's drift cancels.
//
// With --evict-kib N each timed request starts after N KiB of other memory was written, so the
// caches hold other work, as in a proxy where other requests pass between two of a filter's
// callbacks: a filter's cost then includes fetching its code and data again.
//
// Not part of `make test`; `make bench` runs it (bench.py, part `v8`). Node's V8 is not Envoy
// 1.40's: read differences between filters, not absolute times. Envoy's V8 runs with Liftoff off
// (TurboFan only); so does this (`--no-liftoff`, passed by bench.py).
//
// Usage: node --no-liftoff bench/v8-time.mjs <workload.json> name=<filter.wasm>[@<config.json>] ...
//   [--rounds N] [--requests N] [--warmup N] [--evict-kib N [--rewarm-memory]] [--split] [--footprint [--footprint-call N]]
// A filter without @config gets the workload's configuration (Tollgate's); "@" alone an empty one.
import fs from "node:fs";

const OK = 0, NOT_FOUND = 1, BAD_ARGUMENT = 2, EMPTY = 7, CAS_MISMATCH = 8;
const CONTINUE = 0;
const enc = new TextEncoder();
const SPLIT = process.argv.includes("--split");
const FOOTPRINT = process.argv.includes("--footprint");
const dec = new TextDecoder();

function parseArgs(argv) {
  const opts = { rounds: 31, requests: 400, warmup: 20000, evictKib: 0, filters: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--rounds") opts.rounds = Number(argv[++i]);
    else if (a === "--requests") opts.requests = Number(argv[++i]);
    else if (a === "--warmup") opts.warmup = Number(argv[++i]);
    else if (a === "--split" || a === "--footprint") continue;
    else if (a === "--rewarm-memory") opts.rewarm = true;
    else if (a === "--footprint-call") opts.footprintCall = Number(argv[++i]);
    else if (a === "--evict-kib") opts.evictKib = Number(argv[++i]);
    else if (!opts.workload) opts.workload = a;
    else {
      const m = a.match(/^([^=]+)=([^@]+)(?:@(.*))?$/);
      if (!m) throw new Error(`v8-time: ${a}: expected name=<filter.wasm>[@<config.json>]`);
      opts.filters.push({ name: m[1], wasm: m[2], config: m[3] });
    }
  }
  if (!opts.workload || opts.filters.length === 0) throw new Error("v8-time: usage: <workload.json> name=<filter.wasm>[@<config>] ...");
  return opts;
}

/** One filter in its own VM: the proxy-wasm host functions and one HTTP stream at a time. */
class Vm {
  constructor(name, bytes, pluginConfig) {
    this.name = name;
    this.pluginConfig = enc.encode(pluginConfig);
    this.stream = null;
    this.shared = new Map();
    this.metrics = 0;
    this.clockNs = 1_767_225_600_000_000_000n;
    this.rng = 0x5eed;
    const module = new WebAssembly.Module(bytes);
    this.hostMs = 0;
    const timed = (fns) => {
      if (!SPLIT) return fns;
      // With --split, the time spent in host functions is kept apart (each call read twice
      // from the clock: a cost of its own, charged to the host side).
      const out = {};
      for (const [k, f] of Object.entries(fns)) {
        out[k] = (...args) => { const t = performance.now(); try { return f(...args); } finally { this.hostMs += performance.now() - t; } };
      }
      return out;
    };
    const imports = { env: timed(this.env()), wasi_snapshot_preview1: timed(this.wasi()) };
    if (FOOTPRINT) {
      if (!WebAssembly.Module.imports(module).some((i) => i.module === "footprint")) {
        throw new Error(`${name}: --footprint needs a module rewritten by bench/wasm-footprint`);
      }
      imports.footprint = this.footprintHooks();
    }
    this.instance = new WebAssembly.Instance(module, imports);
    this.x = this.instance.exports;
    if (FOOTPRINT) {
      // Each callback is recorded on its own: in Envoy other requests run between two of them.
      const vm = this;
      this.x = Object.fromEntries(Object.entries(this.x).map(([k, f]) => [k, typeof f === "function" && k.startsWith("proxy_on_")
        ? (...args) => {
          // A callback the host makes inside another (proxy_on_memory_allocate while a header
          // map is copied in) belongs to the outer one.
          const t = vm.trace;
          if (!t || t.depth++ > 0) { try { return f(...args); } finally { if (t) t.depth--; } }
          t.calls.push(t.now = { callback: k, blocks: new Set(), lines: new Set(), hostLines: new Set() });
          try { return f(...args); } finally { t.depth--; t.now = null; }
        }
        : f]));
    }
    this.nextContext = 2;
    if (this.x._initialize) this.x._initialize();
    this.call("proxy_on_context_create", 1, 0);
    if (this.call("proxy_on_vm_start", 1, 0) === 0) throw new Error(`${name}: proxy_on_vm_start refused`);
    this.configuring = true;
    if (this.call("proxy_on_configure", 1, this.pluginConfig.length) === 0) throw new Error(`${name}: proxy_on_configure refused: ${this.lastLog}`);
    this.configuring = false;
  }

  /** The `footprint` imports: what one traced request's callbacks touch (see bench/wasm-footprint). */
  footprintHooks() {
    const vm = this;
    const lines = (set, addr, len) => { for (let l = addr >>> 6, end = (addr + Math.max(len, 1) - 1) >>> 6; l <= end; l++) set.add(l); };
    return {
      block(id) { if (vm.trace) vm.trace.now.blocks.add(id); },
      mem(addr, offset, width) { if (vm.trace) lines(vm.trace.now.lines, (addr >>> 0) + offset, width); },
      range(addr, len) { if (vm.trace && len !== 0) lines(vm.trace.now.lines, addr >>> 0, len >>> 0); },
    };
  }

  /** Lines of the filter's memory the host itself read or wrote (buffers copied in and out). */
  hostTouched(ptr, len) {
    if (!this.trace || !this.trace.now || len === 0) return;
    for (let l = ptr >>> 6, end = (ptr + len - 1) >>> 6; l <= end; l++) this.trace.now.hostLines.add(l);
  }

  call(fn, ...args) {
    const f = this.x[fn];
    return f ? f(...args) : undefined;
  }

  // Views of the filter's memory, made again only when it grew (the old buffer is then detached).
  bytes() {
    if (this.u8 === undefined || this.u8.buffer !== this.x.memory.buffer) this.u8 = new Uint8Array(this.x.memory.buffer);
    return this.u8;
  }
  view() {
    if (this.dv === undefined || this.dv.buffer !== this.x.memory.buffer) this.dv = new DataView(this.x.memory.buffer);
    return this.dv;
  }
  read(ptr, len) { if (FOOTPRINT) this.hostTouched(ptr, len); return this.bytes().slice(ptr, ptr + len); }
  text(ptr, len) { if (FOOTPRINT) this.hostTouched(ptr, len); return dec.decode(this.bytes().subarray(ptr, ptr + len)); }

  /** Copies `data` into memory the filter allocates, as Envoy does, and writes pointer and size. */
  copyOut(data, ptrPtr, sizePtr) {
    let ptr = 0;
    if (data.length > 0) {
      ptr = this.x.proxy_on_memory_allocate(data.length);
      if (ptr === 0) return 6;
      this.bytes().set(data, ptr);
      if (FOOTPRINT) this.hostTouched(ptr, data.length);
    }
    const v = this.view();
    v.setUint32(ptrPtr, ptr, true);
    v.setUint32(sizePtr, data.length, true);
    return OK;
  }

  headers(map) {
    const s = this.stream;
    if (!s) return null;
    if (map === 0) return s.requestHeaders;
    if (map === 2) return s.responseHeaders;
    return null;
  }

  env() {
    const vm = this;
    const concat = (a, b) => { const out = new Uint8Array(a.length + b.length); out.set(a); out.set(b, a.length); return out; };
    return {
      proxy_abi_version_0_2_1() {},
      proxy_log(level, ptr, len) { vm.lastLog = vm.text(ptr, len); if (level >= 4) process.stderr.write(`${vm.name}: ${vm.lastLog}\n`); return OK; },
      proxy_get_log_level(ptr) { vm.view().setInt32(ptr, 3, true); return OK; },
      proxy_get_current_time_nanoseconds(ptr) { vm.view().setBigUint64(ptr, vm.clockNs, true); return OK; },
      proxy_set_tick_period_milliseconds() { return OK; },
      proxy_done() { return OK; },
      proxy_get_status() { return NOT_FOUND; },
      proxy_set_effective_context() { return OK; },
      proxy_call_foreign_function() { return NOT_FOUND; },
      proxy_get_buffer_bytes(kind, start, max, ptrPtr, sizePtr) {
        // Sizes are unsigned (the SDK asks for usize::MAX, -1 as an i32).
        start >>>= 0;
        max >>>= 0;
        let buf = null;
        if (kind === 6) buf = new Uint8Array(0);
        else if (kind === 7 && vm.configuring) buf = vm.pluginConfig;
        else if (kind === 0 && vm.stream) buf = vm.stream.requestBody;
        else if (kind === 1 && vm.stream) buf = vm.stream.responseBody;
        if (!buf) return NOT_FOUND;
        const end = Math.min(start + max, buf.length);
        if (start >= end) return OK;
        return vm.copyOut(buf.subarray(start, end), ptrPtr, sizePtr);
      },
      proxy_set_buffer_bytes(kind, start, size, ptr, len) {
        const s = vm.stream;
        if (!s || (kind !== 0 && kind !== 1)) return NOT_FOUND;
        start >>>= 0;
        size >>>= 0;
        const key = kind === 0 ? "requestBody" : "responseBody";
        const data = vm.read(ptr, len);
        const buf = s[key];
        // Envoy's Buffer::copyFrom: start 0 drains `size` bytes and prepends; at the end appends.
        if (start === 0) s[key] = concat(data, buf.subarray(Math.min(size, buf.length)));
        else if (start >= buf.length) s[key] = concat(buf, data);
        else return BAD_ARGUMENT;
        return OK;
      },
      proxy_get_header_map_pairs(map, ptrPtr, sizePtr) {
        const pairs = vm.headers(map) || [];
        // The serialized map is kept until the map changes (most reads see an unchanged map).
        if (pairs.serialized !== undefined) return vm.copyOut(pairs.serialized, ptrPtr, sizePtr);
        const encoded = pairs.map(([k, v]) => [enc.encode(k), enc.encode(v)]);
        let size = 4 + 8 * encoded.length;
        for (const [k, v] of encoded) size += k.length + v.length + 2;
        const out = new Uint8Array(size);
        const dv = new DataView(out.buffer);
        dv.setUint32(0, encoded.length, true);
        let at = 4;
        for (const [k, v] of encoded) { dv.setUint32(at, k.length, true); dv.setUint32(at + 4, v.length, true); at += 8; }
        for (const [k, v] of encoded) { out.set(k, at); at += k.length + 1; out.set(v, at); at += v.length + 1; }
        pairs.serialized = out;
        return vm.copyOut(out, ptrPtr, sizePtr);
      },
      proxy_set_header_map_pairs(map, ptr, len) {
        const pairs = vm.headers(map);
        if (!pairs) return NOT_FOUND;
        const bytes = vm.read(ptr, len);
        const dv = new DataView(bytes.buffer);
        const n = dv.getUint32(0, true);
        const sizes = [];
        for (let i = 0; i < n; i++) sizes.push([dv.getUint32(4 + 8 * i, true), dv.getUint32(8 + 8 * i, true)]);
        let at = 4 + 8 * n;
        pairs.length = 0;
        pairs.serialized = undefined;
        for (const [k, v] of sizes) {
          const key = dec.decode(bytes.subarray(at, at + k)); at += k + 1;
          const value = dec.decode(bytes.subarray(at, at + v)); at += v + 1;
          pairs.push([key, value]);
        }
        return OK;
      },
      proxy_get_header_map_value(map, kp, ks, ptrPtr, sizePtr) {
        const pairs = vm.headers(map);
        const key = vm.text(kp, ks);
        const found = pairs && pairs.find(([k]) => k === key);
        if (!found) return NOT_FOUND;
        return vm.copyOut(enc.encode(found[1]), ptrPtr, sizePtr);
      },
      proxy_replace_header_map_value(map, kp, ks, vp, vs) {
        const pairs = vm.headers(map);
        if (!pairs) return NOT_FOUND;
        const key = vm.text(kp, ks), value = vm.text(vp, vs);
        const rest = pairs.filter(([k]) => k !== key);
        pairs.length = 0;
        pairs.serialized = undefined;
        pairs.push(...rest, [key, value]);
        return OK;
      },
      proxy_remove_header_map_value(map, kp, ks) {
        const pairs = vm.headers(map);
        if (!pairs) return NOT_FOUND;
        const key = vm.text(kp, ks);
        const rest = pairs.filter(([k]) => k !== key);
        pairs.length = 0;
        pairs.serialized = undefined;
        pairs.push(...rest);
        return OK;
      },
      proxy_add_header_map_value(map, kp, ks, vp, vs) {
        const pairs = vm.headers(map);
        if (!pairs) return NOT_FOUND;
        pairs.serialized = undefined;
        pairs.push([vm.text(kp, ks), vm.text(vp, vs)]);
        return OK;
      },
      proxy_get_property() { return NOT_FOUND; },
      proxy_set_property(pp, ps, vp, vs) {
        if (!vm.stream) return NOT_FOUND;
        vm.stream.filterState.set(vm.text(pp, ps), vm.read(vp, vs));
        return OK;
      },
      proxy_get_shared_data(kp, ks, ptrPtr, sizePtr, casPtr) {
        const entry = vm.shared.get(vm.text(kp, ks));
        if (!entry) return NOT_FOUND;
        const status = vm.copyOut(entry.value, ptrPtr, sizePtr);
        if (status !== OK) return status;
        vm.view().setUint32(casPtr, entry.cas, true);
        return OK;
      },
      proxy_set_shared_data(kp, ks, vp, vs, cas) {
        const key = vm.text(kp, ks);
        const entry = vm.shared.get(key);
        if (cas !== 0 && entry && entry.cas !== cas) return CAS_MISMATCH;
        vm.shared.set(key, { value: vm.read(vp, vs), cas: (entry ? entry.cas : 0) + 1 });
        return OK;
      },
      proxy_register_shared_queue(np, ns, idPtr) { vm.view().setUint32(idPtr, 1, true); return OK; },
      proxy_resolve_shared_queue() { return NOT_FOUND; },
      proxy_dequeue_shared_queue() { return EMPTY; },
      proxy_enqueue_shared_queue() { return OK; },
      proxy_continue_stream() { return OK; },
      proxy_close_stream() { return OK; },
      proxy_send_local_response(status) { if (vm.stream) vm.stream.localReply = status; return OK; },
      proxy_http_call() { return NOT_FOUND; },
      proxy_grpc_call() { return NOT_FOUND; },
      proxy_grpc_stream() { return NOT_FOUND; },
      proxy_grpc_send() { return NOT_FOUND; },
      proxy_grpc_cancel() { return NOT_FOUND; },
      proxy_grpc_close() { return NOT_FOUND; },
      proxy_define_metric(kind, np, ns, idPtr) { vm.view().setUint32(idPtr, ++vm.metrics, true); return OK; },
      proxy_increment_metric() { return OK; },
      proxy_record_metric() { return OK; },
      proxy_get_metric(id, ptr) { vm.view().setBigUint64(ptr, 0n, true); return OK; },
    };
  }

  wasi() {
    const vm = this;
    return {
      random_get(ptr, len) {
        const b = vm.bytes();
        for (let i = 0; i < len; i++) { vm.rng = (vm.rng * 1103515245 + 12345) >>> 0; b[ptr + i] = vm.rng >>> 24; }
        return 0;
      },
      environ_sizes_get(countPtr, sizePtr) { const v = vm.view(); v.setUint32(countPtr, 0, true); v.setUint32(sizePtr, 0, true); return 0; },
      environ_get() { return 0; },
      clock_time_get(id, precision, ptr) { vm.view().setBigUint64(ptr, vm.clockNs, true); return 0; },
      fd_write(fd, iovs, iovsLen, nPtr) {
        const v = vm.view();
        let n = 0;
        for (let i = 0; i < iovsLen; i++) {
          const p = v.getUint32(iovs + 8 * i, true), l = v.getUint32(iovs + 8 * i + 4, true);
          process.stderr.write(`${vm.name} (fd ${fd}): ${vm.text(p, l)}`);
          n += l;
        }
        v.setUint32(nPtr, n, true);
        return 0;
      },
      proc_exit(code) { throw new Error(`${vm.name}: proc_exit(${code})`); },
    };
  }

  /** One request as Envoy sends it; returns what reached the upstream and the client. */
  request(w) {
    const ctx = this.nextContext++;
    this.clockNs += 1_000_000n;
    const s = this.stream = {
      requestHeaders: copyPairs(w.requestHeaders),
      responseHeaders: null,
      requestBody: new Uint8Array(0),
      responseBody: new Uint8Array(0),
      filterState: new Map(),
      localReply: null,
    };
    this.x.proxy_on_context_create(ctx, 1);
    const headersAction = this.x.proxy_on_request_headers(ctx, s.requestHeaders.length, 0);
    s.requestBody = w.requestBody;
    const bodyAction = this.x.proxy_on_request_body(ctx, s.requestBody.length, 1);
    const upstream = s.requestBody.length;
    s.requestHeaders = null;
    s.responseHeaders = copyPairs(w.responseHeaders);
    this.x.proxy_on_response_headers(ctx, s.responseHeaders.length, 0);
    let client = 0;
    let held = null;
    for (let i = 0; i < w.chunks.length; i++) {
      const chunk = w.chunks[i];
      s.responseBody = held ? concatBytes(held, chunk) : chunk;
      const action = this.x.proxy_on_response_body(ctx, s.responseBody.length, i === w.chunks.length - 1 ? 1 : 0);
      if (action === CONTINUE) { client += s.responseBody.length; held = null; } else held = s.responseBody;
    }
    this.x.proxy_on_log(ctx);
    this.x.proxy_on_done(ctx);
    this.x.proxy_on_delete(ctx);
    this.stream = null;
    return { headersAction, bodyAction, upstream, client, localReply: s.localReply, state: s.filterState.size };
  }
}

/** A stream's own copy of a header map, with the template's serialized form while unchanged. */
function copyPairs(template) {
  const pairs = template.map(([k, v]) => [k, v]);
  pairs.serialized = template.serialized;
  return pairs;
}

function concatBytes(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

let sink = 0;

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const raw = JSON.parse(fs.readFileSync(opts.workload, "utf8"));
  const w = {
    requestHeaders: raw.request_headers,
    requestBody: enc.encode(raw.request_body),
    responseHeaders: raw.response_headers,
    chunks: raw.response_chunks.map((c) => enc.encode(c)),
  };
  const vms = opts.filters.map((f) => {
    const config = f.config === undefined ? raw.config : f.config === "" ? "" : fs.readFileSync(f.config, "utf8");
    return new Vm(f.name, fs.readFileSync(f.wasm), config);
  });
  // What each filter did to the request and the response (the same every time: checked).
  const shapes = vms.map((vm) => JSON.stringify(vm.request(w)));
  for (const vm of vms) for (let i = 0; i < opts.warmup; i++) vm.request(w);
  vms.forEach((vm, i) => {
    const now = JSON.stringify(vm.request(w));
    if (now !== shapes[i]) throw new Error(`${vm.name}: a request changed after warm-up: ${shapes[i]} then ${now}`);
  });
  if (FOOTPRINT) return footprint(opts, vms, w);
  // --evict-kib: before each timed request, write one byte per 64-byte line of a buffer this
  // big (outside the timed part), so the request starts with the caches holding other work, as
  // in a proxy where thousands of other requests' code and data pass between two of a filter's.
  const junk = new Uint8Array(opts.evictKib * 1024);
  const evict = opts.evictKib > 0 ? () => { for (let i = 0; i < junk.length; i += 64) junk[i]++; } : null;
  const times = vms.map(() => []);
  const hostTimes = vms.map(() => []);
  for (let r = 0; r < opts.rounds; r++) {
    // Each round visits the filters in a rotated order, so none always runs first.
    for (let k = 0; k < vms.length; k++) {
      const i = (r + k) % vms.length;
      const vm = vms[i];
      const host0 = vm.hostMs;
      let ns = 0n;
      for (let n = 0; n < opts.requests; n++) {
        if (evict) evict();
        // --rewarm-memory: then read the filter's whole linear memory back into the caches, so
        // that only its code (and the host's) starts cold: the data part of the evicted cost
        // is the difference from a run without it.
        if (opts.rewarm) { const b = vm.bytes(); let x = 0; for (let i = 0; i < b.length; i += 64) x += b[i]; sink ^= x; }
        const t0 = process.hrtime.bigint();
        vm.request(w);
        ns += process.hrtime.bigint() - t0;
      }
      times[i].push(Number(ns) / opts.requests / 1000);
      hostTimes[i].push((vm.hostMs - host0) * 1000 / opts.requests);
    }
  }
  const result = {
    workload: raw.name,
    node: process.version,
    v8: process.versions.v8,
    rounds: opts.rounds,
    evict_kib: opts.evictKib,
    requests_per_round: opts.requests,
    warmup: opts.warmup,
    filters: vms.map((vm, i) => ({
      name: vm.name,
      wasm: opts.filters[i].wasm,
      us_per_request_median: median(times[i]),
      us_per_request_min: Math.min(...times[i]),
      us_per_request_max: Math.max(...times[i]),
      ...(SPLIT ? { host_us_per_request_median: median(hostTimes[i]), outside_host_us_per_request_median: median(times[i].map((t, r) => t - hostTimes[i][r])) } : {}),
      shape: JSON.parse(shapes[i]),
    })),
    // Per round, each filter against the first (paired within the round).
    paired_difference_us_median: vms.map((vm, i) => median(times[i].map((t, r) => t - times[0][r]))),
  };
  process.stdout.write(JSON.stringify(result, null, 1) + "\n");
}

/**
 * --footprint: one traced request per filter (after the warm-up), each callback's distinct code
 * blocks and 64-byte memory lines, summed over callbacks (each starts cold in a busy proxy).
 * Code is counted in wasm instructions of the blocks entered (V8 emits a few bytes per
 * instruction); memory in lines, split by where they lie: stack, static data, heap.
 */
function footprint(opts, vms, w) {
  const filters = vms.map((vm, i) => {
    const mapPath = opts.filters[i].wasm.replace(/\.wasm$/, ".map.json");
    const map = JSON.parse(fs.readFileSync(mapPath, "utf8"));
    vm.trace = { calls: [], now: null, depth: 0 };
    vm.request(w);
    const trace = vm.trace;
    vm.trace = null;
    const region = (line) => { const a = line * 64; return a < map.stack_top ? "stack" : a < map.data[1] ? "static" : "heap"; };
    const byCallback = new Map();
    const functions = new Map();
    const total = { callbacks: 0, code_instrs: 0, blocks: 0, lines: 0, stack: 0, static: 0, heap: 0, host_lines: 0 };
    trace.calls.forEach((c, i) => {
      if (i !== opts.footprintCall) return;
      // --footprint-call N: the code the Nth callback of the request entered, by function.
      const fns = new Map();
      for (const b of c.blocks) { const [fn, n] = map.blocks[b]; fns.set(fn, (fns.get(fn) || 0) + n); }
      process.stderr.write(`${vm.name}: callback ${i} (${c.callback}): ${c.lines.size} lines\n`);
      for (const [fn, n] of [...fns.entries()].sort((a, b) => b[1] - a[1])) process.stderr.write(`  ${String(n).padStart(6)}  ${fn}\n`);
    });
    for (const c of trace.calls) {
      let code = 0;
      const row = byCallback.get(c.callback) || { callback: c.callback, calls: 0, code_instrs: 0, blocks: 0, lines: 0, stack: 0, static: 0, heap: 0, host_lines: 0, functions: new Map() };
      for (const b of c.blocks) {
        const [fn, n] = map.blocks[b];
        code += n;
        functions.set(fn, (functions.get(fn) || 0) + n);
        row.functions.set(fn, (row.functions.get(fn) || 0) + n);
      }
      row.calls++;
      // Each call's code and lines, in order (the response body's chunks differ: the first
      // event is learned, the last carries usage).
      (row.each = row.each || []).push([code, c.lines.size]);
      row.code_instrs += code;
      row.blocks += c.blocks.size;
      row.lines += c.lines.size;
      for (const l of c.lines) row[region(l)]++;
      row.host_lines += [...c.hostLines].filter((l) => !c.lines.has(l)).length;
      byCallback.set(c.callback, row);
    }
    for (const row of byCallback.values()) for (const k of Object.keys(total)) total[k] += k === "callbacks" ? row.calls : row[k];
    // The whole request's distinct code and lines (what stays warm if the proxy runs nothing else).
    const allBlocks = new Set(), allLines = new Set();
    for (const c of trace.calls) { for (const b of c.blocks) allBlocks.add(b); for (const l of c.lines) allLines.add(l); }
    total.request_code_instrs = [...allBlocks].reduce((n, b) => n + map.blocks[b][1], 0);
    total.request_lines = allLines.size;
    const requestFunctions = new Map();
    for (const b of allBlocks) { const [fn, n] = map.blocks[b]; requestFunctions.set(fn, (requestFunctions.get(fn) || 0) + n); }
    const top = (m, n) => [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, n).map(([f, c]) => ({ function: f, code_instrs: c }));
    for (const row of byCallback.values()) row.functions = top(row.functions, 25);
    return {
      name: vm.name,
      total,
      callbacks: [...byCallback.values()],
        // Code entered, summed over callbacks, by function (largest first).
      functions: top(functions, 60),
      // The request's distinct code, by function (largest first).
      request_functions: top(requestFunctions, 80),
    };
  });
  process.stdout.write(JSON.stringify({ workload: w.name, footprint: filters }, null, 1) + "\n");
}

main();
