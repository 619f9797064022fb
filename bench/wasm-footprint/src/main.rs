//! Rewrites a proxy-wasm filter so that its host can see the filter's footprint: which blocks of
//! code and which 64-byte lines of linear memory one request touches.
//!
//! Why: in Envoy a filter's callbacks run between other requests' work, so they start with cold
//! caches, and the ninth session found that Tollgate's cost over the `calls` floor there is mostly
//! fetching its code and data again, not executing instructions (BENCHMARKS.md, "Issue 15: ninth
//! session"). Instruction counts (wasmtime fuel) do not show that; this does. The rewritten module
//! imports three functions from the module `footprint`, which bench/v8-time.mjs supplies with
//! `--footprint` and records while one request runs:
//!
//! - `block(id)` at the start of every instruction sequence (function body, block, loop, if arm);
//!   the map written beside the module gives each id's function and its own instruction count, so
//!   the host sums the code of the blocks a request entered;
//! - `mem(addr, offset, width)` before every load and store;
//! - `range(addr, len)` before `memory.copy` (source and destination) and `memory.fill`.
//!
//! The rewritten module is only for counting: it runs the same paths with many more calls.
//! Usage: `tollgate-wasm-footprint <in.wasm> <out.wasm> <out.map.json>`.

use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use walrus::ir::{
    self, Instr, InstrLocId, InstrSeq, LoadKind, StoreKind, Value, VisitorMut,
};
use walrus::{FunctionId, LocalId, Module, ModuleLocals, ValType};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output, map] = args.as_slice() else {
        bail!("usage: tollgate-wasm-footprint <in.wasm> <out.wasm> <out.map.json>");
    };
    let mut module = Module::from_file(input).with_context(|| format!("reading {input}"))?;
    let hooks = Hooks::import(&mut module);

    let mut blocks: Vec<(String, usize)> = Vec::new();
    let ids: Vec<FunctionId> = module.funcs.iter_local().map(|(id, _)| id).collect();
    for id in ids {
        let name = match &module.funcs.get(id).name {
            Some(raw) => format!("{:#}", rustc_demangle::demangle(raw)),
            None => format!("func{}", id.index()),
        };
        let walrus::FunctionKind::Local(func) = &mut module.funcs.get_mut(id).kind else { continue };
        let entry = func.entry_block();
        let mut rewriter = Rewriter { hooks: &hooks, locals: &mut module.locals, temps: Temps::default(), blocks: &mut blocks, name: &name };
        ir::dfs_pre_order_mut(&mut rewriter, func, entry);
    }

    module.emit_wasm_file(output).with_context(|| format!("writing {output}"))?;
    // Where the static data lies and where the stack starts (wasm-ld puts the stack first, below
    // the data, and `__stack_pointer`, the first global, starts at its top).
    let mut data = (u32::MAX, 0u32);
    for segment in module.data.iter() {
        if let walrus::DataKind::Active { offset: walrus::ConstExpr::Value(Value::I32(at)), .. } = segment.kind {
            data.0 = data.0.min(at as u32);
            data.1 = data.1.max(at as u32 + segment.value.len() as u32);
        }
    }
    let stack_top = module
        .globals
        .iter()
        .find_map(|g| match g.kind {
            walrus::GlobalKind::Local(walrus::ConstExpr::Value(Value::I32(v))) if g.mutable => Some(v as u32),
            _ => None,
        })
        .unwrap_or(0);
    let mut json = format!("{{\"data\":[{},{}],\"stack_top\":{},\"blocks\":[", data.0, data.1, stack_top);
    for (i, (name, instrs)) in blocks.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        let _ = write!(json, "[{},{}]", json_string(name), instrs);
    }
    json.push_str("]}\n");
    std::fs::write(map, json).with_context(|| format!("writing {map}"))?;
    eprintln!("{input}: {} blocks instrumented -> {output}, {map}", blocks.len());
    Ok(())
}

/// The three imported recording functions.
struct Hooks {
    block: FunctionId,
    mem: FunctionId,
    range: FunctionId,
}

impl Hooks {
    fn import(module: &mut Module) -> Hooks {
        let one = module.types.add(&[ValType::I32], &[]);
        let two = module.types.add(&[ValType::I32, ValType::I32], &[]);
        let three = module.types.add(&[ValType::I32, ValType::I32, ValType::I32], &[]);
        Hooks {
            block: module.add_import_func("footprint", "block", one).0,
            mem: module.add_import_func("footprint", "mem", three).0,
            range: module.add_import_func("footprint", "range", two).0,
        }
    }
}

/// Scratch locals of one function, made on first use.
#[derive(Default)]
struct Temps {
    by_type: Vec<(ValType, Vec<LocalId>)>,
}

impl Temps {
    /// The `n`th scratch local of type `ty`.
    fn get(&mut self, locals: &mut ModuleLocals, ty: ValType, n: usize) -> LocalId {
        let slot = match self.by_type.iter().position(|(t, _)| *t == ty) {
            Some(i) => i,
            None => {
                self.by_type.push((ty, Vec::new()));
                self.by_type.len() - 1
            }
        };
        let list = &mut self.by_type[slot].1;
        while list.len() <= n {
            list.push(locals.add(ty));
        }
        list[n]
    }
}

struct Rewriter<'a> {
    hooks: &'a Hooks,
    locals: &'a mut ModuleLocals,
    temps: Temps,
    blocks: &'a mut Vec<(String, usize)>,
    name: &'a str,
}

fn at() -> InstrLocId {
    InstrLocId::default()
}

fn i32c(v: u64) -> Instr {
    ir::Const { value: Value::I32(v as u32 as i32) }.into()
}

impl Rewriter<'_> {
    fn local(&mut self, ty: ValType, n: usize) -> LocalId {
        self.temps.get(self.locals, ty, n)
    }
}

impl VisitorMut for Rewriter<'_> {
    fn start_instr_seq_mut(&mut self, seq: &mut InstrSeq) {
        let id = self.blocks.len();
        self.blocks.push((self.name.to_string(), seq.instrs.len()));
        let old = std::mem::take(&mut seq.instrs);
        let mut out: Vec<(Instr, InstrLocId)> = Vec::with_capacity(old.len() * 2 + 2);
        out.push((i32c(id as u64), at()));
        out.push((ir::Call { func: self.hooks.block }.into(), at()));
        for (instr, loc) in old {
            match &instr {
                Instr::Load(load) => {
                    let a = self.local(ValType::I32, 0);
                    let width = load_width(&load.kind);
                    out.push((ir::LocalTee { local: a }.into(), at()));
                    out.push((i32c(load.arg.offset), at()));
                    out.push((i32c(width), at()));
                    out.push((ir::Call { func: self.hooks.mem }.into(), at()));
                    out.push((ir::LocalGet { local: a }.into(), at()));
                }
                Instr::Store(store) => {
                    let ty = store_type(&store.kind);
                    let v = self.local(ty, 1);
                    let a = self.local(ValType::I32, 0);
                    out.push((ir::LocalSet { local: v }.into(), at()));
                    out.push((ir::LocalTee { local: a }.into(), at()));
                    out.push((i32c(store.arg.offset), at()));
                    out.push((i32c(store.kind.width() as u64), at()));
                    out.push((ir::Call { func: self.hooks.mem }.into(), at()));
                    out.push((ir::LocalGet { local: a }.into(), at()));
                    out.push((ir::LocalGet { local: v }.into(), at()));
                }
                Instr::MemoryCopy(_) | Instr::MemoryFill(_) => {
                    let copy = matches!(instr, Instr::MemoryCopy(_));
                    let (d, s, n) = (self.local(ValType::I32, 2), self.local(ValType::I32, 3), self.local(ValType::I32, 4));
                    out.push((ir::LocalSet { local: n }.into(), at()));
                    out.push((ir::LocalSet { local: s }.into(), at()));
                    out.push((ir::LocalSet { local: d }.into(), at()));
                    for p in if copy { vec![d, s] } else { vec![d] } {
                        out.push((ir::LocalGet { local: p }.into(), at()));
                        out.push((ir::LocalGet { local: n }.into(), at()));
                        out.push((ir::Call { func: self.hooks.range }.into(), at()));
                    }
                    for p in [d, s, n] {
                        out.push((ir::LocalGet { local: p }.into(), at()));
                    }
                }
                _ => {}
            }
            out.push((instr, loc));
        }
        seq.instrs = out;
    }

}

fn load_width(kind: &LoadKind) -> u64 {
    u64::from(kind.width())
}

fn store_type(kind: &StoreKind) -> ValType {
    match kind {
        StoreKind::I32 { .. } | StoreKind::I32_8 { .. } | StoreKind::I32_16 { .. } => ValType::I32,
        StoreKind::I64 { .. } | StoreKind::I64_8 { .. } | StoreKind::I64_16 { .. } | StoreKind::I64_32 { .. } => ValType::I64,
        StoreKind::F32 => ValType::F32,
        StoreKind::F64 => ValType::F64,
        StoreKind::V128 => ValType::V128,
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
