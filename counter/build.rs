//! Embeds the policy simulator's browser build (wasm-bindgen output of `simulator/`) in the
//! console when it has been built (`make simulator` writes `$CARGO_TARGET_DIR/simulator-pkg`).
//! Without it the counter still builds; the console's simulator page then says how to build it.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=TOLLGATE_SIMULATOR_PKG");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let pkg = std::env::var("TOLLGATE_SIMULATOR_PKG")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("CARGO_TARGET_DIR").map(|t| PathBuf::from(t).join("simulator-pkg")))
        .unwrap_or_else(|_| manifest.join("../target/simulator-pkg"));
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    let mut built = true;
    for file in ["tollgate_simulator.js", "tollgate_simulator_bg.wasm"] {
        let src = pkg.join(file);
        println!("cargo:rerun-if-changed={}", src.display());
        let bytes = std::fs::read(&src).unwrap_or_else(|_| {
            built = false;
            Vec::new()
        });
        if let Err(e) = std::fs::write(out.join(file), bytes) {
            println!("cargo:warning=cannot write {file} to OUT_DIR: {e}");
        }
    }
    if !built {
        println!("cargo:warning=the simulator's browser build is not in {} (run `make simulator`); the console's simulator page will say it is missing", pkg.display());
    }
}
