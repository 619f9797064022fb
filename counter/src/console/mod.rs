//! The web console at `/console/`: plain HTML, CSS and one small script, embedded in the binary
//! (no CDN, works offline), plus the policy simulator's wasm-bindgen build (`build.rs` copies it
//! from `$CARGO_TARGET_DIR/simulator-pkg`).
//!
//! The assets are public; every number on a page comes from the admin API the CLI uses
//! (`/admin/reports/spend`, `/admin/reports/utilization`, `/admin/budgets`, `/admin/exemptions`,
//! `/admin/reports/requests`, and the governance endpoints: `/admin/workflows`,
//! `/admin/exemption-requests`, `/admin/audit`, `/admin/events`, `/admin/outcomes`,
//! `/admin/reports/{outcomes,trend,model-mix,review}`), fetched by the page with the token the user
//! signed in with (any admin-side role; kept in `sessionStorage`, sent as `Authorization: Bearer`).
//! So the console needs no session store or auth of its own, cannot show what the token could not
//! fetch, and cannot do what its role may not (the server's 403 is shown as it answered). Tables of
//! endpoints that offer `format=csv` download that CSV, so the file is the CLI's. A strict
//! Content-Security-Policy keeps scripts to these files (the page writes values as text, never as
//! HTML). docs/console.md is the user's guide.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("assets/index.html");
const CONSOLE_JS: &str = include_str!("assets/console.js");
const CONSOLE_CSS: &str = include_str!("assets/console.css");
const SIMULATOR_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tollgate_simulator.js"));
const SIMULATOR_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tollgate_simulator_bg.wasm"));

/// Scripts only from this origin (and the simulator's wasm), no inline script, no framing.
const CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes (stateless: the pages call the admin API themselves).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/console", get(|| async { Redirect::permanent("/console/") }))
        .route("/console/", get(|| async { asset("index.html") }))
        .route("/console/{*path}", get(|Path(path): Path<String>| async move { asset(&path) }))
}

/// Whether the simulator's browser build was embedded.
pub fn simulator_built() -> bool {
    !SIMULATOR_WASM.is_empty()
}

fn asset(path: &str) -> Response {
    let (body, kind): (&'static [u8], &'static str) = match path {
        "index.html" => (INDEX_HTML.as_bytes(), "text/html; charset=utf-8"),
        "console.js" => (CONSOLE_JS.as_bytes(), "text/javascript; charset=utf-8"),
        "console.css" => (CONSOLE_CSS.as_bytes(), "text/css; charset=utf-8"),
        "sim/tollgate_simulator.js" if simulator_built() => (SIMULATOR_JS, "text/javascript; charset=utf-8"),
        "sim/tollgate_simulator_bg.wasm" if simulator_built() => (SIMULATOR_WASM, "application/wasm"),
        _ => return crate::server::error(StatusCode::NOT_FOUND, "not_found", format!("no console asset `{path}`")),
    };
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_served_with_their_type_and_a_strict_policy_and_nothing_else_is() {
        for (path, kind) in [("index.html", "text/html"), ("console.js", "text/javascript"), ("console.css", "text/css")] {
            let r = asset(path);
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert!(r.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with(kind), "{path}");
            assert!(r.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("script-src 'self'"));
        }
        for path in ["../Cargo.toml", "mod.rs", "assets/index.html", ""] {
            assert_eq!(asset(path).status(), StatusCode::NOT_FOUND, "{path}");
        }
    }

    #[test]
    fn the_page_loads_only_embedded_files() {
        // No CDN: every src/href in the page is relative to /console/ (the SVG namespace is a
        // name, not a fetch).
        let js = CONSOLE_JS.replace("http://www.w3.org/2000/svg", "");
        for needle in ["http://", "https://", "//cdn"] {
            assert!(!INDEX_HTML.contains(needle), "index.html refers to {needle}");
            assert!(!js.contains(needle), "console.js refers to {needle}");
        }
    }
}
