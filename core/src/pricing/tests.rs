//! Prices: exact parsing of LiteLLM's number text, hand-computed costs, the long-context tier,
//! model lookup, the unknown-model policy and the config section's errors.

use super::*;
use proptest::prelude::*;

const USD: u128 = 1_000_000_000_000; // pico-dollars

fn tokens(input: u64, output: u64, cache_read: u64, cache_write: u64) -> Tokens {
    Tokens { input, output, cache_read, cache_write, ..Tokens::default() }
}

fn table(json: &str) -> PriceTable {
    match PriceTable::from_litellm_json(json) {
        Ok(table) => table,
        Err(e) => panic!("test table does not load: {e}"),
    }
}

fn config(json: &str) -> Result<PriceTable, String> {
    let config: PricingConfig = serde_json::from_str(json).map_err(|e| format!("serde: {e}"))?;
    PriceTable::from_config(&config).map_err(|e| e.to_string())
}

const SMALL: &str = r#"{
  "sample_spec": {"input_cost_per_token": "set to 0.0 if free", "max_tokens": "LEGACY"},
  "claude-like": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
    "cache_read_input_token_cost": 3e-07, "cache_creation_input_token_cost": 3.75e-06,
    "cache_creation_input_token_cost_above_1hr": 6e-06, "input_cost_per_token_batches": 1.5e-06,
    "max_input_tokens": 200000, "max_output_tokens": 64000, "supports_vision": true,
    "search_context_cost_per_query": {"search_context_size_low": 0.01}, "supported_endpoints": ["/v1/messages"]},
  "gemini-long": {"input_cost_per_token": 1.25e-06, "output_cost_per_token": 1e-05,
    "cache_read_input_token_cost": 1.25e-07,
    "input_cost_per_token_above_200k_tokens": 2.5e-06, "output_cost_per_token_above_200k_tokens": 1.5e-05,
    "cache_read_input_token_cost_above_200k_tokens": 2.5e-07,
    "input_cost_per_token_above_200k_tokens_priority": 4.5e-06},
  "mini": {"input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07},
  "odd": {"input_cost_per_token": "3.3e-07", "output_cost_per_token": null,
    "input_cost_per_token_above_512k_tokens": 9e-07, "input_cost_per_token_above_128k_tokens": 6e-07,
    "output_cost_per_token_above_128k_tokens": 1e-06},
  "precise": {"input_cost_per_token": 1.2345678901234567e-06, "output_cost_per_token": 0},
  "image-only": {"input_cost_per_image": 0.04, "mode": "image_generation"},
  "broken": {"input_cost_per_token": "free"},
  "gpt-4o": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05},
  "gpt-4o-2024-05-13": {"input_cost_per_token": 5e-06, "output_cost_per_token": 1.5e-05},
  "azure/only-on-azure": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06},
  "azure/both": {"input_cost_per_token": 9e-06, "output_cost_per_token": 9e-06},
  "openai/both": {"input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06},
  "azure/eu/both": {"input_cost_per_token": 8e-06, "output_cost_per_token": 8e-06},
  "gemini/gemini-9-pro": {"input_cost_per_token": 2e-06, "output_cost_per_token": 4e-06},
  "claude-9-sonnet": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05},
  "gemini-9-flash": {"input_cost_per_token": 3e-07, "output_cost_per_token": 2.5e-06}
}"#;

fn price(table: &PriceTable, model: &str) -> ModelPrice {
    match table.lookup(model) {
        Some(price) => *price,
        None => panic!("no price for {model}"),
    }
}

#[test]
fn litellm_number_text_becomes_exact_picos_per_token() {
    let t = table(SMALL);
    let claude = price(&t, "claude-like");
    assert_eq!(
        claude.base,
        TierPrice { input: 3_000_000, output: 15_000_000, cache_read: 300_000, cache_write: 3_750_000, cache_write_1h: 6_000_000 }
    );
    assert_eq!((claude.max_input_tokens, claude.max_output_tokens), (Some(200_000), Some(64_000)));
    assert_eq!(claude.long_context, None, "`_above_1hr` and `_batches` are other products");
    assert_eq!(price(&t, "mini").base.input, 150_000);
    assert_eq!(price(&t, "odd").base.input, 330_000, "numeric strings read like numbers");
    assert_eq!(price(&t, "odd").base.output, 0, "null is absent");
    assert_eq!(price(&t, "precise").base.input, 1_234_568, "sub-pico digits round up");
}

#[test]
fn entries_without_a_token_price_are_skipped_and_counted() {
    let t = table(SMALL);
    assert!(t.lookup("sample_spec").is_none());
    assert!(t.lookup("image-only").is_none());
    assert!(t.lookup("broken").is_none());
    assert_eq!(t.skipped(), 2, "image-only and broken");
}

#[test]
fn missing_cache_prices_fall_back_to_the_input_price() {
    let mini = price(&table(SMALL), "mini");
    assert_eq!((mini.base.cache_read, mini.base.cache_write), (150_000, 150_000));
}

#[test]
fn cost_is_summed_in_picos_by_kind_by_hand() {
    // $3/M × 1000 + $15/M × 500 + $0.30/M × 2000 + $3.75/M × 400
    // = 0.003 + 0.0075 + 0.0006 + 0.0015 = $0.0126 = 12_600 micro-dollars, exactly.
    let t = table(SMALL);
    let cost = t.cost("claude-like", &tokens(1000, 500, 2000, 400));
    assert_eq!(cost, Ok(Cost { micros: 12_600, known: true, long_context: false }));
    assert_eq!(price(&t, "claude-like").cost_picos(&tokens(1000, 500, 2000, 400)), (12_600 * 1_000_000, false));
}

#[test]
fn cost_rounds_up_once_after_summing() {
    let t = table(SMALL);
    // 1 input at 150_000 picos + 1 output at 600_000 = 750_000 picos: one micro-dollar, not two.
    assert_eq!(t.cost("mini", &tokens(1, 1, 0, 0)).map(|c| c.micros), Ok(1));
    // 7 inputs = 1_050_000 picos: rounds up to 2.
    assert_eq!(t.cost("mini", &tokens(7, 0, 0, 0)).map(|c| c.micros), Ok(2));
    assert_eq!(t.cost("mini", &Tokens::default()).map(|c| c.micros), Ok(0));
}

#[test]
fn a_float_would_be_wrong_here_and_integers_are_not() {
    // 300 cache writes at 3.75e-06 = $0.001125 = 1125 micro-dollars exactly. In f64,
    // 3.75e-06 * 300 * 1e6 is 1125.0000000000002, which a round-up would bill as 1126.
    let t = table(SMALL);
    assert_eq!(t.cost("claude-like", &tokens(0, 0, 0, 300)).map(|c| c.micros), Ok(1125));
}

#[test]
fn long_context_tier_prices_the_whole_request_above_its_threshold() {
    let t = table(SMALL);
    let gemini = price(&t, "gemini-long");
    // Exactly 200k prompt tokens: base tier. 200_000 × $1.25/M + 1000 × $10/M = $0.25 + $0.01.
    assert_eq!(
        t.cost("gemini-long", &tokens(200_000, 1000, 0, 0)).map(|c| (c.micros, c.long_context)),
        Ok((260_000, false))
    );
    // 150k input + 60k cache read = 210k prompt: long tier for every kind.
    // 150_000 × $2.50/M + 60_000 × $0.25/M + 1000 × $15/M = $0.375 + $0.015 + $0.015 = $0.405.
    assert_eq!(
        t.cost("gemini-long", &tokens(150_000, 1000, 60_000, 0)).map(|c| (c.micros, c.long_context)),
        Ok((405_000, true))
    );
    let long = gemini.long_context.map(|l| (l.above_tokens, l.price));
    let want = TierPrice { input: 2_500_000, output: 15_000_000, cache_read: 250_000, cache_write: 1_250_000, cache_write_1h: 1_250_000 };
    assert_eq!(long, Some((200_000, want)), "an unlisted kind keeps its base price");
    // The lowest listed threshold is kept.
    let odd = price(&t, "odd").long_context.map(|l| (l.above_tokens, l.price.input, l.price.output));
    assert_eq!(odd, Some((128_000, 600_000, 1_000_000)));
}

#[test]
fn huge_counts_saturate_instead_of_wrapping() {
    let t = table(SMALL);
    let cost = t.cost("claude-like", &tokens(u64::MAX, u64::MAX, u64::MAX, u64::MAX));
    assert_eq!(cost.map(|c| c.micros), Ok(i64::MAX));
    let all_kinds_price: u128 = 3_000_000 + 15_000_000 + 300_000 + 3_750_000;
    let picos = price(&t, "claude-like").cost_picos(&tokens(u64::MAX, u64::MAX, u64::MAX, u64::MAX)).0;
    assert_eq!(picos, u128::from(u64::MAX) * all_kinds_price, "u128 pico-dollars hold any u64 token count exactly");
    assert!(picos / USD > 1_000_000_000, "that is more dollars than an i64 of micros holds");
}

#[test]
fn lookup_tries_prefixes_then_date_suffixes() {
    let t = table(SMALL);
    let input = |model: &str| t.lookup(model).map(|p| p.base.input);
    assert_eq!(input("gpt-4o"), Some(2_500_000));
    assert_eq!(input("gpt-4o-2024-05-13"), Some(5_000_000), "an exact dated entry wins");
    assert_eq!(input("gpt-4o-2099-01-01"), Some(2_500_000), "-YYYY-MM-DD falls back");
    assert_eq!(input("openai/gpt-4o"), Some(2_500_000), "a provider prefix in the name");
    assert_eq!(input("GPT-4o"), Some(2_500_000), "case");
    assert_eq!(input("claude-9-sonnet-20991231"), Some(3_000_000), "-YYYYMMDD");
    assert_eq!(input("claude-9-sonnet@20991231"), Some(3_000_000), "Vertex @YYYYMMDD");
    assert_eq!(input("gemini-9-flash-002"), Some(300_000), "Gemini revision");
    assert_eq!(input("models/gemini-9-flash"), Some(300_000), "Gemini models/ prefix");
    assert_eq!(input("gemini-9-pro"), Some(2_000_000), "a prefixed key by its bare name");
    assert_eq!(input("only-on-azure"), Some(1_000_000));
    assert_eq!(input("both"), Some(1_000_000), "openai/ is preferred to azure/ and azure/eu/");
    assert_eq!(input("azure/both"), Some(9_000_000), "the full key is still exact");
    assert_eq!(input("gpt-4o-mini-2099-01-01"), None, "no guessing beyond the suffix");
    assert_eq!(input("gpt-4o-20"), None);
    assert_eq!(input(""), None);
}

#[test]
fn unknown_models_follow_the_policy() {
    let deny = config(r#"{"bundled": false, "unknown_model": "deny"}"#).unwrap_or_default();
    let err = deny.cost("mystery", &tokens(10, 10, 0, 0));
    assert_eq!(err, Err(UnknownModel { model: "mystery".into() }));
    let message = err.map(|_| String::new()).unwrap_or_else(|e| e.to_string());
    assert!(message.contains("pricing.models") && message.contains("unknown_model"), "{message}");

    let zero = config(r#"{"bundled": false}"#).unwrap_or_default();
    assert_eq!(zero.unknown_model_policy(), UnknownModelPolicy::Zero, "zero is the default");
    assert_eq!(zero.cost("mystery", &tokens(10, 10, 0, 0)), Ok(Cost { micros: 0, known: false, long_context: false }));

    let default = config(
        r#"{"bundled": false, "unknown_model": "default_price",
            "default_price": {"input_per_mtok": "10", "output_per_mtok": 30}}"#,
    );
    let default = default.unwrap_or_default();
    // 1000 × $10/M + 1000 × $30/M = $0.04.
    assert_eq!(
        default.cost("mystery", &tokens(1000, 1000, 0, 0)),
        Ok(Cost { micros: 40_000, known: false, long_context: false })
    );
}

#[test]
fn config_prices_are_usd_per_million_tokens_and_replace_the_table() {
    let t = config(
        r#"{"models": {
              "gpt-4o": {"input_per_mtok": "2.00", "output_per_mtok": "8", "cache_read_per_mtok": "0.5"},
              "in-house": {"input_per_mtok": "0.1", "output_per_mtok": "0.2", "max_output_tokens": 4096,
                "long_context": {"above_tokens": 100000, "input_per_mtok": "0.3"}}
           },
           "aliases": {"my-azure-deployment": "gpt-4o", "cheap": "in-house"}}"#,
    );
    let t = match t {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    let gpt = price(&t, "gpt-4o");
    assert_eq!(
        gpt.base,
        TierPrice { input: 2_000_000, output: 8_000_000, cache_read: 500_000, cache_write: 2_000_000, cache_write_1h: 2_000_000 }
    );
    assert_eq!(price(&t, "my-azure-deployment"), gpt);
    let house = price(&t, "cheap");
    assert_eq!(house.max_output_tokens, Some(4096));
    assert_eq!(
        house.long_context.map(|l| (l.above_tokens, l.price.input, l.price.output)),
        Some((100_000, 300_000, 200_000))
    );
    assert!(t.lookup("claude-sonnet-4-5").is_some(), "the bundled table is still there");
}

#[test]
fn config_errors_name_the_field_and_the_fix() {
    let check = |json: &str, want: &str| {
        let got = config(json).map(|_| String::from("accepted")).unwrap_or_else(|e| e);
        assert!(got.contains(want), "{json}\n got: {got}\nwant: {want}");
    };
    check(r#"{"bundled": false, "colour": 1}"#, "unknown field `colour`");
    check(
        r#"{"models": {"m": {"input_per_mtok": 2.5, "output_per_mtok": "1"}}}"#,
        "write fractional prices as strings",
    );
    check(r#"{"models": {"m": {"input_per_mtok": "-1", "output_per_mtok": "1"}}}"#, "not a non-negative decimal");
    check(r#"{"models": {"m": {"input_per_mtok": "1"}}}"#, "missing field `output_per_mtok`");
    check(
        r#"{"models": {"m": {"input_per_mtok": "1", "output_per_mtok": "1", "long_context": {}}}}"#,
        "pricing.models.m.long_context: names no price",
    );
    check(
        r#"{"models": {"m": {"input_per_mtok": "1e30", "output_per_mtok": "1"}}}"#,
        "pricing.models.m.input_per_mtok: `1e30` is not a usable price",
    );
    check(
        r#"{"unknown_model": "default_price"}"#,
        "pricing.default_price: required when unknown_model is default_price",
    );
    check(
        r#"{"default_price": {"input_per_mtok": "1", "output_per_mtok": "1"}}"#,
        "pricing.default_price: only used when",
    );
    check(r#"{"unknown_model": "maybe"}"#, "unknown variant `maybe`");
    check(r#"{"aliases": {"x": "no-such-model"}}"#, "pricing.aliases.x: target model `no-such-model` has no price");
    check(
        r#"{"estimate": {"reserve_bytes_per_token": 0}}"#,
        "pricing.estimate.reserve_bytes_per_token: must be at least 1",
    );
}

#[test]
fn the_price_file_must_be_an_object_of_objects() {
    // Where (line, column: serde_json's, 1-based; at the end of the text, the bytes read) and what.
    for (bad, at, what) in [
        ("", (1, 0), "EOF while parsing a value"),
        ("[]", (1, 0), "expected a JSON object of models"),
        ("{\"a\": {\"input_cost_per_token\": 1e-6", (1, 35), "EOF while parsing an object"),
        ("{} x", (1, 4), "trailing characters"),
        ("{\"a\" 1}", (1, 6), "expected `:`"),
        ("{\n  \"a\": {\"input_cost_per_token\": 1e-6,}\n}", (2, 38), "trailing comma"),
    ] {
        let err = PriceTable::from_litellm_json(bad).map(|t| t.len()).map_err(|e| ((e.line, e.column), e.to_string()));
        assert!(matches!(&err, Err((got, text)) if *got == at && text.starts_with("price table: ") && text.contains(what)), "{bad:?}: {err:?}");
    }
    assert_eq!(table("{}").len(), 0);
    assert_eq!(
        table(
            r#"{"note": "not a model", "m": {"input_cost_per_token": 1e-6, "x": [[{"y": [1, -2.5e3, true, null]}]]}}"#
        )
        .len(),
        1
    );
    // Fields nobody prices with are skipped without recursion (serde_json's `IgnoredAny`), so no
    // depth of nesting can exhaust the stack; the model beside them is still read.
    for depth in [100, 100_000] {
        let deep = format!("{{\"m\": {{\"input_cost_per_token\": 1e-6, \"x\": {}{}}}, \"n\": {}{}}}", "[".repeat(depth), "]".repeat(depth), "[".repeat(depth), "]".repeat(depth));
        assert_eq!(PriceTable::from_litellm_json(&deep).map(|t| t.len()), Ok(1), "nesting {depth} deep");
    }
}

#[test]
fn the_bundled_table_loads_whole_and_knows_the_major_models() {
    let t = match PriceTable::bundled() {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(t.skipped(), 0);
    assert!(t.len() > 500, "{}", t.len());
    for model in [
        "gpt-4o",
        "gpt-4o-mini-2024-07-18",
        "text-embedding-3-small",
        "claude-sonnet-4-5",
        "claude-sonnet-4-5-20250929",
        "claude-haiku-4-5",
        "gemini-2.5-pro",
        "gemini-2.5-flash",
        "models/gemini-2.5-flash",
        "azure/gpt-4o",
    ] {
        assert!(t.lookup(model).is_some_and(|p| p.base.input > 0 || model.starts_with("text-")), "{model}");
    }
    // $2.50/M input, $10/M output for gpt-4o in this LiteLLM release.
    assert_eq!(t.cost("gpt-4o", &tokens(1_000_000, 100_000, 0, 0)).map(|c| c.micros), Ok(3_500_000));
    let long = t.lookup("gemini-2.5-pro").and_then(|p| p.long_context).map(|l| l.above_tokens);
    assert_eq!(long, Some(200_000));
}

/// Cross-checks our number scanner against serde_json on the whole bundled file: every price we
/// read is the file's number to within float error, and every priced entry is present.
#[test]
fn the_bundled_table_agrees_with_a_reference_parser() {
    let Ok(reference) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(BUNDLED_PRICES_JSON) else {
        panic!("bundled file is not JSON");
    };
    let t = PriceTable::bundled().unwrap_or_default();
    for (model, entry) in &reference {
        let got = price(&t, model);
        let want = |field: &str| entry.get(field).and_then(serde_json::Value::as_f64);
        let close = |picos: u64, usd: f64| ((picos as f64) - usd * 1e12).abs() <= 1.0 + usd * 1e12 * 1e-12;
        let input = want("input_cost_per_token").unwrap_or(f64::NAN);
        assert!(close(got.base.input, input), "{model} input {} vs {input}", got.base.input);
        let output = want("output_cost_per_token").unwrap_or(0.0);
        assert!(close(got.base.output, output), "{model} output");
        let cache_read = want("cache_read_input_token_cost").unwrap_or(input);
        assert!(close(got.base.cache_read, cache_read), "{model} cache read");
        assert_eq!(
            got.max_output_tokens,
            entry.get("max_output_tokens").and_then(serde_json::Value::as_u64),
            "{model}"
        );
    }
}

// ---- Agent shapes: 1-hour cache writes and hosted web-search calls (issue 19 §4) ----

/// LiteLLM's calculator on the bundled table, in floats as it computes: cache writes without a
/// lifetime count and 5-minute writes at `cache_creation_input_token_cost`, 1-hour writes at
/// `cache_creation_input_token_cost_above_1hr` (else the plain write rate), web-search calls at
/// `search_context_cost_per_query.search_context_size_medium` each.
fn litellm_cost_usd(entry: &serde_json::Value, t: &Tokens) -> f64 {
    let f = |field: &str| entry.get(field).and_then(serde_json::Value::as_f64);
    let input = f("input_cost_per_token").unwrap_or(0.0);
    let write = f("cache_creation_input_token_cost").unwrap_or(input);
    let write_1h = f("cache_creation_input_token_cost_above_1hr").unwrap_or(write);
    let search = entry
        .get("search_context_cost_per_query")
        .and_then(|s| s.get("search_context_size_medium"))
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0);
    t.input as f64 * input
        + t.output as f64 * f("output_cost_per_token").unwrap_or(0.0)
        + t.cache_read as f64 * f("cache_read_input_token_cost").unwrap_or(input)
        + (t.cache_write - t.cache_write_1h) as f64 * write
        + t.cache_write_1h as f64 * write_1h
        + t.web_searches as f64 * search
}

#[test]
fn one_hour_cache_writes_and_web_searches_agree_with_litellm_on_the_whole_bundled_table() {
    let Ok(reference) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(BUNDLED_PRICES_JSON) else {
        panic!("bundled file is not JSON");
    };
    let t = PriceTable::bundled().unwrap_or_default();
    let usage = Tokens { input: 1200, output: 800, cache_read: 3000, cache_write: 50_000, cache_write_1h: 30_000, web_searches: 3, ..Tokens::default() };
    let (mut hourly, mut searched) = (0, 0);
    for (model, entry) in &reference {
        if entry.get("cache_creation_input_token_cost_above_1hr").is_some() {
            hourly += 1;
        }
        if entry.get("search_context_cost_per_query").is_some() {
            searched += 1;
        }
        // A prompt under every long-context threshold (the base tier).
        let got = price(&t, model).cost_micros(&usage);
        let want = (litellm_cost_usd(entry, &usage) * 1e6).ceil() as i64;
        assert!((got - want).abs() <= 1, "{model}: {got} µ$ vs LiteLLM's {want} µ$");
    }
    assert!(hourly >= 40 && searched >= 200, "the table carries both prices: {hourly} models with a 1-hour rate, {searched} with a search price");
}

#[test]
fn a_one_hour_cache_write_costs_its_own_rate_by_hand() {
    let t = PriceTable::bundled().unwrap_or_default();
    let sonnet = price(&t, "claude-sonnet-4-5");
    assert_eq!((sonnet.base.cache_write, sonnet.base.cache_write_1h), (3_750_000, 6_000_000), "$3.75 and $6 per Mtok");
    // 10_000 tokens written, 4_000 of them for an hour: 6_000 × $3.75/M + 4_000 × $6/M
    // = $0.0225 + $0.024 = 46_500 µ$ (it was 37_500 µ$ with every write at the 5-minute rate).
    let write = Tokens { cache_write: 10_000, cache_write_1h: 4_000, ..Tokens::default() };
    assert_eq!(t.cost("claude-sonnet-4-5", &write).map(|c| c.micros), Ok(46_500));
    // The 1-hour share never exceeds the writes it is part of.
    let odd = Tokens { cache_write: 100, cache_write_1h: 1_000, ..Tokens::default() };
    assert_eq!(t.cost("claude-sonnet-4-5", &odd).map(|c| c.micros), Ok(600));
    // A model without a 1-hour rate bills 1-hour writes at its write rate (as LiteLLM does).
    let mini = price(&t, "gpt-4o-mini");
    assert_eq!(mini.base.cache_write_1h, mini.base.cache_write);
}

#[test]
fn web_search_calls_are_billed_per_call_where_the_table_prices_them() {
    let t = PriceTable::bundled().unwrap_or_default();
    // Anthropic: $10 per 1000 searches. 1000 input + 200 output on Sonnet 4.5 plus 2 searches:
    // $0.003 + $0.003 + 2 × $0.01 = 26_000 µ$.
    let searched = Tokens { input: 1000, output: 200, web_searches: 2, ..Tokens::default() };
    assert_eq!(t.cost("claude-sonnet-4-5", &searched).map(|c| c.micros), Ok(26_000));
    assert_eq!(price(&t, "gpt-5").web_search_per_call, 10_000_000_000, "$0.01 a call");
    assert_eq!(price(&t, "gemini-2.5-pro").web_search_per_call, 35_000_000_000, "$0.035 a grounded prompt");
    // A model the table does not price for search charges nothing for it.
    assert_eq!(price(&t, "gpt-4o").web_search_per_call, 0);
}

#[test]
fn the_long_context_tier_has_its_own_one_hour_rate_when_listed() {
    let t = table(
        r#"{"m": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05, "cache_creation_input_token_cost": 3.75e-06,
              "cache_creation_input_token_cost_above_1hr": 6e-06, "input_cost_per_token_above_200k_tokens": 6e-06,
              "cache_creation_input_token_cost_above_200k_tokens": 7.5e-06,
              "cache_creation_input_token_cost_above_1hr_above_200k_tokens": 1.2e-05},
            "n": {"input_cost_per_token": 3e-06, "cache_creation_input_token_cost_above_1hr": 6e-06,
              "input_cost_per_token_above_200k_tokens": 6e-06, "cache_creation_input_token_cost_above_200k_tokens": 7.5e-06},
            "o": {"input_cost_per_token": 3e-06, "input_cost_per_token_above_200k_tokens": 6e-06,
              "cache_creation_input_token_cost_above_200k_tokens": 7.5e-06}}"#,
    );
    let long_1h = |m: &str| price(&t, m).long_context.map(|l| (l.price.cache_write, l.price.cache_write_1h));
    assert_eq!(long_1h("m"), Some((7_500_000, 12_000_000)), "listed");
    assert_eq!(long_1h("n"), Some((7_500_000, 6_000_000)), "unlisted: the base 1-hour rate, as LiteLLM");
    assert_eq!(long_1h("o"), Some((7_500_000, 7_500_000)), "no 1-hour rate at all: the tier's write rate");
}

#[test]
fn configured_prices_take_a_one_hour_write_and_a_web_search_price() {
    let t = config(
        r#"{"bundled": false, "models": {"m": {"input_per_mtok": "3", "output_per_mtok": "15", "cache_write_per_mtok": "3.75",
              "cache_write_1h_per_mtok": "6", "web_search_per_1k_calls": "10"}, "plain": {"input_per_mtok": "1", "output_per_mtok": "2"}}}"#,
    );
    let t = match t {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    let m = price(&t, "m");
    assert_eq!((m.base.cache_write_1h, m.web_search_per_call), (6_000_000, 10_000_000_000));
    let plain = price(&t, "plain");
    assert_eq!((plain.base.cache_write_1h, plain.web_search_per_call), (1_000_000, 0), "defaults: the write price, unpriced");
    let err = config(r#"{"bundled": false, "models": {"m": {"input_per_mtok": "1", "output_per_mtok": "1", "web_search_per_1k_calls": "-2"}}}"#);
    assert!(err.is_err_and(|e| e.contains("not a non-negative decimal")));
}

// ---- The worst case: what a reservation prices (moved from estimate: pricing does money) ----

const CLAUDE_LIKE: TierPrice =
    TierPrice { input: 3_000_000, output: 15_000_000, cache_read: 300_000, cache_write: 3_750_000, cache_write_1h: 3_750_000 };

fn model(base: TierPrice) -> ModelPrice {
    ModelPrice { base, ..ModelPrice::default() }
}

#[test]
fn worst_case_prices_every_prompt_token_as_a_cache_write_by_hand() {
    // 1000 × $3.75/M + 500 × $15/M = $0.00375 + $0.0075 = 11_250 micro-dollars.
    assert_eq!(model(CLAUDE_LIKE).worst_case_cost(1000, 500), 11_250);
    // The context window caps the bound: 800 × $3.75/M + 500 × $15/M = 10_500.
    let windowed = ModelPrice { max_input_tokens: Some(800), ..model(CLAUDE_LIKE) };
    assert_eq!(windowed.worst_case_cost(1000, 500), 10_500);
    assert_eq!(model(CLAUDE_LIKE).worst_case_cost(0, 0), 0);
}

#[test]
fn worst_case_takes_the_long_context_tier_above_its_threshold() {
    let long = TierPrice { input: 6_000_000, output: 22_500_000, cache_read: 600_000, cache_write: 7_500_000, cache_write_1h: 7_500_000 };
    let price =
        ModelPrice { long_context: Some(LongContext { above_tokens: 200_000, price: long }), ..model(CLAUDE_LIKE) };
    // 200_000 × $3.75/M + 1000 × $15/M = $0.75 + $0.015.
    assert_eq!(price.worst_case_cost(200_000, 1000), 765_000);
    // 300_000 × $7.50/M + 1000 × $22.50/M = $2.25 + $0.0225.
    assert_eq!(price.worst_case_cost(300_000, 1000), 2_272_500);
}

fn tier() -> impl Strategy<Value = TierPrice> {
    (0u64..50_000_000, 0u64..80_000_000, 0u64..10_000_000, 0u64..20_000_000, 0u64..40_000_000).prop_map(
        |(input, output, cache_read, cache_write, cache_write_1h)| TierPrice { input, output, cache_read, cache_write, cache_write_1h },
    )
}

proptest! {
    /// A reservation covers whatever the request then costs, for any split of the prompt into
    /// input and cache tokens, any output up to the maximum, either side of the threshold.
    #[test]
    fn the_worst_case_covers_every_real_outcome(
        base in tier(),
        long in proptest::option::of(tier()),
        above in 1u64..400_000,
        window in proptest::option::of(1u64..500_000),
        bound in 0u64..600_000,
        max_out in 0u64..200_000,
        shares in (0u64..=100, 0u64..=100, 0u64..=100),
        hour_share in 0u64..=100,
        used in 0u64..=100,
    ) {
        let price = ModelPrice {
            base,
            long_context: long.map(|price| LongContext { above_tokens: above, price }),
            max_input_tokens: window,
            max_output_tokens: None,
            web_search_per_call: 0,
        };
        let prompt = bound.min(window.unwrap_or(u64::MAX)) * used / 100;
        let total = (shares.0 + shares.1 + shares.2).max(1);
        let cache_read = prompt * shares.1 / total;
        let cache_write = prompt * shares.2 / total;
        let actual = Tokens {
            input: prompt - cache_read - cache_write,
            output: max_out * used / 100,
            cache_read,
            cache_write,
            cache_write_1h: cache_write * hour_share / 100,
            ..Tokens::default()
        };
        prop_assert!(price.cost_micros(&actual) <= price.worst_case_cost(bound, max_out));
    }
}

/// The source of `pricing/bundled.rs`: the table [`PriceTable::from_litellm_json`] reads from the
/// bundled file, sorted by name, each price as its `Debug` form (which is a Rust struct literal).
fn render_compiled_table(table: &PriceTable) -> String {
    let mut models: Vec<(&String, &ModelPrice)> = table.entries.iter().collect();
    models.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = String::from(
        "//! The bundled price table, compiled: `core/prices/model_prices.json` exactly as\n\
         //! `PriceTable::from_litellm_json` reads it (bare names reachable through provider-prefixed keys\n\
         //! included), sorted by name, and its hash index. A VM start then parses no JSON.\n\
         //!\n\
         //! GENERATED: do not edit. `scripts/refresh-prices.sh` writes it (through the unit test\n\
         //! `pricing::tests::the_compiled_table_is_exactly_the_bundled_file` with `TOLLGATE_WRITE_PRICES=1`),\n\
         //! and that test fails whenever it differs from what the file says.\n\n\
         use super::{LongContext, ModelPrice, TierPrice};\n\n\
         /// Entries of the file that were skipped (no per-token input price, or unreadable).\n",
    );
    out.push_str(&format!("pub(super) const SKIPPED: usize = {};\n\n", table.skipped));
    out.push_str(&format!("pub(super) static MODELS: [(&str, ModelPrice); {}] = [\n", models.len()));
    for (name, price) in &models {
        out.push_str(&format!("    ({name:?}, {price:?}),\n"));
    }
    out.push_str("];\n\n");
    let names: Vec<&str> = models.iter().map(|(name, _)| name.as_str()).collect();
    assert!(names.len() * 2 <= BUNDLED_SLOTS, "{} names: raise BUNDLED_SLOTS (keep the index at most half full)", names.len());
    let slots: Vec<String> = bundled_slots(&names).iter().map(u16::to_string).collect();
    out.push_str("/// Hash index: slot `name_hash(name) % BUNDLED_SLOTS`, probed linearly, holds the name's index in\n");
    out.push_str("/// `MODELS` (`u16::MAX`: empty).\n");
    out.push_str(&format!("pub(super) static SLOTS: [u16; {}] = [\n", slots.len()));
    for row in slots.chunks(24) {
        out.push_str(&format!("    {},\n", row.join(", ")));
    }
    out.push_str("];\n");
    out
}

#[test]
fn the_compiled_table_is_exactly_the_bundled_file() {
    let parsed = PriceTable::from_litellm_json(BUNDLED_PRICES_JSON).unwrap_or_default();
    assert!(parsed.len() > 500, "the bundled file parses: {}", parsed.len());
    let source = render_compiled_table(&parsed);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/pricing/bundled.rs");
    if std::env::var_os("TOLLGATE_WRITE_PRICES").is_some() {
        std::fs::write(path, &source).unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }
    let compiled = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        compiled == source,
        "{path} is not what core/prices/model_prices.json says; regenerate it: \
         TOLLGATE_WRITE_PRICES=1 cargo test -p tollgate-core --lib pricing::tests::the_compiled_table_is_exactly_the_bundled_file"
    );
    // And the table the filter uses answers every name exactly as the parsed file does.
    let compiled = PriceTable::bundled().unwrap_or_default();
    assert_eq!((compiled.len(), compiled.skipped()), (parsed.len(), parsed.skipped()));
    for (name, price) in &parsed.entries {
        assert_eq!(compiled.lookup(name), Some(price), "{name}");
    }
}
