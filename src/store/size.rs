//! Byte sizes as users type them (`500M`, `2G`, `1.5GiB`) for `--max-size`. Parsing only.

/// Parses a byte size: a number (decimals allowed) and an optional unit `K`, `M`, `G` or `T`,
/// each a power of 1024, optionally followed by `B` or `iB`; case and surrounding spaces are
/// ignored. A bare number (or a `B` suffix) is bytes. Fractions round down to whole bytes.
///
/// ```
/// use quant::store::parse_size;
/// assert_eq!(parse_size("500M"), Ok(500 * 1024 * 1024));
/// assert_eq!(parse_size("2G"), Ok(2 << 30));
/// assert_eq!(parse_size("1.5k"), Ok(1536));
/// ```
pub fn parse_size(text: &str) -> Result<u64, ParseSizeError> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    if number.is_empty() {
        return Err(ParseSizeError::Number(trimmed.to_string()));
    }
    let unit = unit.trim().to_ascii_lowercase();
    let multiplier: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(ParseSizeError::Unit(unit)),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(ParseSizeError::Number(number.to_string()));
    }
    let whole_value: u64 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .map_err(|_| ParseSizeError::TooLarge(trimmed.to_string()))?
    };
    let mut bytes = whole_value
        .checked_mul(multiplier)
        .ok_or_else(|| ParseSizeError::TooLarge(trimmed.to_string()))?;
    // Exact integer arithmetic for the fraction: "1.1G" must not depend on float rounding.
    // Twenty digits are far below one byte even in terabytes, so longer tails are ignored.
    let mut numerator: u128 = 0;
    let mut denominator: u128 = 1;
    for digit in fraction.bytes().take(20) {
        numerator = numerator * 10 + u128::from(digit - b'0');
        denominator *= 10;
    }
    let fraction_bytes = (numerator * u128::from(multiplier) / denominator) as u64;
    bytes = bytes
        .checked_add(fraction_bytes)
        .ok_or_else(|| ParseSizeError::TooLarge(trimmed.to_string()))?;
    Ok(bytes)
}

/// Why a size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseSizeError {
    /// The numeric part is missing or malformed.
    #[error("`{0}` is not a size; write a number with an optional unit, like 500M or 2G")]
    Number(String),
    /// An unknown unit.
    #[error("unknown size unit `{0}`; use K, M, G or T (powers of 1024)")]
    Unit(String),
    /// More than 2^64 - 1 bytes.
    #[error("size `{0}` is too large")]
    TooLarge(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_powers_of_1024() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("123B"), Ok(123));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("500mb"), Ok(500 << 20));
        assert_eq!(parse_size(" 2 GiB "), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
    }

    #[test]
    fn fractions_are_exact_and_round_down() {
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert_eq!(parse_size(".5M"), Ok(512 << 10));
        assert_eq!(parse_size("1.1G"), Ok(1_181_116_006)); // 1.1 * 2^30 = 1181116006.4
        assert_eq!(parse_size("0.0001K"), Ok(0));
        assert_eq!(parse_size("1.5"), Ok(1));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(parse_size(""), Err(ParseSizeError::Number(_))));
        assert!(matches!(parse_size("M"), Err(ParseSizeError::Number(_))));
        assert!(matches!(parse_size("."), Err(ParseSizeError::Number(_))));
        assert!(matches!(
            parse_size("1.2.3M"),
            Err(ParseSizeError::Number(_))
        ));
        assert!(matches!(parse_size("5X"), Err(ParseSizeError::Unit(_))));
        assert!(matches!(parse_size("-5M"), Err(ParseSizeError::Number(_))));
        assert!(matches!(
            parse_size("16777216T"),
            Err(ParseSizeError::TooLarge(_))
        ));
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(ParseSizeError::TooLarge(_))
        ));
    }
}
