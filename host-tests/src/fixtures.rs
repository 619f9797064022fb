//! Test data: a deterministic random generator for the randomized suites.

/// SplitMix64: tiny, deterministic, good enough to generate test inputs from a fixed seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    /// Random chunk sizes summing to at least `len` (1..=max each).
    pub fn chunk_sizes(&mut self, len: usize, max: usize) -> Vec<usize> {
        let mut sizes = Vec::new();
        let mut total = 0;
        while total < len {
            let s = 1 + self.below(max.max(1));
            sizes.push(s);
            total += s;
        }
        sizes
    }
}

/// The host's own test filter (`fixtures/probe-filter`), built once per process with cargo (two
/// seconds) into `$CARGO_TARGET_DIR/probe`, and compiled once.
pub fn probe_module() -> wasmtime::Module {
    use std::sync::OnceLock;
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| here.join("..").join("target"))
            .join("probe");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--quiet", "--release", "--target", "wasm32-wasip1", "--manifest-path"])
            .arg(here.join("fixtures/probe-filter/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo to build the probe filter: {e}"));
        assert!(status.success(), "building host-tests/fixtures/probe-filter failed (is the wasm32-wasip1 target installed?)");
        target.join("wasm32-wasip1/release/probe_filter.wasm")
    });
    crate::module::load_module(path)
}
