//! LiteLLM's price file (`model_prices_and_context_window.json`), read with `serde_json`: a JSON
//! object of model → object of fields.
//!
//! The filter does not run it: the bundled file is compiled into a sorted table
//! (`pricing/bundled.rs`, written from this reader's output and checked against it by a unit test),
//! so a VM start parses no JSON. It reads the file for that check and for tables given as text.
//! It stays lean all the same, so nothing is built that pricing does not use:
//! keys are borrowed from the file, every field we do not price with is skipped
//! ([`IgnoredAny`]), and the fields we do price with are kept as their *number text*
//! ([`RawValue`]), never as `f64`: `money::parse_decimal_scaled` turns the text into exact
//! pico-dollars. A number written as a string (`"3.3e-07"`) reads like the number; `null`, a
//! boolean, a list or an object counts as absent.

use super::{long_tier, ModelPrice, PriceFileError, TierPrice};
use crate::money::{self, PicosPerToken};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// LiteLLM's names for the five prices: input, output, cache read, cache write, 1-hour cache
/// write. The long-context tier is the same name plus `_above_<N>k_tokens`.
const KINDS: [&str; 5] = [
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "cache_creation_input_token_cost_above_1hr",
];

/// The object of per-query web-search prices, and the one LiteLLM's calculator charges when the
/// request names no search context size.
const WEB_SEARCH: (&str, &str) = ("search_context_cost_per_query", "search_context_size_medium");

/// Price and limit fields of one entry, as number text.
#[derive(Debug, Default)]
pub(super) struct RawEntry<'a> {
    /// Base prices in [`KINDS`] order.
    base: [Option<&'a str>; 5],
    /// The lowest long-context threshold listed, and its prices in [`KINDS`] order.
    long: Option<(u64, [Option<&'a str>; 5])>,
    max_input_tokens: Option<&'a str>,
    max_output_tokens: Option<&'a str>,
    /// `search_context_cost_per_query.search_context_size_medium`: USD per web-search call.
    web_search: Option<&'a str>,
}

/// Where a field of an entry goes, decided from its name before its value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    MaxInputTokens,
    MaxOutputTokens,
    /// A base price, by [`KINDS`] index.
    Base(usize),
    /// A long-context price: threshold in tokens, [`KINDS`] index.
    Long(u64, usize),
    WebSearch,
    /// Not used for pricing: skipped.
    Other,
}

impl Field {
    fn of(key: &str) -> Field {
        match key {
            "max_input_tokens" => return Field::MaxInputTokens,
            "max_output_tokens" => return Field::MaxOutputTokens,
            k if k == WEB_SEARCH.0 => return Field::WebSearch,
            _ => {}
        }
        // Longest name first: the 1-hour write's name starts with the plain write's.
        for (kind, name) in KINDS.iter().enumerate().rev() {
            let Some(rest) = key.strip_prefix(name) else { continue };
            if rest.is_empty() {
                return Field::Base(kind);
            }
            // `_above_200k_tokens`; other suffixes (`_batches`, `_priority`) are other products
            // and are ignored.
            let thousands = rest
                .strip_prefix("_above_")
                .and_then(|r| r.strip_suffix("k_tokens"))
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u64>().ok())
                .and_then(|n| n.checked_mul(1000));
            if let Some(threshold) = thousands {
                return Field::Long(threshold, kind);
            }
        }
        Field::Other
    }
}

/// The number text of a value: a JSON number as written, or the inside of a string (a number
/// written as a string); anything else is absent.
fn number_text(raw: &RawValue) -> Option<&str> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'0'..=b'9' | b'-') => Some(text),
        Some(b'"') => text.get(1..text.len().saturating_sub(1)),
        _ => None,
    }
}

impl<'a> RawEntry<'a> {
    fn record(&mut self, field: Field, text: &'a str) {
        let slot = match field {
            Field::MaxInputTokens => &mut self.max_input_tokens,
            Field::MaxOutputTokens => &mut self.max_output_tokens,
            Field::WebSearch => &mut self.web_search,
            Field::Base(kind) => match self.base.get_mut(kind) {
                Some(slot) => slot,
                None => return,
            },
            Field::Long(threshold, kind) => {
                let tier = match &mut self.long {
                    Some((current, _)) if threshold > *current => return,
                    Some((current, tier)) if threshold == *current => tier,
                    long => &mut long.insert((threshold, [None; 5])).1,
                };
                match tier.get_mut(kind) {
                    Some(slot) => slot,
                    None => return,
                }
            }
            Field::Other => return,
        };
        *slot = Some(text);
    }

    /// `None` when the entry has no per-token input price or a price does not parse.
    pub(super) fn to_price(&self) -> Option<ModelPrice> {
        let price = |text: Option<&str>| -> Result<Option<PicosPerToken>, ()> {
            match text {
                None => Ok(None),
                Some(t) => {
                    money::parse_decimal_scaled(t, 12).and_then(|p| PicosPerToken::try_from(p).ok()).map(Some).ok_or(())
                }
            }
        };
        let count = |text: Option<&str>| text.and_then(|t| t.parse::<u64>().ok());
        let [input, output, cache_read, cache_write, cache_write_1h] = self.base;
        let input = price(input).ok()??;
        let cache_write = price(cache_write).ok()?.unwrap_or(input);
        let listed_1h = price(cache_write_1h).ok()?;
        let base = TierPrice {
            input,
            output: price(output).ok()?.unwrap_or(0),
            cache_read: price(cache_read).ok()?.unwrap_or(input),
            cache_write,
            // LiteLLM prices a 1-hour write at the plain write rate when no 1-hour rate is listed.
            cache_write_1h: listed_1h.unwrap_or(cache_write),
        };
        let long_context = match self.long {
            None => None,
            Some((above_tokens, [i, o, r, w, h])) => long_tier(
                &base,
                above_tokens,
                [price(i).ok()?, price(o).ok()?, price(r).ok()?, price(w).ok()?, price(h).ok()?],
                listed_1h.is_some(),
            ),
        };
        Some(ModelPrice {
            base,
            long_context,
            max_input_tokens: count(self.max_input_tokens),
            max_output_tokens: count(self.max_output_tokens),
            web_search_per_call: price(self.web_search).ok()?.unwrap_or(0),
        })
    }
}

/// The file's top-level members in file order: (key, entry); a member that is not an object has
/// no entry (`None`).
pub(super) type Members<'a> = Vec<(Cow<'a, str>, Option<RawEntry<'a>>)>;

/// Parses the whole file.
pub(super) fn parse(text: &str) -> Result<Members<'_>, PriceFileError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let file = de.deserialize_map(FileVisitor).and_then(|file| de.end().map(|()| file));
    file.map_err(|e| PriceFileError { line: e.line(), column: e.column(), problem: e.to_string() })
}

struct FileVisitor;

impl<'de> Visitor<'de> for FileVisitor {
    type Value = Members<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of models")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(Key(key)) = map.next_key()? {
            let Entry(entry) = map.next_value()?;
            out.push((key, entry));
        }
        Ok(out)
    }
}

/// A key, borrowed from the file unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key<'de>, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A top-level member: a model entry when it is an object, else nothing (skipped).
struct Entry<'a>(Option<RawEntry<'a>>);

impl<'de> Deserialize<'de> for Entry<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Entry<'de>, D::Error> {
        deserializer.deserialize_any(ObjectOr { seed: EntryFields }).map(Entry)
    }
}

/// The fields of one model entry.
struct EntryFields;

impl<'de> Visitor<'de> for EntryFields {
    type Value = RawEntry<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a model entry object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEntry<'de>, A::Error> {
        let mut entry = RawEntry::default();
        while let Some(Key(key)) = map.next_key()? {
            match Field::of(&key) {
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
                Field::WebSearch => {
                    let Medium(text) = map.next_value()?;
                    if let Some(text) = text {
                        entry.record(Field::WebSearch, text);
                    }
                }
                field => {
                    let raw: &'de RawValue = map.next_value()?;
                    if let Some(text) = number_text(raw) {
                        entry.record(field, text);
                    }
                }
            }
        }
        Ok(entry)
    }
}

/// `search_context_cost_per_query`: the number text of its `search_context_size_medium` member
/// (a JSON number only), the rest skipped; not an object: nothing.
struct Medium<'a>(Option<&'a str>);

impl<'de> Deserialize<'de> for Medium<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Medium<'de>, D::Error> {
        struct MediumFields;
        impl<'de> Visitor<'de> for MediumFields {
            type Value = Option<&'de str>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of per-query prices")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<&'de str>, A::Error> {
                let mut found = None;
                while let Some(Key(key)) = map.next_key()? {
                    if key == WEB_SEARCH.1 {
                        let raw: &'de RawValue = map.next_value()?;
                        found = number_text(raw).filter(|_| !raw.get().starts_with('"'));
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(found)
            }
        }
        deserializer.deserialize_any(ObjectOr { seed: MediumFields }).map(|v| Medium(v.flatten()))
    }
}

/// Reads an object with `seed`'s `visit_map`; any other value is skipped and gives `None`.
struct ObjectOr<V> {
    seed: V,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for ObjectOr<V> {
    type Value = Option<V::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.seed.expecting(f)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.seed.visit_map(map).map(Some)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}
