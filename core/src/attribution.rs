//! Who is calling: the request's [`Principal`], from sources the operator trusts.
//!
//! Sources, tried in the configured order (default: trusted headers, virtual keys, body metadata);
//! for each principal field the first source that gives it wins, then the config's `defaults`:
//! - **trusted headers**: headers written by an earlier Envoy filter (jwt_authn
//!   `claim_to_headers`, ext_authz, Istio), named per field by the operator;
//! - **virtual keys**: a table of SHA-256 hex digests of API keys (`Authorization: Bearer`,
//!   `x-api-key`, `api-key`, `x-goog-api-key`, and Gemini's `?key=` query parameter) → principal.
//!   Only digests are configured and only digests are computed; a raw key is never stored, logged
//!   or exposed. A virtual key in `?key=` is taken out of the path the upstream receives
//!   ([`QueryKey::path_without`]): it is the gateway's credential, not the provider's;
//! - **body metadata**: fields of the request body (OpenAI `user`, Anthropic `metadata.user_id`),
//!   only when configured — the client writes them, so trust them only where that is acceptable.
//!
//! Client-supplied `x-tollgate-*` headers are removed before the upstream by the plugin, and are
//! read here only if the operator lists them as trusted headers.

use crate::section::ConfigError;
use crate::json::{self, Kind, TopLevel};
use crate::protocol::Principal;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// Longest principal value accepted from a header or the body; longer values are ignored.
pub const MAX_VALUE_LEN: usize = 256;

/// A field of [`Principal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Org,
    CostCenter,
    Team,
    User,
    KeyId,
    UseCase,
    Tier,
    Task,
}

impl Field {
    pub const ALL: [Field; 8] =
        [Field::Org, Field::CostCenter, Field::Team, Field::User, Field::KeyId, Field::UseCase, Field::Tier, Field::Task];

    pub fn as_str(self) -> &'static str {
        match self {
            Field::Org => "org",
            Field::CostCenter => "cost_center",
            Field::Team => "team",
            Field::User => "user",
            Field::KeyId => "key_id",
            Field::UseCase => "use_case",
            Field::Tier => "tier",
            Field::Task => "task",
        }
    }

    pub fn parse(text: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.as_str() == text)
    }

    pub fn get(self, p: &Principal) -> Option<&str> {
        self.slot_ref(p).as_deref()
    }

    fn slot_ref(self, p: &Principal) -> &Option<String> {
        match self {
            Field::Org => &p.org,
            Field::CostCenter => &p.cost_center,
            Field::Team => &p.team,
            Field::User => &p.user,
            Field::KeyId => &p.key_id,
            Field::UseCase => &p.use_case,
            Field::Tier => &p.tier,
            Field::Task => &p.task,
        }
    }

    fn slot(self, p: &mut Principal) -> &mut Option<String> {
        match self {
            Field::Org => &mut p.org,
            Field::CostCenter => &mut p.cost_center,
            Field::Team => &mut p.team,
            Field::User => &mut p.user,
            Field::KeyId => &mut p.key_id,
            Field::UseCase => &mut p.use_case,
            Field::Tier => &mut p.tier,
            Field::Task => &mut p.task,
        }
    }

    /// Sets the field if it is still empty (first source wins).
    fn fill(self, p: &mut Principal, value: &str) {
        let slot = self.slot(p);
        if slot.is_none() {
            *slot = Some(value.to_owned());
        }
    }

    fn expected() -> String {
        Field::ALL.map(Field::as_str).join(", ")
    }
}

/// A principal source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    TrustedHeaders,
    VirtualKeys,
    BodyMetadata,
}

/// `attribution` in the filter config, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributionConfig {
    /// Order in which sources are consulted. Default: trusted_headers, virtual_keys, body_metadata.
    #[serde(default)]
    pub sources: Option<Vec<Source>>,
    /// Principal field → request header name, e.g. `{"team": "x-jwt-team"}`.
    #[serde(default)]
    pub trusted_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub virtual_keys: Vec<VirtualKeyConfig>,
    /// Principal field → body path(s), e.g. `{"user": ["user", "metadata.user_id"]}`.
    #[serde(default)]
    pub body_metadata: BTreeMap<String, OneOrMany>,
    /// Values used when no source gives a field.
    #[serde(default)]
    pub defaults: Principal,
    /// Send a virtual key on to the upstream (default `false`: it is removed from the request,
    /// whichever key header or `?key=` carried it). Only for keys that are the callers' own
    /// provider keys, registered here to name who holds them.
    #[serde(default)]
    pub forward_virtual_keys: bool,
}

/// One virtual key: the SHA-256 of the key (64 hex digits) and who it belongs to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualKeyConfig {
    pub sha256: String,
    pub principal: Principal,
}

/// A string or a list of strings.
#[derive(Debug, Clone)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<OneOrMany, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(s) => Ok(OneOrMany::One(s)),
            serde_json::Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => Ok(s),
                    other => Err(serde::de::Error::custom(format!("expected a string or a list of strings, found {other}"))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(OneOrMany::Many),
            other => Err(serde::de::Error::custom(format!("expected a string or a list of strings, found {other}"))),
        }
    }
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The compiled attribution settings.
#[derive(Debug, Clone, Default)]
pub struct Attribution {
    order: Vec<Source>,
    trusted_headers: Vec<(Field, String)>,
    virtual_keys: HashMap<[u8; 32], Principal, DigestHash>,
    body_metadata: Vec<(Field, Vec<Vec<String>>)>,
    defaults: Principal,
    forward_virtual_keys: bool,
}

/// What the request headers said, captured in the request-headers phase (before `x-tollgate-*`
/// headers are stripped) and combined with the body later.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderFacts {
    trusted: Vec<(Field, String)>,
    /// The principal of the virtual key presented, if it is in the table.
    virtual_key: Option<Principal>,
    /// Whether the request carried an API key at all (matched or not).
    pub presented_key: bool,
    /// The `?key=` query parameter is a virtual key: the upstream must not receive it.
    pub virtual_key_in_query: bool,
    /// The key headers holding a virtual key: the upstream must not receive them (Envoy adds the
    /// provider's own key after the filter, e.g. a route's `request_headers_to_add`).
    pub virtual_key_headers: Vec<&'static str>,
}

/// The `key` query parameter of a request path (how Gemini clients may send their API key,
/// `…:generateContent?key=API_KEY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryKey {
    /// The key, percent-decoded.
    pub key: String,
    /// The path without that parameter (the rest of the query as it was).
    pub path_without: String,
}

impl QueryKey {
    /// The first non-empty `key=` parameter of `path`'s query, if any. `None` for a key that is
    /// not valid percent-encoded UTF-8.
    pub fn from_path(path: &str) -> Option<QueryKey> {
        let (base, query) = path.split_once('?')?;
        let (query, fragment) = match query.split_once('#') {
            Some((q, f)) => (q, Some(f)),
            None => (query, None),
        };
        let params: Vec<&str> = query.split('&').collect();
        let (at, key) = params.iter().enumerate().find_map(|(i, p)| {
            let value = p.strip_prefix("key=")?;
            let key = percent_decode(value)?;
            (!key.is_empty()).then_some((i, key))
        })?;
        let rest: Vec<&str> = params.iter().enumerate().filter(|(i, p)| *i != at && !p.is_empty()).map(|(_, p)| *p).collect();
        let mut path_without = base.to_owned();
        if !rest.is_empty() {
            path_without.push('?');
            path_without.push_str(&rest.join("&"));
        }
        if let Some(fragment) = fragment {
            path_without.push('#');
            path_without.push_str(fragment);
        }
        Some(QueryKey { key, path_without })
    }
}

/// `%XX` escapes and `+` (a space in a query) decoded; `None` for a bad escape or non-UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// SHA-256 digests of the API keys presented recently, so a key seen again is looked up without
/// hashing it again: clients send the same key with every request, and SHA-256 in wasm costs
/// thousands of instructions. Bounded: forgets everything when [`KeyDigests::CAPACITY`] keys are
/// held. The keys stay in the VM's memory (as the request headers do) and are never logged.
#[derive(Debug, Default)]
pub struct KeyDigests {
    digests: HashMap<String, [u8; 32]>,
}

impl KeyDigests {
    pub const CAPACITY: usize = 4096;

    /// The SHA-256 of `key`.
    pub fn digest(&mut self, key: &str) -> [u8; 32] {
        if let Some(digest) = self.digests.get(key) {
            return *digest;
        }
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        if self.digests.len() >= Self::CAPACITY {
            self.digests.clear();
        }
        self.digests.insert(key.to_owned(), digest);
        digest
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

/// Hashes a SHA-256 digest by its first eight bytes: they are already uniformly spread, so the
/// virtual-key table needs no SipHash over all 32 (hundreds of wasm instructions and their code
/// on every request). A client cannot aim keys at one bucket without SHA-256 preimages, and the
/// table only holds the configured keys, so a lookup's probe length does not depend on clients.
#[derive(Debug, Clone, Copy, Default)]
pub struct DigestHash;

impl std::hash::BuildHasher for DigestHash {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

/// The hasher of [`DigestHash`]: takes the first eight bytes written.
#[derive(Debug, Clone, Copy, Default)]
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its length (a short write, mixed in) and then its 32 bytes, whose
        // first eight become the hash.
        if let Some(head) = bytes.first_chunk::<8>() {
            self.0 = u64::from_le_bytes(*head);
        } else {
            for &b in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(b);
            }
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The headers an API key may arrive in, in the order they are looked at.
pub const KEY_HEADERS: [&str; 4] = ["authorization", "x-api-key", "api-key", "x-goog-api-key"];

impl Attribution {
    /// Validates `attribution` (`path` is its place in the config, for error messages).
    pub fn compile(raw: AttributionConfig, path: &str) -> Result<Attribution, ConfigError> {
        let order = raw.sources.unwrap_or_else(|| vec![Source::TrustedHeaders, Source::VirtualKeys, Source::BodyMetadata]);
        for (i, s) in order.iter().enumerate() {
            if order.get(..i).unwrap_or_default().contains(s) {
                return Err(ConfigError::new(format!("{path}.sources[{i}]"), "listed twice; list each source once"));
            }
        }
        let field_at = |section: &str, name: &str| {
            Field::parse(name).ok_or_else(|| {
                ConfigError::new(
                    format!("{path}.{section}.{name}"),
                    format!("unknown principal field; expected one of {}", Field::expected()),
                )
            })
        };
        let mut trusted_headers = Vec::new();
        for (name, header) in raw.trusted_headers {
            let field = field_at("trusted_headers", &name)?;
            let header = header.trim().to_ascii_lowercase();
            if header.is_empty() || header.starts_with(':') || !header.bytes().all(is_header_name_byte) {
                return Err(ConfigError::new(
                    format!("{path}.trusted_headers.{name}"),
                    format!("\"{header}\" is not a valid request header name"),
                ));
            }
            trusted_headers.push((field, header));
        }
        let mut virtual_keys = HashMap::default();
        for (i, vk) in raw.virtual_keys.into_iter().enumerate() {
            let at = format!("{path}.virtual_keys[{i}]");
            let digest = parse_sha256_hex(&vk.sha256).ok_or_else(|| {
                ConfigError::new(
                    format!("{at}.sha256"),
                    "must be the 64 hex digits of the key's SHA-256 (e.g. `printf %s \"$KEY\" | sha256sum`), never the key itself",
                )
            })?;
            if vk.principal.key_id.as_deref().is_none_or(str::is_empty) {
                return Err(ConfigError::new(
                    format!("{at}.principal.key_id"),
                    "required: name the key so usage records and budgets can refer to it",
                ));
            }
            if virtual_keys.insert(digest, vk.principal).is_some() {
                return Err(ConfigError::new(format!("{at}.sha256"), "the same key digest is listed twice"));
            }
        }
        let mut body_metadata = Vec::new();
        for (name, paths) in raw.body_metadata {
            let field = field_at("body_metadata", &name)?;
            let paths = paths.into_vec();
            if paths.is_empty() {
                return Err(ConfigError::new(format!("{path}.body_metadata.{name}"), "give at least one body path"));
            }
            let mut split = Vec::new();
            for p in paths {
                let segments: Vec<String> = p.split('.').map(str::to_owned).collect();
                if segments.iter().any(String::is_empty) {
                    return Err(ConfigError::new(
                        format!("{path}.body_metadata.{name}"),
                        format!("\"{p}\" is not a body path; write top-level keys joined by dots, e.g. \"metadata.user_id\""),
                    ));
                }
                split.push(segments);
            }
            body_metadata.push((field, split));
        }
        Ok(Attribution {
            order,
            trusted_headers,
            virtual_keys,
            body_metadata,
            defaults: raw.defaults,
            forward_virtual_keys: raw.forward_virtual_keys,
        })
    }

    /// Reads what the headers give. `header` returns a request header's value by lowercase name;
    /// `digests` remembers the SHA-256 of keys already seen (one per VM in the filter).
    pub fn from_headers<'h>(&self, header: impl Fn(&str) -> Option<&'h str>, digests: &mut KeyDigests) -> HeaderFacts {
        self.from_request(header, None, digests)
    }

    /// [`Attribution::from_headers`], plus the API key of the path's `?key=` parameter (Gemini),
    /// read like the `x-goog-api-key` header when no key header is present. Whether or not a
    /// header key wins, a virtual key in the query is flagged
    /// ([`HeaderFacts::virtual_key_in_query`]) so it is never forwarded.
    pub fn from_request<'h>(
        &self,
        header: impl Fn(&str) -> Option<&'h str>,
        query_key: Option<&str>,
        digests: &mut KeyDigests,
    ) -> HeaderFacts {
        let mut facts = HeaderFacts::default();
        for (field, name) in &self.trusted_headers {
            if let Some(value) = header(name).and_then(clean_value) {
                facts.trusted.push((*field, value.to_owned()));
            }
        }
        let query_key = query_key.map(str::trim).filter(|k| !k.is_empty());
        let query_principal = match query_key {
            Some(key) if !self.virtual_keys.is_empty() => self.virtual_keys.get(&digests.digest(key)),
            _ => None,
        };
        facts.virtual_key_in_query = query_principal.is_some() && !self.forward_virtual_keys;
        // The first key header attributes; every one holding a virtual key is kept from the upstream.
        for name in KEY_HEADERS {
            let Some(key) = header_key(&header, name) else { continue };
            let first = !facts.presented_key;
            facts.presented_key = true;
            if self.virtual_keys.is_empty() {
                break;
            }
            let principal = self.virtual_keys.get(&digests.digest(key));
            if principal.is_some() && !self.forward_virtual_keys {
                facts.virtual_key_headers.push(name);
            }
            if first {
                facts.virtual_key = principal.cloned();
            }
        }
        if !facts.presented_key && query_key.is_some() {
            facts.presented_key = true;
            facts.virtual_key = query_principal.cloned();
        }
        facts
    }

    /// Whether any field comes from the body.
    pub fn reads_body(&self) -> bool {
        !self.body_metadata.is_empty()
    }

    /// Whether virtual keys are configured.
    pub fn has_virtual_keys(&self) -> bool {
        !self.virtual_keys.is_empty()
    }

    /// The principal: per field, the first source in order that gives it, then the defaults.
    /// `body` is the request body and its scan, when there is one.
    pub fn principal(&self, facts: &HeaderFacts, body: Option<(&[u8], &TopLevel)>) -> Principal {
        let mut p = Principal::default();
        for source in &self.order {
            match source {
                Source::TrustedHeaders => {
                    for (field, value) in &facts.trusted {
                        field.fill(&mut p, value);
                    }
                }
                Source::VirtualKeys => {
                    if let Some(vk) = &facts.virtual_key {
                        for field in Field::ALL {
                            if let Some(value) = field.get(vk) {
                                field.fill(&mut p, value);
                            }
                        }
                    }
                }
                Source::BodyMetadata => {
                    if let Some((buf, top)) = body {
                        for (field, paths) in &self.body_metadata {
                            if let Some(value) = paths.iter().find_map(|path| body_value(buf, top, path)) {
                                field.fill(&mut p, &value);
                            }
                        }
                    }
                }
            }
        }
        for field in Field::ALL {
            if let Some(value) = field.get(&self.defaults) {
                field.fill(&mut p, value);
            }
        }
        p
    }
}

/// The API key in one key header, if it holds one (`authorization` only as a bearer token).
fn header_key<'h>(header: &impl Fn(&str) -> Option<&'h str>, name: &str) -> Option<&'h str> {
    let value = header(name)?.trim();
    let key = if name == "authorization" {
        let (scheme, token) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        token.trim()
    } else {
        value
    };
    (!key.is_empty()).then_some(key)
}

/// A principal value as given by a source, or `None` if it is empty, too long or has control
/// characters (such a value is ignored rather than propagated into records and logs).
fn clean_value(value: &str) -> Option<&str> {
    let value = value.trim();
    (!value.is_empty() && value.len() <= MAX_VALUE_LEN && !value.chars().any(char::is_control)).then_some(value)
}

/// Follows `path` (top-level key, then nested object keys) to a string value.
fn body_value(buf: &[u8], top: &TopLevel, path: &[String]) -> Option<String> {
    let (first, rest) = path.split_first()?;
    let mut member = top.get(first)?.clone();
    for key in rest {
        if member.kind != Kind::Object {
            return None;
        }
        let inner = json::scan_nested(buf, member.value.clone()).ok()?;
        member = inner.get(key)?.clone();
    }
    if member.kind != Kind::String {
        return None;
    }
    let text = json::decode_string(buf, member.value).ok()?;
    clean_value(&text).map(str::to_owned)
}

fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b)
}

/// Parses 64 hex digits (either case) into a digest.
pub fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = text.get(i * 2..i * 2 + 2)?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// Lowercase hex SHA-256 of a key: what operators put in `virtual_keys[].sha256`.
pub fn sha256_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(json: serde_json::Value) -> Attribution {
        Attribution::compile(serde_json::from_value(json).unwrap(), "attribution").unwrap()
    }

    fn compile_err(json: serde_json::Value) -> String {
        Attribution::compile(serde_json::from_value(json).unwrap(), "attribution").unwrap_err().to_string()
    }

    fn facts(a: &Attribution, headers: &[(&str, &str)]) -> HeaderFacts {
        a.from_headers(|name| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v), &mut KeyDigests::default())
    }

    impl HeaderFacts {
        /// The same key read from `?key=`: flagged there, and no header to remove.
        fn with_query_flag(mut self) -> HeaderFacts {
            self.virtual_key_in_query = true;
            self.virtual_key_headers.clear();
            self
        }
    }

    #[test]
    fn key_digests_are_sha256_remembered_and_bounded() {
        let mut digests = KeyDigests::default();
        let expected = parse_sha256_hex(&sha256_hex("sk-alice")).unwrap();
        assert_eq!(digests.digest("sk-alice"), expected);
        assert_eq!(digests.digest("sk-alice"), expected, "the remembered digest is the same");
        assert_eq!(digests.len(), 1);
        for i in 0..KeyDigests::CAPACITY {
            digests.digest(&format!("sk-{i}"));
        }
        assert!(digests.len() <= KeyDigests::CAPACITY, "never holds more than its capacity");
        assert_eq!(digests.digest("sk-alice"), expected, "a forgotten key is hashed again");
    }

    fn config() -> Attribution {
        compile(serde_json::json!({
            "trusted_headers": {"team": "x-jwt-team", "user": "x-jwt-sub"},
            "virtual_keys": [{"sha256": sha256_hex("sk-alice"), "principal": {"key_id": "k-alice", "user": "alice", "team": "research", "tier": "premium"}}],
            "body_metadata": {"user": ["metadata.user_id", "user"], "task": "metadata.task"},
            "defaults": {"org": "acme", "tier": "standard"}
        }))
    }

    #[test]
    fn first_source_wins_per_field_then_defaults() {
        let a = config();
        let f = facts(&a, &[("x-jwt-team", "platform"), ("authorization", "Bearer sk-alice")]);
        let p = a.principal(&f, None);
        assert_eq!(p.team.as_deref(), Some("platform"), "trusted header beats the key's team");
        assert_eq!(p.user.as_deref(), Some("alice"), "key gives the user the headers did not");
        assert_eq!(p.key_id.as_deref(), Some("k-alice"));
        assert_eq!(p.tier.as_deref(), Some("premium"), "key beats the default");
        assert_eq!(p.org.as_deref(), Some("acme"), "default fills the rest");
    }

    #[test]
    fn source_order_is_configurable() {
        let a = compile(serde_json::json!({
            "sources": ["virtual_keys", "trusted_headers"],
            "trusted_headers": {"team": "x-team"},
            "virtual_keys": [{"sha256": sha256_hex("k"), "principal": {"key_id": "k1", "team": "from-key"}}]
        }));
        let p = a.principal(&facts(&a, &[("x-team", "from-header"), ("x-api-key", "k")]), None);
        assert_eq!(p.team.as_deref(), Some("from-key"));
    }

    fn facts_with_query(a: &Attribution, headers: &[(&str, &str)], path: &str) -> HeaderFacts {
        let query = QueryKey::from_path(path);
        a.from_request(
            |name| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v),
            query.as_ref().map(|q| q.key.as_str()),
            &mut KeyDigests::default(),
        )
    }

    #[test]
    fn the_query_key_parameter_is_a_key_like_the_gemini_header() {
        let a = config();
        let path = "/v1beta/models/gemini-2.5-flash:generateContent?key=sk-alice";
        let f = facts_with_query(&a, &[], path);
        assert!(f.presented_key && f.virtual_key_in_query);
        assert_eq!(a.principal(&f, None).key_id.as_deref(), Some("k-alice"));
        assert_eq!(f, facts(&a, &[("x-goog-api-key", "sk-alice")]).with_query_flag(), "read like x-goog-api-key");
        // Percent-encoded, among other parameters.
        let f = facts_with_query(&a, &[], "/v1beta/models/m:streamGenerateContent?alt=sse&key=sk%2Dalice");
        assert_eq!(a.principal(&f, None).key_id.as_deref(), Some("k-alice"));
        // A header key wins; a virtual key in the query is still flagged so it is not forwarded.
        let f = facts_with_query(&a, &[("x-goog-api-key", "sk-other")], path);
        assert_eq!((a.principal(&f, None).key_id, f.virtual_key_in_query), (None, true));
        // A key that is not virtual is the caller's provider key: not flagged, passed on.
        let f = facts_with_query(&a, &[], "/v1beta/models/m:generateContent?key=AIzaReal");
        assert!(f.presented_key && !f.virtual_key_in_query);
        assert_eq!(a.principal(&f, None).key_id, None);
    }

    #[test]
    fn the_path_without_the_key_keeps_every_other_byte() {
        let q = |path: &str| QueryKey::from_path(path).map(|q| (q.key, q.path_without));
        let m = "/v1beta/models/gemini-2.5-flash:streamGenerateContent";
        assert_eq!(q(&format!("{m}?key=sk-1")), Some(("sk-1".into(), m.to_owned())));
        assert_eq!(q(&format!("{m}?alt=sse&key=sk-1")), Some(("sk-1".into(), format!("{m}?alt=sse"))));
        assert_eq!(q(&format!("{m}?key=sk-1&alt=sse")), Some(("sk-1".into(), format!("{m}?alt=sse"))));
        assert_eq!(q(&format!("{m}?a=1&key=a%2Bb+c&b=%20")), Some(("a+b c".into(), format!("{m}?a=1&b=%20"))));
        assert_eq!(q(&format!("{m}?key=&key=sk-2")), Some(("sk-2".into(), format!("{m}?key="))), "the first non-empty key");
        assert_eq!(q(&format!("{m}?keys=x&monkey=y")), None, "only the parameter named key");
        assert_eq!(q(&format!("{m}?key=%zz")), None, "a bad escape is not a key");
        assert_eq!(q(m), None);
    }

    #[test]
    fn keys_are_found_in_every_key_header_and_unknown_keys_give_nothing() {
        let a = config();
        for (name, value) in [("authorization", "bearer sk-alice"), ("x-api-key", "sk-alice"), ("api-key", "sk-alice"), ("x-goog-api-key", "sk-alice")] {
            assert_eq!(a.principal(&facts(&a, &[(name, value)]), None).key_id.as_deref(), Some("k-alice"), "{name}");
        }
        let f = facts(&a, &[("authorization", "Bearer sk-mallory")]);
        assert!(f.presented_key);
        assert_eq!(a.principal(&f, None).key_id, None);
        assert!(!facts(&a, &[("authorization", "Basic abc")]).presented_key);
    }

    #[test]
    fn every_key_header_holding_a_virtual_key_is_kept_from_the_upstream_unless_configured() {
        let a = config();
        // (headers, key headers the upstream must not receive, key_id)
        let cases: &[(&[(&str, &str)], &[&str], Option<&str>)] = &[
            (&[("authorization", "Bearer sk-alice")], &["authorization"], Some("k-alice")),
            (&[("x-api-key", "sk-alice")], &["x-api-key"], Some("k-alice")),
            (&[("api-key", "sk-alice")], &["api-key"], Some("k-alice")),
            (&[("x-goog-api-key", "sk-alice")], &["x-goog-api-key"], Some("k-alice")),
            // A provider key attributes nothing and passes; a virtual key beside it is still removed.
            (&[("authorization", "Bearer sk-provider"), ("x-api-key", "sk-alice")], &["x-api-key"], None),
            (&[("authorization", "Bearer sk-provider")], &[], None),
            (&[("authorization", "Basic sk-alice")], &[], None),
        ];
        for (headers, stripped, key_id) in cases {
            let f = facts(&a, headers);
            assert_eq!(f.virtual_key_headers, *stripped, "{headers:?}");
            assert_eq!(a.principal(&f, None).key_id.as_deref(), *key_id, "{headers:?}");
        }
        let forward = compile(serde_json::json!({
            "forward_virtual_keys": true,
            "virtual_keys": [{"sha256": sha256_hex("sk-alice"), "principal": {"key_id": "k-alice"}}]
        }));
        let f = facts(&forward, &[("authorization", "Bearer sk-alice")]);
        assert_eq!((f.virtual_key_headers.len(), forward.principal(&f, None).key_id.as_deref()), (0, Some("k-alice")));
        let f = forward.from_request(|_| None, Some("sk-alice"), &mut KeyDigests::default());
        assert!(!f.virtual_key_in_query, "forwarded in the query too");
    }

    #[test]
    fn raw_keys_never_appear_in_what_attribution_keeps() {
        let a = config();
        let f = facts(&a, &[("authorization", "Bearer sk-alice")]);
        assert!(!format!("{f:?}{a:?}").contains("sk-alice"));
    }

    #[test]
    fn body_metadata_is_read_by_path_only_when_configured() {
        let a = config();
        let body = br#"{"model":"m","user":"u-top","metadata":{"user_id":"u-meta","task":"t-7"}}"#;
        let top = json::scan_object(body).unwrap();
        let p = a.principal(&HeaderFacts::default(), Some((body, &top)));
        assert_eq!((p.user.as_deref(), p.task.as_deref()), (Some("u-meta"), Some("t-7")));
        let body = br#"{"model":"m","user":"u-top","metadata":{"user_id":42}}"#;
        let top = json::scan_object(body).unwrap();
        assert_eq!(a.principal(&HeaderFacts::default(), Some((body, &top))).user.as_deref(), Some("u-top"), "non-strings skipped");
        let none = compile(serde_json::json!({}));
        assert_eq!(none.principal(&HeaderFacts::default(), Some((body, &top))), Principal::default());
    }

    #[test]
    fn empty_overlong_or_control_values_are_ignored() {
        let a = config();
        let long = "x".repeat(MAX_VALUE_LEN + 1);
        for bad in ["", "  ", long.as_str(), "a\u{7}b"] {
            assert_eq!(a.principal(&facts(&a, &[("x-jwt-team", bad)]), None).team, None, "{bad:?}");
        }
    }

    #[test]
    fn config_errors_name_the_field() {
        assert_eq!(
            compile_err(serde_json::json!({"trusted_headers": {"teem": "x-team"}})),
            "tollgate config: attribution.trusted_headers.teem: unknown principal field; expected one of org, cost_center, team, user, key_id, use_case, tier, task"
        );
        assert!(compile_err(serde_json::json!({"virtual_keys": [{"sha256": "sk-live-123", "principal": {"key_id": "a"}}]}))
            .starts_with("tollgate config: attribution.virtual_keys[0].sha256: must be the 64 hex digits"));
        assert!(compile_err(serde_json::json!({"virtual_keys": [{"sha256": sha256_hex("a"), "principal": {}}]}))
            .starts_with("tollgate config: attribution.virtual_keys[0].principal.key_id: required"));
        assert!(compile_err(serde_json::json!({"trusted_headers": {"team": "X Team"}})).contains("not a valid request header name"));
        assert!(compile_err(serde_json::json!({"body_metadata": {"user": "metadata..id"}})).contains("attribution.body_metadata.user"));
        assert!(compile_err(serde_json::json!({"sources": ["virtual_keys", "virtual_keys"]})).contains("attribution.sources[1]"));
    }
}
