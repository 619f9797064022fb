//! Who may call what: named bearer tokens, and the role each admin-side token holds.
//!
//! Three families of tokens: **gateway** tokens open `/v1/*` only; **admin-side** tokens open the
//! admin API, each with one [`Role`]; **personal** tokens are scoped to one principal (`user:<id>` or
//! `key:<id>`, the token's name) and open only that principal's own page,
//! `GET /reports/principal` (its budgets and spend): the "my spend" an engineer may see of
//! themselves and of nobody else. Roles are ordered, each including the ones below it:
//!
//! ```text
//! viewer    < requester                 < approver                           < admin
//! read all    + request an exemption      + approve or reject requests         + change budgets,
//! (GET)                                     (never one's own: the name differs)  workflows, exemptions
//! ```
//!
//! Every handler asks for the least role it needs with [`Auth::check`] (through the server's
//! `App::role`), so the rule for an endpoint is one line next to it. Tokens listed as `admin`
//! (today's `TOLLGATE_ADMIN_TOKENS` and the tokens file's `admin` section) keep full rights, so an
//! existing configuration behaves as before. The token's **name** is the identity: it is what the
//! audit log records and what "requester ≠ approver" compares; names are unique across roles.
//!
//! `/metrics` is open by default (bind the counter to a private address); with
//! [`Auth::require_metrics_token`] it needs any admin-side token (viewer or above).
//!
//! Tokens are compared in constant time and never logged (`Debug` prints names only).

use axum::http::{header, HeaderMap};
use serde::{Deserialize, Serialize};

/// What an admin-side token may do. Ordered: a role includes every role below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads budgets, workflows, exemptions, requests, reports, the audit log.
    Viewer,
    /// Also files exemption requests.
    Requester,
    /// Also approves or rejects exemption requests filed by someone else.
    Approver,
    /// Everything, including budget, workflow and exemption changes.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Requester, Role::Approver, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Requester => "requester",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// The environment variable that lists tokens of this role (`name=secret,...`).
    pub fn env_var(self) -> &'static str {
        match self {
            Role::Viewer => "TOLLGATE_VIEWER_TOKENS",
            Role::Requester => "TOLLGATE_REQUESTER_TOKENS",
            Role::Approver => "TOLLGATE_APPROVER_TOKENS",
            Role::Admin => "TOLLGATE_ADMIN_TOKENS",
        }
    }
}

/// An admin-side caller, as authenticated: the token's name and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No token, or one that matches nothing (401).
    Unauthenticated,
    /// A valid token whose role is below what the endpoint needs (403).
    Forbidden { name: String, role: Role, needed: Role },
}

/// Named bearer tokens. Names appear in the audit log and logs; secrets never do.
#[derive(Clone, Default)]
pub struct Auth {
    gateways: Vec<(String, String)>,
    /// (name, secret, role).
    admins: Vec<(String, String, Role)>,
    /// (scope, secret): the scope (`user:<id>` or `key:<id>`) is the token's name.
    personal: Vec<(String, String)>,
    metrics_token: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gateways: Vec<&str> = self.gateways.iter().map(|(n, _)| n.as_str()).collect();
        let admins: Vec<String> = self.admins.iter().map(|(n, _, r)| format!("{n}:{}", r.as_str())).collect();
        let personal: Vec<&str> = self.personal.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Auth")
            .field("gateways", &gateways)
            .field("admins", &admins)
            .field("personal", &personal)
            .field("metrics_token", &self.metrics_token)
            .finish()
    }
}

impl Auth {
    /// `gateways` and `admins` are (name, secret) pairs; every admin token has the `admin` role.
    /// Empty secrets are refused.
    pub fn new(gateways: Vec<(String, String)>, admins: Vec<(String, String)>) -> Result<Auth, String> {
        Auth::with_roles(gateways, admins.into_iter().map(|(n, s)| (n, s, Role::Admin)).collect())
    }

    /// Like [`Auth::new`] with a role per admin-side token. At least one `admin` is needed (someone
    /// must be able to set budgets); names are unique among admin-side tokens.
    pub fn with_roles(gateways: Vec<(String, String)>, admins: Vec<(String, String, Role)>) -> Result<Auth, String> {
        let pairs = gateways.iter().map(|(n, s)| (n, s)).chain(admins.iter().map(|(n, s, _)| (n, s)));
        for (name, secret) in pairs {
            if name.is_empty() || secret.is_empty() {
                return Err(format!("token `{name}`: both a name and a non-empty secret are needed"));
            }
        }
        if gateways.is_empty() || !admins.iter().any(|(_, _, r)| *r == Role::Admin) {
            return Err("configure at least one gateway token and one admin token (TOLLGATE_GATEWAY_TOKENS, TOLLGATE_ADMIN_TOKENS or --tokens FILE)".into());
        }
        let mut names = std::collections::HashSet::new();
        for (name, _, _) in &admins {
            if !names.insert(name.as_str()) {
                return Err(format!(
                    "token `{name}` is listed twice among viewer/requester/approver/admin tokens; names are identities in the audit log, make them unique"
                ));
            }
        }
        Ok(Auth { gateways, admins, personal: Vec::new(), metrics_token: false })
    }

    /// Adds personal tokens, each `(scope, secret)` with the scope `user:<id>` or `key:<id>` as its
    /// name. A scope has at most one token; no secret may open two families (a personal secret that
    /// is also an admin-side one would read as the admin).
    pub fn with_personal(mut self, personal: Vec<(String, String)>) -> Result<Auth, String> {
        let mut scopes = std::collections::HashSet::new();
        for (scope, secret) in &personal {
            let id = scope.strip_prefix("user:").or_else(|| scope.strip_prefix("key:"));
            if id.is_none_or(str::is_empty) {
                return Err(format!(
                    "personal token `{scope}`: its name is the principal it may see, `user:<id>` or `key:<id>` (TOLLGATE_PERSONAL_TOKENS=user:alice=<secret>)"
                ));
            }
            if secret.is_empty() {
                return Err(format!("personal token `{scope}`: the secret is empty"));
            }
            if !scopes.insert(scope.as_str()) {
                return Err(format!("personal token `{scope}` is listed twice; give each principal one token"));
            }
            let taken = self.gateways.iter().map(|(_, s)| s).chain(self.admins.iter().map(|(_, s, _)| s));
            if taken.into_iter().any(|s| constant_time_eq(s.as_bytes(), secret.as_bytes())) {
                return Err(format!("personal token `{scope}`: its secret is also a gateway or admin-side token's; give it its own"));
            }
        }
        self.personal = personal;
        Ok(self)
    }

    /// Makes `/metrics` require an admin-side token (any role).
    pub fn require_metrics_token(mut self, on: bool) -> Auth {
        self.metrics_token = on;
        self
    }

    pub fn metrics_needs_token(&self) -> bool {
        self.metrics_token
    }

    /// Parses `name=secret,name2=secret2` (a bare `secret` is named `default`).
    pub fn parse_list(text: &str) -> Vec<(String, String)> {
        text.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((n, s)) => (n.trim().to_owned(), s.trim().to_owned()),
                None => ("default".to_owned(), p.to_owned()),
            })
            .collect()
    }

    fn presented(headers: &HeaderMap) -> Option<&str> {
        Some(headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")?.trim())
    }

    /// The gateway token's name, if the request carries one.
    pub fn gateway(&self, headers: &HeaderMap) -> Option<&str> {
        let presented = Auth::presented(headers)?;
        self.gateways.iter().find(|(_, secret)| constant_time_eq(secret.as_bytes(), presented.as_bytes())).map(|(n, _)| n.as_str())
    }

    /// The admin-side caller, if the request carries a known admin-side token (any role).
    pub fn caller(&self, headers: &HeaderMap) -> Option<Caller> {
        let presented = Auth::presented(headers)?;
        self.admins
            .iter()
            .find(|(_, secret, _)| constant_time_eq(secret.as_bytes(), presented.as_bytes()))
            .map(|(n, _, r)| Caller { name: n.clone(), role: *r })
    }

    /// The principal scope (`user:<id>` or `key:<id>`) of the personal token the request carries.
    pub fn personal(&self, headers: &HeaderMap) -> Option<&str> {
        let presented = Auth::presented(headers)?;
        self.personal.iter().find(|(_, secret)| constant_time_eq(secret.as_bytes(), presented.as_bytes())).map(|(n, _)| n.as_str())
    }

    /// The one role check: the caller if its role is at least `needed`.
    pub fn check(&self, headers: &HeaderMap, needed: Role) -> Result<Caller, Denied> {
        let caller = self.caller(headers).ok_or(Denied::Unauthenticated)?;
        if caller.role >= needed {
            Ok(caller)
        } else {
            Err(Denied::Forbidden { name: caller.name, role: caller.role, needed })
        }
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
        h
    }

    fn auth() -> Auth {
        let t = |n: &str, r: Role| (n.to_owned(), format!("{n}-secret"), r);
        Auth::with_roles(
            vec![("gw".into(), "gw-secret".into())],
            vec![t("vic", Role::Viewer), t("rita", Role::Requester), t("avery", Role::Approver), t("ada", Role::Admin)],
        )
        .unwrap()
    }

    #[test]
    fn each_role_includes_the_ones_below_it() {
        let a = auth();
        // (token, needed, allowed?)
        let table = [
            ("vic", Role::Viewer, true),
            ("vic", Role::Requester, false),
            ("rita", Role::Requester, true),
            ("rita", Role::Approver, false),
            ("avery", Role::Requester, true),
            ("avery", Role::Approver, true),
            ("avery", Role::Admin, false),
            ("ada", Role::Admin, true),
            ("ada", Role::Viewer, true),
        ];
        for (who, needed, allowed) in table {
            let got = a.check(&headers(&format!("{who}-secret")), needed);
            assert_eq!(got.is_ok(), allowed, "{who} asking for {needed:?}: {got:?}");
            if let Err(Denied::Forbidden { name, .. }) = got {
                assert_eq!(name, who);
            }
        }
        assert_eq!(a.check(&headers("gw-secret"), Role::Viewer), Err(Denied::Unauthenticated), "gateway tokens open no admin endpoint");
        assert_eq!(a.check(&HeaderMap::new(), Role::Viewer), Err(Denied::Unauthenticated));
        assert_eq!(a.gateway(&headers("ada-secret")), None, "admin tokens open no gateway endpoint");
    }

    #[test]
    fn configuration_mistakes_are_refused() {
        let gw = || vec![("gw".to_owned(), "s".to_owned())];
        assert!(Auth::with_roles(gw(), vec![("v".into(), "s1".into(), Role::Viewer)]).is_err(), "someone must be admin");
        let twice = vec![("a".into(), "s1".into(), Role::Admin), ("a".into(), "s2".into(), Role::Viewer)];
        assert!(Auth::with_roles(gw(), twice).unwrap_err().contains("`a` is listed twice"));
        assert!(Auth::new(gw(), vec![("a".into(), String::new())]).is_err());
        let debug = format!("{:?}", auth());
        assert!(debug.contains("avery:approver") && !debug.contains("secret"), "{debug}");
    }

    #[test]
    fn a_personal_token_names_its_principal_and_opens_nothing_else() {
        let a = auth().with_personal(vec![("user:alice".into(), "alice-own".into()), ("key:k-42".into(), "k42-own".into())]).unwrap();
        assert_eq!(a.personal(&headers("alice-own")), Some("user:alice"));
        assert_eq!(a.personal(&headers("k42-own")), Some("key:k-42"));
        assert_eq!(a.personal(&headers("vic-secret")), None, "admin-side tokens are not personal ones");
        assert_eq!(a.check(&headers("alice-own"), Role::Viewer), Err(Denied::Unauthenticated), "a personal token opens no admin endpoint");
        assert_eq!(a.gateway(&headers("alice-own")), None, "nor a gateway endpoint");
        let debug = format!("{a:?}");
        assert!(debug.contains("user:alice") && !debug.contains("alice-own"), "{debug}");
    }

    #[test]
    fn personal_token_mistakes_are_refused_naming_the_token() {
        let refused = |tokens: Vec<(&str, &str)>| auth().with_personal(tokens.into_iter().map(|(n, s)| (n.into(), s.into())).collect()).unwrap_err();
        assert!(refused(vec![("team:platform", "x")]).contains("`team:platform`: its name is the principal"));
        assert!(refused(vec![("user:", "x")]).contains("`user:`"));
        assert!(refused(vec![("user:alice", "")]).contains("secret is empty"));
        assert!(refused(vec![("user:alice", "x"), ("user:alice", "y")]).contains("listed twice"));
        assert!(refused(vec![("user:alice", "ada-secret")]).contains("also a gateway or admin-side token's"));
        assert!(refused(vec![("key:k", "gw-secret")]).contains("also a gateway or admin-side token's"));
    }
}
