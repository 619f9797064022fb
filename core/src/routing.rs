//! The routing table: ordered rules, first match wins.
//!
//! A rule matches on the principal (use case, team, user, key id, tier), the dialect, the
//! requested model (exact or `*` glob) and, once enforcement supplies it, the highest budget
//! utilization on the principal's chain (`budget_utilization_at_least_pct`). Its action is one of:
//! - route: `set_model` (the body's `model`, or the path segment for Azure / Gemini) and/or
//!   `set_headers` (e.g. `x-tollgate-provider: anthropic`, which an Envoy route matches on to pick
//!   the provider cluster; Envoy re-evaluates the route when a filter changes request headers);
//! - `deny`: 403 in the dialect's error shape, naming the rule.
//!
//! A rule with neither action stops the search and forwards the request as it is (an exemption).
//!
//! **Aliases.** A requested model starting with `tier:` or `tollgate:` (e.g. `tier:premium`,
//! `tollgate:auto`) names no real model; some rule must resolve it with `set_model`, else the
//! request is refused with 400 — an alias is never forwarded upstream.
//!
//! [`plan`] turns a recognised request into what the filter does with it: principal, routed
//! model, body and path edits, headers to set.

pub mod plan;

use crate::attribution::{Field, OneOrMany};
use crate::section::ConfigError;
use crate::dialect::Dialect;
use crate::errors::{ErrorKind, Failure};
use crate::protocol::Principal;
use serde::Deserialize;
use std::collections::BTreeMap;

/// `routing` in the filter config, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    #[serde(default)]
    pub rules: Vec<serde_json::Value>,
}

/// One rule, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matcher: Option<serde_json::Value>,
    #[serde(default)]
    pub set_model: Option<String>,
    #[serde(default)]
    pub set_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub deny: bool,
    /// For `deny`: what the client is told (the rule name is always included).
    #[serde(default)]
    pub message: Option<String>,
}

/// A rule's `match`, as written. Every condition given must hold; each takes one value or a list
/// (any of them), and `*` in a value matches any run of characters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    pub use_case: Option<OneOrMany>,
    pub team: Option<OneOrMany>,
    pub user: Option<OneOrMany>,
    pub key_id: Option<OneOrMany>,
    pub tier: Option<OneOrMany>,
    pub org: Option<OneOrMany>,
    pub cost_center: Option<OneOrMany>,
    pub task: Option<OneOrMany>,
    pub dialect: Option<OneOrMany>,
    /// The model the client asked for (before routing), e.g. `gpt-4o*` or `tier:premium`.
    pub model: Option<OneOrMany>,
    /// Matches when the highest utilization (percent of limit) among the principal's budgets is
    /// at least this. Supplied by enforcement; without it (metering only) the rule never matches.
    pub budget_utilization_at_least_pct: Option<u32>,
}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Route { set_model: Option<String>, set_headers: Vec<(String, String)> },
    Deny { message: String },
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    principal: Vec<(Field, Vec<Glob>)>,
    dialects: Option<Vec<Dialect>>,
    models: Option<Vec<Glob>>,
    min_utilization_pct: Option<u32>,
    pub action: Action,
}

/// The compiled, ordered table.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    rules: Vec<Rule>,
}

/// What routing looks at.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput<'a> {
    pub principal: &'a Principal,
    pub dialect: Dialect,
    pub requested_model: &'a str,
    /// Highest budget utilization on the principal's chain, percent; `None` without enforcement.
    pub budget_utilization_pct: Option<u32>,
}

/// The outcome of routing a request that may proceed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed<'a> {
    /// The rule that matched, if any.
    pub rule: Option<&'a str>,
    /// The model the upstream will be asked for.
    pub model: String,
    /// Request headers to set (the route Envoy picks may depend on them).
    pub set_headers: &'a [(String, String)],
}

/// Whether a model name is an alias that routing must resolve.
pub fn is_alias(model: &str) -> bool {
    model.starts_with("tier:") || model.starts_with("tollgate:")
}

impl RoutingTable {
    /// Validates `routing` (at config path `path`).
    pub fn compile(raw: RoutingConfig, path: &str) -> Result<RoutingTable, ConfigError> {
        let mut rules: Vec<Rule> = Vec::with_capacity(raw.rules.len());
        for (i, value) in raw.rules.into_iter().enumerate() {
            let at = format!("{path}.rules[{i}]");
            let rule: RuleConfig = crate::section::parse_at(value, &at)?;
            if rule.name.trim().is_empty() {
                return Err(ConfigError::new(format!("{at}.name"), "must not be empty; it names the rule in errors and logs"));
            }
            if rules.iter().any(|r| r.name == rule.name) {
                return Err(ConfigError::new(format!("{at}.name"), format!("\"{}\" is used by an earlier rule; names must be unique", rule.name)));
            }
            rules.push(compile_rule(rule, &at)?);
        }
        Ok(RoutingTable { rules })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// First matching rule decides. Errors are the client-facing 403 (deny) and 400 (alias no rule
    /// resolves).
    pub fn route(&self, input: RouteInput<'_>) -> Result<Routed<'_>, Failure> {
        let matched = self.rules.iter().find(|r| r.matches(&input));
        let (rule, set_model, set_headers): (Option<&str>, Option<&str>, &[(String, String)]) = match matched {
            Some(rule) => match &rule.action {
                Action::Deny { message } => {
                    return Err(Failure::new(ErrorKind::Denied, format!("denied by routing rule \"{}\": {message}", rule.name)));
                }
                Action::Route { set_model, set_headers } => (Some(rule.name.as_str()), set_model.as_deref(), set_headers.as_slice()),
            },
            None => (None, None, &[]),
        };
        let model = match set_model {
            Some(model) => model.to_owned(),
            None if is_alias(input.requested_model) => {
                return Err(Failure::new(
                    ErrorKind::InvalidRequest,
                    format!(
                        "model \"{}\" is an alias and no routing rule resolves it for this caller; send a concrete model name, or ask the gateway operator to add a routing rule for it",
                        input.requested_model
                    ),
                )
                .with_param("model"));
            }
            None => input.requested_model.to_owned(),
        };
        Ok(Routed { rule, model, set_headers })
    }
}

impl Rule {
    fn matches(&self, input: &RouteInput<'_>) -> bool {
        let principal_ok = self.principal.iter().all(|(field, globs)| {
            field.get(input.principal).is_some_and(|value| globs.iter().any(|g| g.matches(value)))
        });
        principal_ok
            && self.dialects.as_ref().is_none_or(|ds| ds.contains(&input.dialect))
            && self.models.as_ref().is_none_or(|gs| gs.iter().any(|g| g.matches(input.requested_model)))
            && self.min_utilization_pct.is_none_or(|min| input.budget_utilization_pct.is_some_and(|u| u >= min))
    }
}

fn compile_rule(rule: RuleConfig, at: &str) -> Result<Rule, ConfigError> {
    let matcher: MatchConfig = match rule.matcher {
        Some(value) => crate::section::parse_at(value, &format!("{at}.match"))?,
        None => MatchConfig::default(),
    };
    let globs = |values: Option<OneOrMany>, name: &str| -> Result<Option<Vec<Glob>>, ConfigError> {
        let Some(values) = values else { return Ok(None) };
        let values = values.into_vec();
        if values.is_empty() || values.iter().any(|v| v.is_empty()) {
            return Err(ConfigError::new(format!("{at}.match.{name}"), "give one or more non-empty values"));
        }
        Ok(Some(values.into_iter().map(Glob::new).collect()))
    };
    let mut principal = Vec::new();
    for (field, value) in [
        (Field::UseCase, matcher.use_case),
        (Field::Team, matcher.team),
        (Field::User, matcher.user),
        (Field::KeyId, matcher.key_id),
        (Field::Tier, matcher.tier),
        (Field::Org, matcher.org),
        (Field::CostCenter, matcher.cost_center),
        (Field::Task, matcher.task),
    ] {
        if let Some(g) = globs(value, field.as_str())? {
            principal.push((field, g));
        }
    }
    let dialects = match matcher.dialect {
        None => None,
        Some(names) => {
            let mut out = Vec::new();
            for name in names.into_vec() {
                out.push(Dialect::parse(&name).ok_or_else(|| {
                    ConfigError::new(format!("{at}.match.dialect"), format!("unknown dialect \"{name}\"; expected one of openai, azure_openai, anthropic, gemini"))
                })?);
            }
            Some(out)
        }
    };
    let models = globs(matcher.model, "model")?;
    if let Some(pct) = matcher.budget_utilization_at_least_pct {
        if pct > 1000 {
            return Err(ConfigError::new(format!("{at}.match.budget_utilization_at_least_pct"), "a percentage of the budget's limit, 0..=1000"));
        }
    }
    let action = if rule.deny {
        if rule.set_model.is_some() || !rule.set_headers.is_empty() {
            return Err(ConfigError::new(format!("{at}.deny"), "a deny rule cannot also set_model or set_headers; split it into two rules"));
        }
        Action::Deny { message: rule.message.unwrap_or_else(|| "ask the gateway operator for access to this model".into()) }
    } else {
        if rule.message.is_some() {
            return Err(ConfigError::new(format!("{at}.message"), "only a deny rule has a message; add \"deny\": true or remove it"));
        }
        if let Some(model) = &rule.set_model {
            if model.trim().is_empty() || is_alias(model) {
                return Err(ConfigError::new(format!("{at}.set_model"), "must name a concrete model (not empty, not a tier:/tollgate: alias)"));
            }
        }
        let mut set_headers = Vec::new();
        for (name, value) in rule.set_headers {
            let lower = name.to_ascii_lowercase();
            let valid_name = !lower.is_empty() && lower.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
            if !valid_name || matches!(lower.as_str(), "content-length" | "transfer-encoding" | "connection" | "host") {
                return Err(ConfigError::new(
                    format!("{at}.set_headers.{name}"),
                    "not a header a rule may set; use a plain header name such as x-tollgate-provider",
                ));
            }
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(ConfigError::new(format!("{at}.set_headers.{name}"), "header values cannot contain CR, LF or NUL"));
            }
            set_headers.push((lower, value));
        }
        Action::Route { set_model: rule.set_model, set_headers }
    };
    Ok(Rule { name: rule.name, principal, dialects, models, min_utilization_pct: matcher.budget_utilization_at_least_pct, action })
}

/// A pattern where `*` matches any run of characters (including none); no other metacharacters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    parts: Vec<String>,
    wildcard: bool,
}

impl Glob {
    pub fn new(pattern: String) -> Glob {
        if !pattern.contains('*') {
            return Glob { parts: vec![pattern], wildcard: false };
        }
        Glob { parts: pattern.split('*').map(str::to_owned).collect(), wildcard: true }
    }

    pub fn matches(&self, text: &str) -> bool {
        if !self.wildcard {
            return self.parts.first().is_some_and(|p| p == text);
        }
        let Some((first, rest)) = self.parts.split_first() else { return true };
        let Some((last, middle)) = rest.split_last() else { return text == first };
        let Some(mut remaining) = text.strip_prefix(first.as_str()) else { return false };
        for part in middle {
            match remaining.find(part.as_str()) {
                Some(at) => remaining = remaining.get(at + part.len()..).unwrap_or_default(),
                None => return false,
            }
        }
        remaining.len() >= last.len() && remaining.ends_with(last.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn table(rules: serde_json::Value) -> RoutingTable {
        RoutingTable::compile(serde_json::from_value(json!({ "rules": rules })).unwrap(), "routing").unwrap()
    }

    fn err(rules: serde_json::Value) -> String {
        RoutingTable::compile(serde_json::from_value(json!({ "rules": rules })).unwrap(), "routing").unwrap_err().to_string()
    }

    fn route<'a>(t: &'a RoutingTable, p: &'a Principal, dialect: Dialect, model: &'a str, util: Option<u32>) -> Result<Routed<'a>, Failure> {
        t.route(RouteInput { principal: p, dialect, requested_model: model, budget_utilization_pct: util })
    }

    fn who(team: &str, tier: &str) -> Principal {
        Principal { team: Some(team.into()), tier: Some(tier.into()), ..Default::default() }
    }

    #[test]
    fn globs_match_like_shell_stars() {
        let check = |pattern: &str, text: &str, expected: bool| assert_eq!(Glob::new(pattern.into()).matches(text), expected, "{pattern} ~ {text}");
        check("gpt-4o", "gpt-4o", true);
        check("gpt-4o", "gpt-4o-mini", false);
        check("gpt-4o*", "gpt-4o-mini", true);
        check("*mini", "gpt-4o-mini", true);
        check("claude-*-4*", "claude-opus-4-1", true);
        check("claude-*-4*", "claude-3-haiku", false);
        check("*", "", true);
        check("a*a", "a", false);
        check("a*a", "aa", true);
    }

    #[test]
    fn first_matching_rule_wins() {
        let t = table(json!([
            {"name": "interns-no-opus", "match": {"team": "interns", "model": "claude-opus*"}, "deny": true, "message": "use claude-sonnet-4"},
            {"name": "premium", "match": {"tier": "premium", "model": "tier:premium"}, "set_model": "claude-opus-4", "set_headers": {"x-tollgate-provider": "anthropic"}},
            {"name": "everyone-premium", "match": {"model": "tier:premium"}, "set_model": "claude-sonnet-4"},
        ]));
        let (research_premium, research_standard, interns) = (who("research", "premium"), who("research", "standard"), who("interns", "premium"));
        let r = route(&t, &research_premium, Dialect::Anthropic, "tier:premium", None).unwrap();
        assert_eq!((r.rule, r.model.as_str()), (Some("premium"), "claude-opus-4"));
        assert_eq!(r.set_headers, &[("x-tollgate-provider".to_string(), "anthropic".to_string())]);
        let r = route(&t, &research_standard, Dialect::Anthropic, "tier:premium", None).unwrap();
        assert_eq!((r.rule, r.model.as_str()), (Some("everyone-premium"), "claude-sonnet-4"));
        let denied = route(&t, &who("interns", "premium"), Dialect::Anthropic, "claude-opus-4", None).unwrap_err();
        assert_eq!(denied.kind, ErrorKind::Denied);
        assert_eq!(denied.message, "denied by routing rule \"interns-no-opus\": use claude-sonnet-4");
        let untouched = route(&t, &interns, Dialect::OpenAi, "gpt-4o", None).unwrap();
        assert_eq!((untouched.rule, untouched.model.as_str()), (None, "gpt-4o"));
    }

    #[test]
    fn every_condition_must_hold_and_missing_fields_do_not_match() {
        let t = table(json!([{"name": "r", "match": {"use_case": ["ci-*", "review"], "dialect": "openai", "user": "*"}, "set_model": "gpt-4o-mini"}]));
        let mut p = Principal { use_case: Some("ci-nightly".into()), user: Some("bot".into()), ..Default::default() };
        assert_eq!(route(&t, &p, Dialect::OpenAi, "gpt-4o", None).unwrap().model, "gpt-4o-mini");
        assert_eq!(route(&t, &p, Dialect::Anthropic, "x", None).unwrap().rule, None, "dialect differs");
        p.user = None;
        assert_eq!(route(&t, &p, Dialect::OpenAi, "gpt-4o", None).unwrap().rule, None, "`*` needs the field present");
    }

    #[test]
    fn budget_utilization_condition_needs_a_value_from_enforcement() {
        let t = table(json!([{"name": "downgrade", "match": {"tier": "premium", "budget_utilization_at_least_pct": 80}, "set_model": "gpt-4o-mini"}]));
        let p = who("a", "premium");
        assert_eq!(route(&t, &p, Dialect::OpenAi, "gpt-4o", None).unwrap().model, "gpt-4o");
        assert_eq!(route(&t, &p, Dialect::OpenAi, "gpt-4o", Some(79)).unwrap().model, "gpt-4o");
        assert_eq!(route(&t, &p, Dialect::OpenAi, "gpt-4o", Some(80)).unwrap().model, "gpt-4o-mini");
    }

    #[test]
    fn unresolved_aliases_are_refused_never_forwarded() {
        let t = table(json!([{"name": "exempt", "match": {"team": "ops"}}]));
        for alias in ["tier:premium", "tollgate:auto"] {
            let e = route(&t, &who("x", "y"), Dialect::OpenAi, alias, None).unwrap_err();
            assert_eq!((e.kind, e.param.as_deref()), (ErrorKind::InvalidRequest, Some("model")));
            assert!(e.message.contains(alias), "{}", e.message);
            assert!(route(&t, &who("ops", "y"), Dialect::OpenAi, alias, None).is_err(), "a rule without set_model does not resolve");
        }
    }

    #[test]
    fn config_errors_name_the_rule_and_field() {
        assert_eq!(
            err(json!([{"name": "a"}, {"name": "b", "match": {"model": "x"}}, {"name": "c", "match": {"modle": "x"}}])),
            "tollgate config: routing.rules[2].match: unknown field `modle`, expected one of `use_case`, `team`, `user`, `key_id`, `tier`, `org`, `cost_center`, `task`, `dialect`, `model`, `budget_utilization_at_least_pct`"
        );
        assert!(err(json!([{"name": "a", "match": {"dialect": "bedrock"}}])).starts_with("tollgate config: routing.rules[0].match.dialect: unknown dialect \"bedrock\""));
        assert!(err(json!([{"name": "a", "deny": true, "set_model": "m"}])).starts_with("tollgate config: routing.rules[0].deny:"));
        assert!(err(json!([{"name": "a", "set_model": "tier:premium"}])).starts_with("tollgate config: routing.rules[0].set_model:"));
        assert!(err(json!([{"name": "a"}, {"name": "a"}])).starts_with("tollgate config: routing.rules[1].name:"));
        assert!(err(json!([{"name": "a", "set_headers": {"content-length": "1"}}])).starts_with("tollgate config: routing.rules[0].set_headers.content-length:"));
        assert!(err(json!([{"name": "a", "match": {"team": []}}])).starts_with("tollgate config: routing.rules[0].match.team:"));
        assert!(err(json!([{"name": "a", "model": "x"}])).starts_with("tollgate config: routing.rules[0]: unknown field `model`"));
    }
}
