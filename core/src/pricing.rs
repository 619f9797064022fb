//! The price table and integer cost arithmetic.
//!
//! Prices come from LiteLLM's `model_prices_and_context_window.json` format (the repo bundles a
//! filtered copy, `core/prices/model_prices.json`, refreshed by `scripts/refresh-prices.sh`), then
//! the filter config's `pricing` section adds or replaces models, aliases names, and says what to do
//! with a model nobody priced. docs/metering.md is the user-facing description.
//!
//! # Exactness
//! Prices are read from the JSON *number text* (serde_json hands it over unparsed,
//! [`serde_json::value::RawValue`]; never `f64`) into pico-dollars per token ([`PicosPerToken`]);
//! `pricing/litellm.rs` reads the file. A request's cost is the sum over token kinds of tokens ×
//! price in `u128` pico-dollars, converted to micro-dollars once, rounding up
//! ([`money::picos_to_micros_ceil`]).
//!
//! # Long context
//! When a request's prompt (input + cache read + cache write) exceeds a model's long-context
//! threshold, every token of the request is priced at that tier (that is how Anthropic, Google and
//! OpenAI bill it). LiteLLM writes the tier as `…_above_<N>k_tokens` fields: 200k for Gemini 2.5
//! Pro, 272k for GPT-5.x, 128k for Gemini 1.5. A kind the tier does not list keeps its base
//! price. A model with tiers at several thresholds keeps the lowest one (none in the bundled table).
//!
//! # Lookup
//! A model name is tried, in order: the config's `aliases` (one step), the name as given, the name
//! without a `models/` or provider prefix (`openai/gpt-4o` → `gpt-4o`), then each of those without an
//! obvious date or revision suffix (`-2024-08-06`, `-20241022`, `@20241022`, `-002`). Table keys
//! with a provider prefix (`azure/gpt-4o`, `gemini/gemini-2.5-pro`) are also reachable by their bare
//! name when no bare entry exists; the preferred provider is chosen by a fixed ranking.

use crate::estimate::EstimateConfig;
use crate::money::{self, Micros, PicosPerToken};
use crate::protocol::Tokens;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// The long-context threshold of a configured price that does not name one (`above_tokens`).
pub const DEFAULT_LONG_CONTEXT_THRESHOLD: u64 = 200_000;

/// The bundled LiteLLM-format price file (filtered to the dialects Tollgate speaks): the source of
/// the compiled table [`bundled`](mod@bundled), which the filter uses instead of parsing this text.
pub const BUNDLED_PRICES_JSON: &str = include_str!("../prices/model_prices.json");

/// Per-token prices for one tier, in pico-dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierPrice {
    pub input: PicosPerToken,
    pub output: PicosPerToken,
    pub cache_read: PicosPerToken,
    /// A cache write of the default lifetime (Anthropic's 5 minutes).
    pub cache_write: PicosPerToken,
    /// A 1-hour cache write (Anthropic); the plain cache-write price when none is listed.
    pub cache_write_1h: PicosPerToken,
}

fn term(count: u64, price: PicosPerToken) -> u128 {
    u128::from(count).saturating_mul(u128::from(price))
}

impl TierPrice {
    /// Tokens × prices, summed exactly in pico-dollars. The 1-hour share of the cache writes is
    /// priced at its own rate, the rest at the plain cache-write rate.
    pub fn cost_picos(&self, tokens: &Tokens) -> u128 {
        let write_1h = tokens.cache_write_1h.min(tokens.cache_write);
        term(tokens.input, self.input)
            .saturating_add(term(tokens.output, self.output))
            .saturating_add(term(tokens.cache_read, self.cache_read))
            .saturating_add(term(tokens.cache_write - write_1h, self.cache_write))
            .saturating_add(term(write_1h, self.cache_write_1h))
    }

    /// The dearest price a prompt token can have (input, cache read, or a cache write of either
    /// lifetime): what a reservation prices every prompt token at.
    pub fn dearest_prompt_price(&self) -> PicosPerToken {
        self.input.max(self.cache_read).max(self.cache_write).max(self.cache_write_1h)
    }
}

/// The prices that apply to a whole request once its prompt exceeds `above_tokens` tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LongContext {
    pub above_tokens: u64,
    pub price: TierPrice,
}

/// One model's prices and limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelPrice {
    pub base: TierPrice,
    /// The long-context tier, when the model has one.
    pub long_context: Option<LongContext>,
    /// The context window, when known (caps reservation estimates).
    pub max_input_tokens: Option<u64>,
    /// The most output the model can produce, when known (the default reservation).
    pub max_output_tokens: Option<u64>,
    /// A hosted web-search call, in pico-dollars per call (LiteLLM's
    /// `search_context_cost_per_query.search_context_size_medium`); 0 when not priced.
    pub web_search_per_call: PicosPerToken,
}

/// The prompt tokens that decide the long-context tier: input + cache read + cache write.
pub fn prompt_tokens(tokens: &Tokens) -> u64 {
    tokens.prompt()
}

impl ModelPrice {
    /// The tier that prices a request with `prompt_tokens` prompt tokens, and whether it is the
    /// long-context one.
    pub fn tier_for(&self, prompt_tokens: u64) -> (TierPrice, bool) {
        match self.long_context {
            Some(long) if prompt_tokens > long.above_tokens => (long.price, true),
            _ => (self.base, false),
        }
    }

    /// The exact cost in pico-dollars (tokens, then hosted-tool calls), and whether the
    /// long-context tier applied.
    pub fn cost_picos(&self, tokens: &Tokens) -> (u128, bool) {
        let (tier, long) = self.tier_for(prompt_tokens(tokens));
        let tools = term(tokens.web_searches, self.web_search_per_call);
        (tier.cost_picos(tokens).saturating_add(tools), long)
    }

    /// The cost in micro-dollars, rounded up once.
    pub fn cost_micros(&self, tokens: &Tokens) -> Micros {
        money::picos_to_micros_ceil(self.cost_picos(tokens).0)
    }

    /// The most a request can cost: `prompt_tokens` prompt tokens (capped by the context window
    /// when known, since the upstream refuses longer prompts) and `output_tokens` output tokens.
    /// Every prompt token is priced at the dearest of the input, cache-read and cache-write prices
    /// ([`TierPrice::dearest_prompt_price`]), because the request may write its whole prompt to a
    /// cache. When the bound exceeds the long-context threshold, the dearer of the two tiers is
    /// taken (the real prompt may land on either side of the threshold). Rounded up once.
    pub fn worst_case_cost(&self, prompt_tokens: u64, output_tokens: u64) -> Micros {
        let input = match self.max_input_tokens {
            Some(window) => prompt_tokens.min(window),
            None => prompt_tokens,
        };
        let at = |tier: &TierPrice| term(input, tier.dearest_prompt_price()).saturating_add(term(output_tokens, tier.output));
        let (tier, long) = self.tier_for(input);
        let picos = if long { at(&tier).max(at(&self.base)) } else { at(&tier) };
        money::picos_to_micros_ceil(picos)
    }

    /// Whether an input, cache-read or cache-write token costs anything, in either tier: a prompt
    /// that costs nothing needs no bound.
    pub fn prompt_is_priced(&self) -> bool {
        let priced = |t: &TierPrice| t.input > 0 || t.cache_read > 0 || t.cache_write > 0;
        priced(&self.base) || self.long_context.is_some_and(|l| priced(&l.price))
    }
}

/// What a request cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub micros: Micros,
    /// False when the model had no price and the unknown-model policy priced it (default or zero).
    pub known: bool,
    /// True when the long-context tier applied.
    pub long_context: bool,
}

/// The price the table applies to a model, after the unknown-model policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriceLookup {
    pub price: ModelPrice,
    /// False when the model had no price and the policy supplied one (default price or zero).
    pub known: bool,
}

/// A model with no price, under the `deny` policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownModel {
    pub model: String,
}

impl fmt::Display for UnknownModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "model `{}` has no price; add it under pricing.models (or an alias under pricing.aliases), \
             or set pricing.unknown_model to default_price or zero",
            self.model
        )
    }
}

impl std::error::Error for UnknownModel {}

/// What to do with a model that has no price.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownModelPolicy {
    /// Refuse it ([`PriceTable::price`] and [`PriceTable::cost`] return [`UnknownModel`]).
    Deny,
    /// Charge `pricing.default_price`.
    DefaultPrice,
    /// Charge nothing; the filter counts it so it shows in the stats.
    #[default]
    Zero,
}

/// A decimal amount written in the config. Strings (`"2.50"`) and whole JSON numbers (`3`) are
/// accepted; fractional JSON numbers are refused because they would pass through a float.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal(pub String);

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
        struct DecimalVisitor;
        impl Visitor<'_> for DecimalVisitor {
            type Value = Decimal;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a price as a decimal string, e.g. \"2.50\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
                match money::parse_decimal_scaled(v, 0) {
                    Some(_) => Ok(Decimal(v.to_owned())),
                    None => Err(E::custom(format!("`{v}` is not a non-negative decimal number, e.g. \"2.50\""))),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
                Ok(Decimal(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
                u64::try_from(v).map(|v| Decimal(v.to_string())).map_err(|_| E::custom("a price cannot be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
                Err(E::custom(format!(
                    "write fractional prices as strings, e.g. \"{v}\" (a JSON number would pass through a float)"
                )))
            }
        }
        deserializer.deserialize_any(DecimalVisitor)
    }
}

/// One model's price in the filter config, in USD per million tokens (how providers list them).
/// Omitted cache prices default to the input price.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceOverride {
    pub input_per_mtok: Decimal,
    pub output_per_mtok: Decimal,
    #[serde(default)]
    pub cache_read_per_mtok: Option<Decimal>,
    #[serde(default)]
    pub cache_write_per_mtok: Option<Decimal>,
    /// A 1-hour cache write (Anthropic); defaults to `cache_write_per_mtok`.
    #[serde(default)]
    pub cache_write_1h_per_mtok: Option<Decimal>,
    /// A hosted web-search call, in USD per 1000 calls (how providers list it, e.g. "10").
    #[serde(default)]
    pub web_search_per_1k_calls: Option<Decimal>,
    /// The long-context tier, if the model has one.
    #[serde(default)]
    pub long_context: Option<LongContextOverride>,
    #[serde(default)]
    pub max_input_tokens: Option<u64>,
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
}

/// A long-context tier in the filter config, USD per million tokens. Omitted prices keep the base
/// price of their kind.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongContextOverride {
    /// The tier applies when the prompt exceeds this many tokens (default 200000).
    #[serde(default = "default_long_context_threshold")]
    pub above_tokens: u64,
    #[serde(default)]
    pub input_per_mtok: Option<Decimal>,
    #[serde(default)]
    pub output_per_mtok: Option<Decimal>,
    #[serde(default)]
    pub cache_read_per_mtok: Option<Decimal>,
    #[serde(default)]
    pub cache_write_per_mtok: Option<Decimal>,
}

fn default_long_context_threshold() -> u64 {
    DEFAULT_LONG_CONTEXT_THRESHOLD
}

/// The filter config's `pricing` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingConfig {
    /// Start from the bundled price table (default true); false prices only `models`.
    #[serde(default = "yes")]
    pub bundled: bool,
    /// What to do with a model that has no price (default `zero`: charge nothing, count it).
    #[serde(default)]
    pub unknown_model: UnknownModelPolicy,
    /// The price for unknown models; required by, and only allowed with, `unknown_model: default_price`.
    #[serde(default)]
    pub default_price: Option<PriceOverride>,
    /// Prices that add to or replace the table's, by exact model name.
    #[serde(default)]
    pub models: BTreeMap<String, PriceOverride>,
    /// Names priced as another model, e.g. an Azure deployment → `gpt-4o`.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// Estimate settings.
    #[serde(default)]
    pub estimate: EstimateConfig,
}

fn yes() -> bool {
    true
}

impl Default for PricingConfig {
    fn default() -> PricingConfig {
        PricingConfig {
            bundled: true,
            unknown_model: UnknownModelPolicy::default(),
            default_price: None,
            models: BTreeMap::new(),
            aliases: BTreeMap::new(),
            estimate: EstimateConfig::default(),
        }
    }
}

/// A problem in the `pricing` config section. Displays as `pricing.<path>: <problem>`, so the
/// filter's config error reads `tollgate config: pricing.<path>: <problem>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricingConfigError {
    /// The field, starting with `pricing.`.
    pub path: String,
    pub problem: String,
}

impl fmt::Display for PricingConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.problem)
    }
}

impl std::error::Error for PricingConfigError {}

/// A price file that is not LiteLLM-format JSON: where, and serde_json's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceFileError {
    /// 1-based line of the problem (0 at the end of the text).
    pub line: usize,
    /// 1-based column (a byte count) on that line.
    pub column: usize,
    pub problem: String,
}

impl fmt::Display for PriceFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "price table: {}", self.problem)
    }
}

impl std::error::Error for PriceFileError {}

/// Model prices, the unknown-model policy and estimate settings, built once per VM.
///
/// The bundled prices are not parsed at start: they are the compiled table [`bundled::MODELS`],
/// found by name through its generated hash index ([`bundled_entry`]). `entries` holds what a price file or the config adds,
/// and is consulted first, so a configured model replaces the bundled one of the same name.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    entries: HashMap<String, ModelPrice>,
    /// Whether [`bundled::MODELS`] is part of the table.
    with_bundled: bool,
    aliases: HashMap<String, String>,
    unknown_model: UnknownModelPolicy,
    default_price: Option<ModelPrice>,
    estimate: EstimateConfig,
    skipped: usize,
}

impl PriceTable {
    /// A table with no prices (every model unknown; policy `zero`).
    pub fn empty() -> PriceTable {
        PriceTable::default()
    }

    /// The bundled table (`core/prices/model_prices.json`), as compiled into [`bundled::MODELS`]:
    /// nothing is parsed, so a VM start costs no JSON. A unit test checks the compiled table is
    /// exactly what [`PriceTable::from_litellm_json`] reads from the file.
    pub fn bundled() -> Result<PriceTable, PriceFileError> {
        Ok(PriceTable { with_bundled: true, skipped: bundled::SKIPPED, ..PriceTable::default() })
    }

    /// Loads LiteLLM's `model_prices_and_context_window.json` format. Entries without
    /// `input_cost_per_token`, with an unreadable price, and `sample_spec` are skipped (see
    /// [`PriceTable::skipped`]); fields other than prices and token limits are ignored.
    pub fn from_litellm_json(text: &str) -> Result<PriceTable, PriceFileError> {
        let raw = litellm::parse(text)?;
        let mut table = PriceTable::empty();
        // Bare names reachable through provider-prefixed keys: name → (rank, key, price).
        let mut stripped: HashMap<&str, (u32, &str, ModelPrice)> = HashMap::new();
        let mut priced = Vec::with_capacity(raw.len());
        for (key, entry) in &raw {
            // A top-level member that is not an object is not a model.
            let Some(entry) = entry else { continue };
            if key == "sample_spec" {
                continue;
            }
            let Some(price) = entry.to_price() else {
                table.skipped += 1;
                continue;
            };
            if let Some((prefix, bare)) = key.rsplit_once('/') {
                let rank = provider_rank(prefix);
                let better = match stripped.get(bare) {
                    Some((r, k, _)) => (rank, key.as_ref()) < (*r, *k),
                    None => true,
                };
                if better && !bare.is_empty() {
                    stripped.insert(bare, (rank, key.as_ref(), price));
                }
            }
            priced.push((key.as_ref(), price));
        }
        table.entries.reserve(priced.len() + stripped.len());
        for (key, price) in priced {
            table.entries.insert(key.to_owned(), price);
        }
        for (bare, (_, _, price)) in stripped {
            if !table.entries.contains_key(bare) {
                table.entries.insert(bare.to_owned(), price);
            }
        }
        Ok(table)
    }

    /// Builds the table the filter uses from its `pricing` config section.
    pub fn from_config(config: &PricingConfig) -> Result<PriceTable, PricingConfigError> {
        let mut table = if config.bundled {
            PriceTable::bundled().map_err(|e| PricingConfigError {
                path: "pricing.bundled".into(),
                problem: format!("the bundled {e} (rebuild the filter; set bundled: false to work around)"),
            })?
        } else {
            PriceTable::empty()
        };
        config.estimate.validate().map_err(|(field, problem)| PricingConfigError {
            path: format!("pricing.estimate.{field}"),
            problem: problem.into(),
        })?;
        table.estimate = config.estimate;
        for (model, over) in &config.models {
            let price = over.to_price(&format!("pricing.models.{model}"))?;
            table.entries.insert(model.clone(), price);
        }
        table.unknown_model = config.unknown_model;
        table.default_price = match (&config.default_price, config.unknown_model) {
            (Some(over), UnknownModelPolicy::DefaultPrice) => Some(over.to_price("pricing.default_price")?),
            (None, UnknownModelPolicy::DefaultPrice) => {
                return Err(PricingConfigError {
                    path: "pricing.default_price".into(),
                    problem: "required when unknown_model is default_price; give input_per_mtok and output_per_mtok"
                        .into(),
                })
            }
            (Some(_), _) => {
                return Err(PricingConfigError {
                    path: "pricing.default_price".into(),
                    problem: "only used when unknown_model is default_price; set that or remove default_price".into(),
                })
            }
            (None, _) => None,
        };
        for (alias, target) in &config.aliases {
            if table.lookup(target).is_none() {
                return Err(PricingConfigError {
                    path: format!("pricing.aliases.{alias}"),
                    problem: format!("target model `{target}` has no price; add it under pricing.models"),
                });
            }
            table.aliases.insert(alias.clone(), target.clone());
        }
        Ok(table)
    }

    /// Number of priced entries (including bare names reachable through prefixed keys).
    pub fn len(&self) -> usize {
        let bundled_only = |models: &[(&str, ModelPrice)]| models.iter().filter(|(name, _)| !self.entries.contains_key(*name)).count();
        self.entries.len() + if self.with_bundled { bundled_only(&bundled::MODELS) } else { 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A name as it stands in the table: the configured entries first, then the bundled ones.
    fn entry(&self, name: &str) -> Option<&ModelPrice> {
        match self.entries.get(name) {
            Some(price) => Some(price),
            None if self.with_bundled => bundled_entry(name),
            None => None,
        }
    }

    /// Entries of the source file that were skipped (no per-token input price, or unreadable).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    pub fn unknown_model_policy(&self) -> UnknownModelPolicy {
        self.unknown_model
    }

    pub fn estimate_config(&self) -> &EstimateConfig {
        &self.estimate
    }

    /// The model's price if the table knows it (aliases, prefixes and date suffixes applied; no
    /// unknown-model policy).
    pub fn lookup(&self, model: &str) -> Option<&ModelPrice> {
        let model = self.aliases.get(model).map(String::as_str).unwrap_or(model);
        let lower = model.bytes().any(|b| b.is_ascii_uppercase()).then(|| model.to_ascii_lowercase());
        let lower = lower.as_deref();
        let names = [Some(model), lower].into_iter().flatten();
        let candidates = || names.clone().flat_map(|name| [name, strip_prefix(name)]);
        let found = candidates()
            .find_map(|name| self.entry(name))
            .or_else(|| candidates().filter_map(strip_date_suffix).find_map(|name| self.entry(name)));
        found
    }

    /// The price to apply to `model`, after the unknown-model policy.
    pub fn price(&self, model: &str) -> Result<PriceLookup, UnknownModel> {
        if let Some(price) = self.lookup(model) {
            return Ok(PriceLookup { price: *price, known: true });
        }
        match (self.unknown_model, self.default_price) {
            (UnknownModelPolicy::Deny, _) => Err(UnknownModel { model: model.to_owned() }),
            (UnknownModelPolicy::DefaultPrice, Some(price)) => Ok(PriceLookup { price, known: false }),
            _ => Ok(PriceLookup { price: ModelPrice::default(), known: false }),
        }
    }

    /// What `tokens` of `model` cost, after the unknown-model policy.
    pub fn cost(&self, model: &str, tokens: &Tokens) -> Result<Cost, UnknownModel> {
        let lookup = self.price(model)?;
        let (picos, long_context) = lookup.price.cost_picos(tokens);
        Ok(Cost { micros: money::picos_to_micros_ceil(picos), known: lookup.known, long_context })
    }
}

/// Slots of the compiled table's hash index ([`bundled::SLOTS`]): a power of two, at most half full.
const BUNDLED_SLOTS: usize = 2048;
/// An empty slot of [`bundled::SLOTS`].
const NO_MODEL: u16 = u16::MAX;

/// FNV-1a over the name's bytes: the compiled table's hash. Cheaper in wasm than the `HashMap`'s
/// SipHash for the short names looked up on every request, and fixed, so the index can be
/// generated once with the table.
fn name_hash(name: &str) -> usize {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (hash ^ (hash >> 32)) as usize
}

/// The compiled table's entry for exactly `name`: open addressing with linear probing over
/// [`bundled::SLOTS`], which the generator filled in table order (so probing is bounded by the
/// table's size, and an empty slot ends it).
fn bundled_entry(name: &str) -> Option<&'static ModelPrice> {
    let mut slot = name_hash(name) % BUNDLED_SLOTS;
    for _ in 0..BUNDLED_SLOTS {
        let index = *bundled::SLOTS.get(slot)?;
        if index == NO_MODEL {
            return None;
        }
        match bundled::MODELS.get(usize::from(index)) {
            Some((key, price)) if *key == name => return Some(price),
            _ => slot = (slot + 1) % BUNDLED_SLOTS,
        }
    }
    None
}

/// The hash index of a table whose names are `names` (in table order): what [`bundled_entry`]
/// probes. Written into `pricing/bundled.rs` by its generator.
#[cfg(test)]
fn bundled_slots(names: &[&str]) -> Vec<u16> {
    let mut slots = vec![NO_MODEL; BUNDLED_SLOTS];
    for (index, name) in names.iter().enumerate() {
        let mut slot = name_hash(name) % BUNDLED_SLOTS;
        while slots[slot] != NO_MODEL {
            slot = (slot + 1) % BUNDLED_SLOTS;
        }
        slots[slot] = u16::try_from(index).unwrap_or(NO_MODEL);
    }
    slots
}

/// Preference among provider prefixes when several keys share a bare name (lower wins).
fn provider_rank(prefix: &str) -> u32 {
    match prefix {
        "openai" | "text-completion-openai" => 0,
        "anthropic" => 1,
        "gemini" => 2,
        "vertex_ai" => 3,
        "azure" => 4,
        _ => 100,
    }
}

/// `models/gemini-2.5-pro` → `gemini-2.5-pro`; `openai/gpt-4o` → `gpt-4o`.
fn strip_prefix(model: &str) -> &str {
    model.rsplit_once('/').map(|(_, bare)| bare).filter(|b| !b.is_empty()).unwrap_or(model)
}

/// `gpt-4o-2024-08-06` → `gpt-4o`, `claude-3-5-sonnet-20241022` → `claude-3-5-sonnet`,
/// `claude-3-5-sonnet-v2@20241022` → `claude-3-5-sonnet-v2`, `gemini-1.5-flash-002` → `gemini-1.5-flash`.
fn strip_date_suffix(model: &str) -> Option<&str> {
    if let Some((base, _)) = model.rsplit_once('@') {
        return (!base.is_empty()).then_some(base);
    }
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    // -YYYY-MM-DD
    let mut parts = model.rsplitn(4, '-');
    if let (Some(d), Some(m), Some(y), Some(base)) = (parts.next(), parts.next(), parts.next(), parts.next()) {
        if digits(y, 4) && digits(m, 2) && digits(d, 2) && !base.is_empty() {
            return Some(base);
        }
    }
    // -YYYYMMDD or -NNN
    let (base, tail) = model.rsplit_once('-')?;
    ((digits(tail, 8) || digits(tail, 3)) && !base.is_empty()).then_some(base)
}

impl PriceOverride {
    fn to_price(&self, path: &str) -> Result<ModelPrice, PricingConfigError> {
        let per_mtok = |field: &str, value: &Decimal| -> Result<PicosPerToken, PricingConfigError> {
            // USD per million tokens × 10^6 = pico-dollars per token.
            money::parse_decimal_scaled(&value.0, 6).and_then(|p| PicosPerToken::try_from(p).ok()).ok_or_else(|| {
                PricingConfigError {
                    path: format!("{path}.{field}"),
                    problem: format!("`{}` is not a usable price in USD per million tokens, e.g. \"2.50\"", value.0),
                }
            })
        };
        let opt = |field: &str, value: &Option<Decimal>| value.as_ref().map(|v| per_mtok(field, v)).transpose();
        let input = per_mtok("input_per_mtok", &self.input_per_mtok)?;
        let cache_write = opt("cache_write_per_mtok", &self.cache_write_per_mtok)?.unwrap_or(input);
        let base = TierPrice {
            input,
            output: per_mtok("output_per_mtok", &self.output_per_mtok)?,
            cache_read: opt("cache_read_per_mtok", &self.cache_read_per_mtok)?.unwrap_or(input),
            cache_write,
            cache_write_1h: opt("cache_write_1h_per_mtok", &self.cache_write_1h_per_mtok)?.unwrap_or(cache_write),
        };
        let web_search_per_call = match &self.web_search_per_1k_calls {
            None => 0,
            // USD per 1000 calls × 10^9 = pico-dollars per call.
            Some(v) => money::parse_decimal_scaled(&v.0, 9).and_then(|p| PicosPerToken::try_from(p).ok()).ok_or_else(|| {
                PricingConfigError {
                    path: format!("{path}.web_search_per_1k_calls"),
                    problem: format!("`{}` is not a usable price in USD per 1000 calls, e.g. \"10\"", v.0),
                }
            })?,
        };
        let long_context = match &self.long_context {
            None => None,
            Some(long) => {
                let prices = [
                    opt("long_context.input_per_mtok", &long.input_per_mtok)?,
                    opt("long_context.output_per_mtok", &long.output_per_mtok)?,
                    opt("long_context.cache_read_per_mtok", &long.cache_read_per_mtok)?,
                    opt("long_context.cache_write_per_mtok", &long.cache_write_per_mtok)?,
                    None,
                ];
                let tier = long_tier(&base, long.above_tokens, prices, self.cache_write_1h_per_mtok.is_some());
                if tier.is_none() {
                    return Err(PricingConfigError {
                        path: format!("{path}.long_context"),
                        problem: "names no price; give at least input_per_mtok or output_per_mtok, or remove it".into(),
                    });
                }
                tier
            }
        };
        Ok(ModelPrice {
            base,
            long_context,
            max_input_tokens: self.max_input_tokens,
            max_output_tokens: self.max_output_tokens,
            web_search_per_call,
        })
    }
}

/// The long-context tier from its listed prices (input, output, cache read, cache write, 1-hour
/// cache write); kinds not listed keep the base price. `None` when no long-context price is listed.
/// As LiteLLM prices it: an unlisted 1-hour write keeps the base 1-hour price when the model lists
/// one (`base_1h_listed`), else it is the tier's cache-write price.
fn long_tier(
    base: &TierPrice,
    above_tokens: u64,
    [input, output, cache_read, cache_write, cache_write_1h]: [Option<PicosPerToken>; 5],
    base_1h_listed: bool,
) -> Option<LongContext> {
    if input.is_none() && output.is_none() && cache_read.is_none() && cache_write.is_none() && cache_write_1h.is_none() {
        return None;
    }
    let tier_write = cache_write.unwrap_or(base.cache_write);
    let price = TierPrice {
        input: input.unwrap_or(base.input),
        output: output.unwrap_or(base.output),
        cache_read: cache_read.unwrap_or(base.cache_read),
        cache_write: tier_write,
        cache_write_1h: cache_write_1h.unwrap_or(if base_1h_listed { base.cache_write_1h } else { tier_write }),
    };
    Some(LongContext { above_tokens, price })
}

mod bundled;
mod litellm;

#[cfg(test)]
#[path = "pricing/tests.rs"]
mod tests;
