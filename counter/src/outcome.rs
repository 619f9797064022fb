//! Outcomes: the accepted work AI spend is measured against (a merged PR, a resolved ticket, an
//! approved brief, or a kind the operator configures), so reports can say *cost per outcome*.
//!
//! Two ways in:
//! - `POST /outcomes` with an admin-side token of role `requester` or above ([`OutcomeSpec`]),
//!   e.g. from a ticketing system's automation; idempotent by `id` (a repeat is answered with the stored outcome,
//!   `"duplicate": true`, and changes nothing).
//! - `POST /webhooks/github`: GitHub's own `pull_request` event. No bearer token: GitHub signs the
//!   raw body with the configured secret (`X-Hub-Signature-256: sha256=<hex HMAC-SHA256>`), checked
//!   here in constant time before anything is parsed; a bad or missing signature is a 401 and
//!   nothing is recorded. Only `action: closed` with `merged: true` records a `merged_pr` outcome,
//!   with id `github:<owner/repo>#<number>` (redeliveries are duplicates), attributed by
//!   [`GithubConfig`]: repository → team (and use case), PR author login → user, and a task id found
//!   in the branch name, else the PR body, by a configured [`TaskPattern`]. GitHub's payload
//!   carries many more fields than we read; those are ignored (it is GitHub's schema, not ours).
//!
//! The governance file (`serve --governance FILE`) configures both ([`GovConfig`]).

use serde::{Deserialize, Serialize};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;

/// The kinds every counter knows.
pub const BUILTIN_KINDS: [&str; 3] = ["merged_pr", "resolved_ticket", "approved_brief"];

/// `POST /outcomes` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeSpec {
    /// Idempotency key, 1-256 characters (e.g. `jira:OPS-42`).
    pub id: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_case: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// When the work was accepted (`YYYY-MM-DD`, RFC 3339 or unix ms); default now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// A link to the work (PR, ticket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A stored outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub id: String,
    pub kind: String,
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub use_case: Option<String>,
    #[serde(default)]
    pub task_id: Option<String>,
    pub at_ms: i64,
    #[serde(default)]
    pub url: Option<String>,
    /// `api:<token name>` or `github`.
    pub source: String,
    pub recorded_at_ms: i64,
}

/// The outcome kinds a counter accepts: the built-in three plus configured ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutcomeKinds(pub Vec<String>);

impl OutcomeKinds {
    pub fn check(&self, field: &str, kind: &str) -> Result<(), String> {
        if BUILTIN_KINDS.contains(&kind) || self.0.iter().any(|k| k == kind) {
            return Ok(());
        }
        let mut all: Vec<&str> = BUILTIN_KINDS.to_vec();
        all.extend(self.0.iter().map(String::as_str));
        Err(format!("{field}: `{kind}` is not an outcome kind; use one of {} (or configure it in the governance file's outcome_kinds)", all.join(", ")))
    }
}

fn attribute(field: &str, v: Option<String>) -> Result<Option<String>, String> {
    match v {
        Some(s) if s.trim().is_empty() || s.len() > 256 => Err(format!("{field}: give 1-256 characters or leave the field out")),
        other => Ok(other),
    }
}

impl Outcome {
    /// Validates a `POST /outcomes` body.
    pub fn from_spec(spec: OutcomeSpec, kinds: &OutcomeKinds, source: String, now_ms: i64) -> Result<Outcome, String> {
        if spec.id.is_empty() || spec.id.len() > 256 {
            return Err("id: give the outcome a stable id of 1-256 characters (e.g. jira:OPS-42); it makes the call idempotent".into());
        }
        kinds.check("kind", &spec.kind)?;
        let at_ms = match &spec.at {
            Some(t) => crate::window::parse_time_ms(t).map_err(|e| format!("at: {e}"))?,
            None => now_ms,
        };
        Ok(Outcome {
            id: spec.id,
            kind: spec.kind,
            team: attribute("team", spec.team)?,
            user: attribute("user", spec.user)?,
            use_case: attribute("use_case", spec.use_case)?,
            task_id: attribute("task_id", spec.task_id)?,
            at_ms,
            url: spec.url,
            source,
            recorded_at_ms: now_ms,
        })
    }
}

/// The governance file: `serve --governance FILE`.
///
/// ```json
/// {"outcome_kinds": ["incident_closed"],
///  "github": {"secret": "…", "repos": {"acme/api": {"team": "platform", "use_case": "code-review"}},
///             "users": {"octocat": "alice"}, "task_id_pattern": "%-#"}}
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovFile {
    #[serde(default)]
    pub outcome_kinds: Vec<String>,
    #[serde(default)]
    pub github: Option<GithubFile>,
    /// `{"k": "3"}`: the default `k` of `GET /admin/reports/outliers` (median + k x MAD).
    #[serde(default)]
    pub outliers: Option<OutliersFile>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutliersFile {
    pub k: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubFile {
    /// The webhook secret; `TOLLGATE_GITHUB_WEBHOOK_SECRET` is used when this is absent.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub repos: BTreeMap<String, RepoMapping>,
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    #[serde(default)]
    pub task_id_pattern: Option<String>,
}

/// Where a repository's merged PRs are attributed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoMapping {
    pub team: String,
    #[serde(default)]
    pub use_case: Option<String>,
}

/// Governance settings the server uses (parsed, validated).
#[derive(Clone, Default)]
pub struct GovConfig {
    pub kinds: OutcomeKinds,
    pub github: Option<GithubConfig>,
    /// The outliers report's default `k`, in tenths (`None`: 3.0).
    pub outlier_k_tenths: Option<u32>,
}

impl std::fmt::Debug for GovConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GovConfig").field("outcome_kinds", &self.kinds.0).field("github", &self.github.is_some()).finish()
    }
}

/// The GitHub webhook's secret and attribution mapping.
#[derive(Clone)]
pub struct GithubConfig {
    pub secret: Vec<u8>,
    pub repos: BTreeMap<String, RepoMapping>,
    pub users: BTreeMap<String, String>,
    pub task_pattern: Option<TaskPattern>,
}

impl GovConfig {
    /// Parses the governance file; `env_secret` is `TOLLGATE_GITHUB_WEBHOOK_SECRET`.
    pub fn parse(text: &str, env_secret: Option<String>) -> Result<GovConfig, String> {
        let file: GovFile = serde_json::from_str(text).map_err(|e| format!("governance file: {e}"))?;
        GovConfig::from_file(file, env_secret)
    }

    pub fn from_file(file: GovFile, env_secret: Option<String>) -> Result<GovConfig, String> {
        for (i, k) in file.outcome_kinds.iter().enumerate() {
            if !crate::budget::valid_id(k) {
                return Err(format!("governance file: outcome_kinds[{i}]: `{k}` is not a kind name (1-128 of A-Z a-z 0-9 . _ -)"));
            }
        }
        let github = match file.github {
            None => env_secret.filter(|s| !s.is_empty()).map(|s| GithubConfig { secret: s.into_bytes(), repos: BTreeMap::new(), users: BTreeMap::new(), task_pattern: None }),
            Some(g) => {
                let secret = g.secret.or(env_secret).filter(|s| !s.is_empty()).ok_or(
                    "governance file: github.secret: the webhook needs its secret (or set TOLLGATE_GITHUB_WEBHOOK_SECRET); it is what GitHub signs deliveries with",
                )?;
                let task_pattern = g
                    .task_id_pattern
                    .as_deref()
                    .map(TaskPattern::parse)
                    .transpose()
                    .map_err(|e| format!("governance file: github.task_id_pattern: {e}"))?;
                for (repo, m) in &g.repos {
                    if !crate::budget::valid_id(&m.team) {
                        return Err(format!("governance file: github.repos.{repo}.team: `{}` is not a team id", m.team));
                    }
                }
                Some(GithubConfig { secret: secret.into_bytes(), repos: g.repos, users: g.users, task_pattern })
            }
        };
        let outlier_k_tenths = match file.outliers {
            None => None,
            Some(o) => Some(crate::outliers::parse_k(&o.k).map_err(|e| format!("governance file: outliers.{e}"))?),
        };
        Ok(GovConfig { kinds: OutcomeKinds(file.outcome_kinds), github, outlier_k_tenths })
    }
}

/// HMAC-SHA256 (RFC 2104), the same `hmac` crate the webhook signatures use.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else { return [0; 32] };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256=<hex>` as GitHub sends it in `X-Hub-Signature-256`.
pub fn github_signature(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex(&hmac_sha256(secret, body)))
}

/// Checks `X-Hub-Signature-256` in constant time.
pub fn verify_github_signature(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(header) = header else { return false };
    let expected = github_signature(secret, body);
    crate::auth::constant_time_eq(expected.as_bytes(), header.trim().to_ascii_lowercase().as_bytes())
}

/// A small pattern for task ids (no regex dependency): `#` is one or more digits, `%` one or more
/// ASCII letters, `\` takes the next character literally, anything else is itself. The first
/// (leftmost, longest) match is the task id. `%-#` finds `OPS-42`; `TG-#` finds `TG-7`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskPattern(Vec<Token>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Digits,
    Letters,
    Char(char),
}

impl TaskPattern {
    pub fn parse(text: &str) -> Result<TaskPattern, String> {
        let mut tokens = Vec::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '#' => Token::Digits,
                '%' => Token::Letters,
                '\\' => Token::Char(chars.next().ok_or("a trailing `\\` escapes nothing")?),
                c => Token::Char(c),
            });
        }
        if tokens.is_empty() || tokens.len() > 64 {
            return Err(format!("`{text}`: give 1-64 pattern characters, e.g. `%-#` for OPS-42"));
        }
        if !tokens.iter().any(|t| matches!(t, Token::Digits | Token::Letters)) && tokens.len() < 2 {
            return Err(format!("`{text}` would match almost anything; use # (digits) or % (letters), e.g. `%-#`"));
        }
        Ok(TaskPattern(tokens))
    }

    /// The first match in `text` (only its first 64 KiB are searched).
    pub fn find(&self, text: &str) -> Option<String> {
        let chars: Vec<char> = text.chars().take(65_536).collect();
        (0..chars.len()).find_map(|start| match_at(&self.0, &chars[start..]).map(|len| chars[start..start + len].iter().collect()))
    }
}

/// Length of the longest match of `tokens` at the start of `text`.
fn match_at(tokens: &[Token], text: &[char]) -> Option<usize> {
    let Some((first, rest)) = tokens.split_first() else { return Some(0) };
    let class = |c: char| match first {
        Token::Digits => c.is_ascii_digit(),
        Token::Letters => c.is_ascii_alphabetic(),
        Token::Char(x) => c == *x,
    };
    match first {
        Token::Char(_) => text.first().filter(|c| class(**c)).and_then(|_| match_at(rest, &text[1..]).map(|n| n + 1)),
        _ => {
            let run = text.iter().take_while(|c| class(**c)).count();
            (1..=run).rev().find_map(|n| match_at(rest, &text[n..]).map(|m| m + n))
        }
    }
}

/// The parts of GitHub's `pull_request` event we read.
#[derive(Debug, Deserialize)]
pub struct PullRequestEvent {
    pub action: String,
    pub pull_request: PullRequest,
    pub repository: Repository,
}

#[derive(Debug, Deserialize)]
pub struct PullRequest {
    pub number: u64,
    #[serde(default)]
    pub merged: Option<bool>,
    #[serde(default)]
    pub merged_at: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub html_url: Option<String>,
    pub user: Account,
    pub head: Branch,
}

#[derive(Debug, Deserialize)]
pub struct Account {
    pub login: String,
}

#[derive(Debug, Deserialize)]
pub struct Branch {
    #[serde(rename = "ref")]
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub struct Repository {
    pub full_name: String,
}

impl GithubConfig {
    /// The outcome a merged PR records, or why the event records nothing (`Ok(None)` + reason).
    pub fn outcome(&self, event: &PullRequestEvent, now_ms: i64) -> Result<Outcome, String> {
        let pr = &event.pull_request;
        if event.action != "closed" || pr.merged != Some(true) {
            return Err(format!("action `{}` with merged {:?}: only a merged pull request (action closed, merged true) is an outcome", event.action, pr.merged));
        }
        let repo = &event.repository.full_name;
        let mapping = self.repos.get(repo);
        let task_id = self.task_pattern.as_ref().and_then(|p| p.find(&pr.head.name).or_else(|| pr.body.as_deref().and_then(|b| p.find(b))));
        let at_ms = pr.merged_at.as_deref().and_then(|t| crate::window::parse_time_ms(t).ok()).unwrap_or(now_ms);
        Ok(Outcome {
            id: format!("github:{repo}#{}", pr.number),
            kind: "merged_pr".into(),
            team: mapping.map(|m| m.team.clone()),
            user: Some(self.users.get(&pr.user.login).cloned().unwrap_or_else(|| pr.user.login.clone())),
            use_case: mapping.and_then(|m| m.use_case.clone()),
            task_id,
            at_ms,
            url: pr.html_url.clone(),
            source: "github".into(),
            recorded_at_ms: now_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_and_githubs_documented_example() {
        // RFC 4231 test case 2.
        assert_eq!(hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // RFC 4231 test case 6 (a key longer than the block).
        assert_eq!(
            hex(&hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        // GitHub's "Validating webhook deliveries" example.
        assert_eq!(
            github_signature(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        let sig = github_signature(b"s3cret", b"{}");
        assert!(verify_github_signature(b"s3cret", b"{}", Some(&sig)));
        assert!(!verify_github_signature(b"s3cret", b"{} ", Some(&sig)), "any change to the body breaks it");
        assert!(!verify_github_signature(b"other", b"{}", Some(&sig)));
        assert!(!verify_github_signature(b"s3cret", b"{}", None));
    }

    #[test]
    fn task_patterns_find_the_first_id() {
        // (pattern, text, found)
        let table = [
            ("%-#", "feature/OPS-42-fix-login", Some("OPS-42")),
            ("%-#", "no ticket here", None),
            ("TG-#", "closes TG-7 and TG-8", Some("TG-7")),
            ("#", "abc 123 456", Some("123")),
            ("\\#%", "see #abc", Some("#abc")),
            ("%-#", "x-1", Some("x-1")),
        ];
        for (pattern, text, found) in table {
            assert_eq!(TaskPattern::parse(pattern).unwrap().find(text).as_deref(), found, "{pattern} in {text}");
        }
        assert!(TaskPattern::parse("").is_err());
        assert!(TaskPattern::parse("a\\").is_err());
    }

    #[test]
    fn outcomes_are_validated() {
        let kinds = OutcomeKinds(vec!["incident_closed".into()]);
        let spec = |v: serde_json::Value| serde_json::from_value::<OutcomeSpec>(v).unwrap();
        let ok = Outcome::from_spec(spec(serde_json::json!({"id": "i-1", "kind": "incident_closed", "at": "2026-11-20"})), &kinds, "api:x".into(), 5).unwrap();
        assert_eq!(ok.at_ms, crate::window::parse_time_ms("2026-11-20").unwrap());
        let err = |v: serde_json::Value| Outcome::from_spec(spec(v), &kinds, "api:x".into(), 5).unwrap_err();
        assert!(err(serde_json::json!({"id": "", "kind": "merged_pr"})).starts_with("id:"));
        assert!(err(serde_json::json!({"id": "a", "kind": "vibes"})).starts_with("kind:"));
        assert!(err(serde_json::json!({"id": "a", "kind": "merged_pr", "at": "soon"})).starts_with("at:"));
        assert!(err(serde_json::json!({"id": "a", "kind": "merged_pr", "team": ""})).starts_with("team:"));
    }
}
