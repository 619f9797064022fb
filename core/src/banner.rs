//! The budget banner (issue 13 §3): a one-line note of the principal's budget status, put right
//! after `<body>` of HTML pages from a configured internal chat UI (e.g. an internal Open WebUI),
//! so people see what their team has used where they spend it.
//!
//! This module decides, on plain data: which requests are on a banner route ([`Banner::covers`]),
//! which responses may be rewritten ([`classify`]), which budget the banner speaks of
//! ([`fullest`]) and its text ([`Banner::text`]). The plugin streams the page through lol_html
//! and inserts the text (escaped there) after the `<body>` start tag; nothing is buffered whole.
//!
//! ```json
//! "banner": {
//!   "routes": [{"host": "chat.internal", "path_prefix": "/"}],
//!   "template": "{scope}: {pct} % of the budget used"
//! }
//! ```
//!
//! Without a `banner` section nothing here runs. The status comes from enforcement's lease book,
//! so without `enforcement` (or before the gateway holds a lease on any of the principal's
//! budgets) there is no status and no banner.

use crate::protocol::{parse_scope_key, ScopeKind};
use crate::routing::Glob;
use crate::section::{parse_at, ConfigError};
use serde::Deserialize;

/// The default `banner.template`.
pub const DEFAULT_TEMPLATE: &str = "Budget: {pct} % used ({scope})";
/// Longest `banner.template` accepted, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 500;

/// `banner`, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BannerConfig {
    /// Each one a [`RouteConfig`], parsed on its own so an error names its index.
    pub routes: Vec<serde_json::Value>,
    #[serde(default)]
    pub template: Option<String>,
}

/// `banner.routes[i]`, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A glob (`*` any run) on the request's host, without port, case-insensitive; absent = any.
    #[serde(default)]
    pub host: Option<String>,
    /// The path (query excluded) starts with this; `"/"` = every page.
    pub path_prefix: String,
}

/// The compiled `banner` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Banner {
    routes: Vec<Route>,
    template: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    host: Option<Glob>,
    path_prefix: String,
}

/// A piece of the template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Pct,
    Scope,
    Budget,
}

/// One budget's status on the principal's chain, as the lease book knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetStatus {
    /// The scope key (`team:platform`).
    pub scope: String,
    /// The counter's budget id.
    pub budget_id: String,
    /// Utilization in whole percent, rounded down.
    pub pct: u32,
}

/// What to do with a response on a banner route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// A 200 HTML page in UTF-8 (or with no charset named), not compressed: rewrite it.
    Rewrite,
    /// An HTML page, but compressed: passed through untouched (counted).
    Encoded,
    /// Anything else: passed through untouched.
    Untouched,
}

impl Banner {
    /// Validates `banner` (`path` is its place in the config, for error messages).
    pub fn compile(raw: BannerConfig, path: &str) -> Result<Banner, ConfigError> {
        if raw.routes.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.routes"),
                "give at least one route, e.g. {\"host\": \"chat.internal\", \"path_prefix\": \"/\"}",
            ));
        }
        let mut routes = Vec::with_capacity(raw.routes.len());
        for (i, route) in raw.routes.into_iter().enumerate() {
            let at = format!("{path}.routes[{i}]");
            let route: RouteConfig = parse_at(route, &at)?;
            let host = match route.host {
                None => None,
                Some(h) => {
                    let h = h.trim().to_ascii_lowercase();
                    if h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.*_".contains(&b)) {
                        return Err(ConfigError::new(
                            format!("{at}.host"),
                            format!("\"{h}\" is not a host name or glob; write e.g. \"chat.internal\" or \"*.chat.internal\" (no port)"),
                        ));
                    }
                    Some(Glob::new(h))
                }
            };
            if !route.path_prefix.starts_with('/') || route.path_prefix.contains(['?', '#']) {
                return Err(ConfigError::new(
                    format!("{at}.path_prefix"),
                    format!("\"{}\" must start with '/' and hold no query or fragment, e.g. \"/\"", route.path_prefix),
                ));
            }
            routes.push(Route { host, path_prefix: route.path_prefix });
        }
        let text = raw.template.unwrap_or_else(|| DEFAULT_TEMPLATE.to_owned());
        let template = parse_template(&text).map_err(|problem| ConfigError::new(format!("{path}.template"), problem))?;
        Ok(Banner { routes, template })
    }

    /// Whether a request for `path` on `authority` (the `:authority` header, port allowed) gets
    /// the banner on its HTML response.
    pub fn covers(&self, authority: &str, path: &str) -> bool {
        let host = host_of(authority);
        let path = path.split(['?', '#']).next().unwrap_or_default();
        self.routes.iter().any(|r| {
            path.starts_with(r.path_prefix.as_str()) && r.host.as_ref().is_none_or(|g| g.matches(&host))
        })
    }

    /// The banner's text for `status` (plain text: the plugin escapes it as it inserts it).
    pub fn text(&self, status: &BudgetStatus) -> String {
        let mut out = String::new();
        for part in &self.template {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Pct => out.push_str(&status.pct.to_string()),
                Part::Scope => out.push_str(&scope_label(&status.scope)),
                Part::Budget => out.push_str(&status.budget_id),
            }
        }
        out
    }
}

/// The host of an `:authority` value: lowercase, without port (`[::1]:80` → `[::1]`).
fn host_of(authority: &str) -> String {
    let authority = authority.trim();
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or(authority)
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    host.to_ascii_lowercase()
}

/// A scope key as people read it: `team:platform` → `team platform`,
/// `cost_center:cc-1` → `cost center cc-1`.
pub fn scope_label(scope: &str) -> String {
    match parse_scope_key(scope) {
        Some((kind, id)) => {
            let kind = match kind {
                ScopeKind::CostCenter => "cost center",
                ScopeKind::Key => "key",
                other => other.as_str(),
            };
            format!("{kind} {id}")
        }
        None => scope.to_owned(),
    }
}

fn parse_template(text: &str) -> Result<Vec<Part>, String> {
    if text.trim().is_empty() {
        return Err("must not be empty; e.g. \"{scope}: {pct} % of the budget used\"".to_owned());
    }
    if text.len() > MAX_TEMPLATE_BYTES {
        return Err(format!("longer than {MAX_TEMPLATE_BYTES} bytes; a banner is one short line"));
    }
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let (literal, after) = rest.split_at(open);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal.to_owned()));
        }
        let after = after.get(1..).unwrap_or_default();
        let Some(close) = after.find('}') else {
            return Err("a '{' is never closed; placeholders are {pct}, {scope} and {budget}".to_owned());
        };
        let name = after.get(..close).unwrap_or_default();
        parts.push(match name {
            "pct" => Part::Pct,
            "scope" => Part::Scope,
            "budget" => Part::Budget,
            other => return Err(format!("unknown placeholder {{{other}}}; use {{pct}}, {{scope}} or {{budget}}")),
        });
        rest = after.get(close + 1..).unwrap_or_default();
    }
    if rest.contains('}') {
        return Err("a '}' without its '{'; placeholders are {pct}, {scope} and {budget}".to_owned());
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_owned()));
    }
    Ok(parts)
}

/// What to do with a response on a banner route, from its status and headers.
///
/// Only a 200 `text/html` page is rewritten, and only when its charset is UTF-8 or unnamed (the
/// inserted text is UTF-8) and it is not compressed (`content-encoding` absent or `identity`).
pub fn classify(status: u16, content_type: Option<&str>, content_encoding: Option<&str>) -> Response {
    let Some(content_type) = content_type else { return Response::Untouched };
    let mut params = content_type.split(';');
    let essence = params.next().unwrap_or_default().trim();
    if status != 200 || !essence.eq_ignore_ascii_case("text/html") {
        return Response::Untouched;
    }
    let utf8 = params.all(|p| match p.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            let value = value.trim().trim_matches('"');
            value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    });
    if !utf8 {
        return Response::Untouched;
    }
    match content_encoding.map(str::trim) {
        None | Some("") => Response::Rewrite,
        Some(e) if e.eq_ignore_ascii_case("identity") => Response::Rewrite,
        Some(_) => Response::Encoded,
    }
}

/// The budget the banner speaks of: the highest utilization on the chain; on a tie the narrower
/// scope (the chain runs from the organisation down to the task, so the later one). `None` when
/// the gateway knows no budget on the chain.
pub fn fullest(statuses: Vec<BudgetStatus>) -> Option<BudgetStatus> {
    let mut best: Option<BudgetStatus> = None;
    for s in statuses {
        if best.as_ref().is_none_or(|b| s.pct >= b.pct) {
            best = Some(s);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn banner(v: serde_json::Value) -> Result<Banner, String> {
        let raw: BannerConfig = crate::section::parse_at(v, "banner").map_err(|e| e.to_string())?;
        Banner::compile(raw, "banner").map_err(|e| e.to_string())
    }

    fn status(scope: &str, budget: &str, pct: u32) -> BudgetStatus {
        BudgetStatus { scope: scope.into(), budget_id: budget.into(), pct }
    }

    #[test]
    fn config_errors_name_the_field() {
        for (config, expected) in [
            (json!({}), "banner: missing field `routes`"),
            (json!({"routes": []}), "banner.routes: give at least one route"),
            (json!({"routes": [{"host": "chat.internal"}]}), "banner.routes[0]: missing field `path_prefix`"),
            (json!({"routes": [{"path_prefix": "/", "hosts": "x"}]}), "banner.routes[0]: unknown field `hosts`"),
            (json!({"routes": [{"path_prefix": "chat"}]}), "banner.routes[0].path_prefix: \"chat\" must start with '/'"),
            (json!({"routes": [{"path_prefix": "/", "host": "chat.internal:8080"}]}), "banner.routes[0].host: \"chat.internal:8080\" is not a host name"),
            (json!({"routes": [{"path_prefix": "/"}, {"path_prefix": "/", "host": ""}]}), "banner.routes[1].host"),
            (json!({"routes": [{"path_prefix": "/"}], "template": "{pct} of {team}"}), "banner.template: unknown placeholder {team}; use {pct}, {scope} or {budget}"),
            (json!({"routes": [{"path_prefix": "/"}], "template": "{pct"}), "banner.template: a '{' is never closed"),
            (json!({"routes": [{"path_prefix": "/"}], "template": "pct}"}), "banner.template: a '}' without its '{'"),
            (json!({"routes": [{"path_prefix": "/"}], "template": "  "}), "banner.template: must not be empty"),
            (json!({"routes": [{"path_prefix": "/"}], "template": "x".repeat(501)}), "banner.template: longer than 500 bytes"),
            (json!({"routes": [{"path_prefix": "/"}], "colour": "red"}), "unknown field `colour`"),
        ] {
            let err = banner(config.clone()).expect_err(&config.to_string());
            assert!(err.contains(expected), "{config}: {err}");
        }
    }

    #[test]
    fn routes_match_host_without_port_and_path_prefix() {
        let b = banner(json!({"routes": [
            {"host": "Chat.Internal", "path_prefix": "/"},
            {"host": "*.ui.internal", "path_prefix": "/app"},
            {"path_prefix": "/webui/"}
        ]}))
        .unwrap();
        for (authority, path, covered) in [
            ("chat.internal", "/", true),
            ("CHAT.internal:8080", "/c/123?x=1", true),
            ("chat.internal.evil", "/", false),
            ("a.ui.internal", "/app/page", true),
            ("a.ui.internal", "/other", false),
            ("ui.internal", "/app", false),
            ("anything", "/webui/index.html", true),
            ("anything", "/webui", false),
            ("anything", "/x?/webui/", false),
            ("[::1]:80", "/webui/", true),
        ] {
            assert_eq!(b.covers(authority, path), covered, "{authority} {path}");
        }
    }

    #[test]
    fn responses_rewritten_only_for_plain_html_200() {
        use Response::*;
        for (status, ct, ce, expected) in [
            (200, Some("text/html"), None, Rewrite),
            (200, Some("text/html; charset=utf-8"), None, Rewrite),
            (200, Some("Text/HTML;Charset=\"UTF-8\""), Some("identity"), Rewrite),
            (200, Some("text/html; charset=iso-8859-1"), None, Untouched),
            (200, Some("text/html"), Some("gzip"), Encoded),
            (200, Some("text/html; charset=utf-8"), Some("br"), Encoded),
            (200, Some("text/htmlx"), None, Untouched),
            (200, Some("application/json"), None, Untouched),
            (200, Some("text/plain"), None, Untouched),
            (200, None, None, Untouched),
            (404, Some("text/html"), None, Untouched),
            (304, Some("text/html"), None, Untouched),
        ] {
            assert_eq!(classify(status, ct, ce), expected, "{status} {ct:?} {ce:?}");
        }
    }

    #[test]
    fn text_fills_the_template() {
        let s = status("team:platform", "platform-monthly", 82);
        let default = banner(json!({"routes": [{"path_prefix": "/"}]})).unwrap();
        assert_eq!(default.text(&s), "Budget: 82 % used (team platform)");
        let custom = banner(json!({"routes": [{"path_prefix": "/"}], "template": "{scope}: {pct} % of {budget} used ({pct})"})).unwrap();
        assert_eq!(custom.text(&s), "team platform: 82 % of platform-monthly used (82)");
        // Values are inserted as they are: escaping is the plugin's (lol_html's text content).
        assert_eq!(default.text(&status("team:<script>", "b", 7)), "Budget: 7 % used (team <script>)");
    }

    #[test]
    fn scope_labels() {
        for (key, label) in [
            ("team:platform", "team platform"),
            ("cost_center:cc-1", "cost center cc-1"),
            ("workflow:platform/ci", "workflow platform/ci"),
            ("key:key-alice", "key key-alice"),
            ("odd", "odd"),
        ] {
            assert_eq!(scope_label(key), label);
        }
    }

    #[test]
    fn the_fullest_budget_is_shown_ties_to_the_narrower_scope() {
        assert_eq!(fullest(vec![]), None);
        let chain = vec![status("org:acme", "org", 40), status("team:platform", "team", 82), status("user:bob", "user", 10)];
        assert_eq!(fullest(chain), Some(status("team:platform", "team", 82)));
        let tie = vec![status("org:acme", "org", 50), status("team:platform", "team", 50)];
        assert_eq!(fullest(tie), Some(status("team:platform", "team", 50)));
    }
}
