//! Finding `tollgate.wasm` and compiling it once.
//!
//! Compiling the release module with cranelift takes seconds on a small machine, and every test
//! binary would otherwise pay it for every gateway. So: one [`Engine`] per process, one compiled
//! [`Module`] per wasm file per process, and an on-disk cache of the compiled artifact keyed by
//! the wasm bytes and the engine's compatibility hash, so a second `cargo test` run does not
//! compile at all.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use wasmtime::{Config, Engine, Module};

/// The engine every VM runs on: cranelift, fuel metering on (fuel = wasm instructions executed,
/// which is what the instruction-count benchmark reports).
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.consume_fuel(true);
        #[cfg(feature = "profile")]
        if std::env::var_os("TOLLGATE_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        Engine::new(&config).unwrap_or_else(|e| panic!("host-tests: cannot create the wasmtime engine: {e}"))
    })
}

/// Where the filter is: `$TOLLGATE_WASM`, else `$CARGO_TARGET_DIR/wasm32-wasip1/release/tollgate.wasm`,
/// else the workspace's own `target/`.
pub fn tollgate_wasm_path() -> PathBuf {
    if let Some(path) = std::env::var_os("TOLLGATE_WASM") {
        return PathBuf::from(path);
    }
    let relative = Path::new("wasm32-wasip1").join("release").join("tollgate.wasm");
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let candidate = PathBuf::from(dir).join(&relative);
        if candidate.exists() {
            return candidate;
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join(relative)
}

/// The compiled filter, compiled at most once per process.
pub fn tollgate_module() -> Module {
    load_module(&tollgate_wasm_path())
}

/// Any proxy-wasm module (e.g. a no-op filter for comparison), compiled at most once per process.
pub fn load_module(path: &Path) -> Module {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Module>>> = OnceLock::new();
    let modules = MODULES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut modules = modules.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(module) = modules.get(path) {
        return module.clone();
    }
    let bytes = std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "host-tests: cannot read the filter at {}: {e}.\n\
             Build it first with `make wasm` (or point TOLLGATE_WASM at a built tollgate.wasm).",
            path.display()
        )
    });
    let module = compile_cached(&bytes)
        .unwrap_or_else(|e| panic!("host-tests: {} is not a loadable wasm module: {e}", path.display()));
    modules.insert(path.to_path_buf(), module.clone());
    module
}

fn cache_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target"));
    target.join("host-tests-cache")
}

fn compile_cached(bytes: &[u8]) -> wasmtime::Result<Module> {
    let engine = engine();
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let file = cache_dir().join(format!("{:016x}.cwasm", hasher.finish()));
    if file.exists() {
        // SAFETY: the file was written below by `Engine::precompile_module` for this engine's
        // configuration (its hash is in the name); a stale or foreign file fails to deserialize
        // and we fall back to compiling.
        if let Ok(module) = unsafe { Module::deserialize_file(engine, &file) } {
            return Ok(module);
        }
    }
    let compiled = engine.precompile_module(bytes)?;
    // The cache is an optimisation: a read-only target dir only costs time.
    if std::fs::create_dir_all(cache_dir()).is_ok() {
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &compiled).is_ok() {
            let _ = std::fs::rename(&tmp, &file);
        }
    }
    // SAFETY: `compiled` was just produced by this engine.
    unsafe { Module::deserialize(engine, &compiled) }
}
