//! Integer money. Floats never touch a balance.
//!
//! - Money amounts are **micro-dollars** (`Micros`, 1 USD = 1_000_000): small enough to price a
//!   single cheap request, large enough (`i64`) for any organisation's yearly spend.
//! - Prices are **pico-dollars per token** (`PicosPerToken`, 1 USD = 10^12): LiteLLM lists prices
//!   such as `1.5e-07` USD per token, which is 150_000 pico-dollars, an exact integer.
//!
//! A request's cost is summed in pico-dollars and converted to micro-dollars once, rounding up
//! (`picos_to_micros_ceil`), so a request never costs less than its tokens' price.

/// An amount of money in micro-dollars (1 USD = 1_000_000).
pub type Micros = i64;

/// A per-token price in pico-dollars (1 USD = 10^12).
pub type PicosPerToken = u64;

/// Pico-dollars in one micro-dollar.
pub const PICOS_PER_MICRO: u128 = 1_000_000;

/// Converts pico-dollars to micro-dollars, rounding up; saturates at `i64::MAX`.
pub fn picos_to_micros_ceil(picos: u128) -> Micros {
    // Every realistic cost fits 64 bits ($18 million in picos); dividing those as `u64` spares
    // the filter's wasm a 128-bit division routine.
    let micros = match u64::try_from(picos) {
        Ok(small) => u128::from(small.div_ceil(PICOS_PER_MICRO as u64)),
        Err(_) => picos.div_ceil(PICOS_PER_MICRO),
    };
    i64::try_from(micros).unwrap_or(i64::MAX)
}

/// Parses a decimal dollar amount written in JSON (`"12.5"`, `3e-06`, `0.0000025`) into an exact
/// integer count of `10^-scale` dollars, without going through a float.
///
/// Returns `None` for negative numbers, non-numbers, or values with more precision than `scale`
/// digits can hold exactly (those are rounded up, never down, so `Some` is always returned for
/// valid non-negative input; `None` means the text is not a number).
pub fn parse_decimal_scaled(text: &str, scale: u32) -> Option<u128> {
    let text = text.trim();
    if text.is_empty() || text.starts_with('-') || text.starts_with('+') {
        return None;
    }
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], text[i + 1..].parse::<i32>().ok()?),
        None => (text, 0),
    };
    let (int_part, frac_part) = match mantissa.find('.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_part.bytes().all(|b| b.is_ascii_digit()) || !frac_part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // value = digits * 10^(exponent - frac_len); we want value * 10^scale.
    let digits: String = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    let shift = exponent - frac_part.len() as i32 + scale as i32;
    if digits.is_empty() {
        return Some(0);
    }
    if shift >= 0 {
        let base: u128 = digits.parse().ok()?;
        base.checked_mul(10u128.checked_pow(shift as u32)?)
    } else {
        let drop = (-shift) as usize;
        if drop >= digits.len() {
            // Smaller than one unit: round up to one so a priced thing is never free.
            return Some(1);
        }
        let (keep, dropped) = digits.split_at(digits.len() - drop);
        let mut value: u128 = if keep.is_empty() { 0 } else { keep.parse().ok()? };
        if dropped.bytes().any(|b| b != b'0') {
            value += 1;
        }
        Some(value)
    }
}

/// Formats micro-dollars as a dollar string with six decimals (`1234567` → `"1.234567"`).
pub fn format_micros(micros: Micros) -> String {
    let mut text = Vec::with_capacity(21);
    push_micros(&mut text, micros);
    String::from_utf8(text).unwrap_or_default()
}

/// Appends [`format_micros`]'s text to `out`, its digits written by `itoa`, not `core::fmt` (whose
/// machinery costs the filter thousands of wasm instructions for the access log's `cost_usd`).
pub fn push_micros(out: &mut Vec<u8>, micros: Micros) {
    if micros < 0 {
        out.push(b'-');
    }
    let abs = micros.unsigned_abs();
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(abs / 1_000_000).as_bytes());
    out.push(b'.');
    // Six decimals with their leading zeros: the digits of 1_000_000 + fraction after its `1`.
    let fraction = digits.format(1_000_000 + abs % 1_000_000).as_bytes();
    out.extend_from_slice(fraction.get(1..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_are_formatted_as_dollars_with_six_decimals() {
        let edges = [0, 1, -1, 999_999, 1_000_000, -1_000_000, 1_234_567, -1_234_567, 120_000_000, i64::MAX, i64::MIN, i64::MIN + 1];
        let spread = (0..2_000i64).map(|i| i.wrapping_mul(0x5851_F42D_4C95_7F2D) >> (i % 64));
        for micros in edges.into_iter().chain(spread) {
            let sign = if micros < 0 { "-" } else { "" };
            let abs = micros.unsigned_abs();
            assert_eq!(format_micros(micros), format!("{sign}{}.{:06}", abs / 1_000_000, abs % 1_000_000), "{micros}");
        }
    }

    #[test]
    fn picos_round_up_to_micros_the_same_below_and_above_64_bits() {
        let edges = [0u128, 1, 999_999, 1_000_000, 1_000_001, u128::from(u64::MAX) - 1, u128::from(u64::MAX), u128::from(u64::MAX) + 1, u128::MAX];
        let spread = (0..2_000u128).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835) >> (i % 128));
        for picos in edges.into_iter().chain(spread) {
            assert_eq!(picos_to_micros_ceil(picos), i64::try_from(picos.div_ceil(PICOS_PER_MICRO)).unwrap_or(i64::MAX), "{picos}");
        }
    }

    #[test]
    fn litellm_prices_become_exact_picos() {
        let check = |text: &str, picos: u128| assert_eq!(parse_decimal_scaled(text, 12), Some(picos), "{text}");
        check("3e-06", 3_000_000);
        check("1.5e-07", 150_000);
        check("0.0000025", 2_500_000);
        check("1.25E-6", 1_250_000);
        check("0", 0);
        check("15", 15_000_000_000_000);
    }

    #[test]
    fn dollars_become_exact_micros() {
        assert_eq!(parse_decimal_scaled("800", 6), Some(800_000_000));
        assert_eq!(parse_decimal_scaled("12.345678", 6), Some(12_345_678));
        assert_eq!(parse_decimal_scaled("0.0000001", 6), Some(1), "sub-unit rounds up");
    }

    #[test]
    fn rejects_what_is_not_a_price() {
        for bad in ["", "-1", "abc", "1.2.3", "e5", "."] {
            assert_eq!(parse_decimal_scaled(bad, 12), None, "{bad}");
        }
    }

    #[test]
    fn cost_rounds_up_to_the_micro() {
        assert_eq!(picos_to_micros_ceil(0), 0);
        assert_eq!(picos_to_micros_ceil(1), 1);
        assert_eq!(picos_to_micros_ceil(1_000_000), 1);
        assert_eq!(picos_to_micros_ceil(1_000_001), 2);
        assert_eq!(format_micros(1_234_567), "1.234567");
        assert_eq!(format_micros(-5), "-0.000005");
    }
}
