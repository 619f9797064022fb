//! The browser's door into the simulator (wasm-bindgen). The console's simulator page loads the
//! generated module (`tollgate_simulator.js` + `_bg.wasm`, embedded in the counter binary) and
//! calls [`simulate`] with the report documents it fetched; the answer is the same JSON text the
//! CLI prints with `--format json`.

use wasm_bindgen::prelude::*;

/// `ledger`: `GET /admin/reports/requests`; `routing`: the candidate routing section; `pricing`:
/// a pricing section or `""` (bundled prices); `budgets`: `GET /admin/budgets` or `""`.
#[wasm_bindgen]
pub fn simulate(ledger: &str, routing: &str, pricing: &str, budgets: &str) -> Result<String, JsValue> {
    let pricing = Some(pricing).filter(|p| !p.trim().is_empty());
    crate::simulate_json(ledger, routing, pricing, budgets).map_err(|e| JsValue::from_str(&e))
}

/// Checks a candidate routing table (and pricing) without replaying anything: `""` when valid,
/// else the error naming the field.
#[wasm_bindgen]
pub fn check_candidate(routing: &str, pricing: &str) -> String {
    let pricing = Some(pricing).filter(|p| !p.trim().is_empty());
    match crate::Candidate::from_json(routing, pricing) {
        Ok(_) => String::new(),
        Err(e) => e,
    }
}
