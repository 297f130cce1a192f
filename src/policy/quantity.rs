//! Kubernetes resource quantities (`500m`, `1`, `2Gi`, `512Mi`, `1e3`, `1.5`, `100Ki`), parsed
//! exactly, for comparing container requests and limits with a policy's maxima.
//!
//! The grammar is the API server's (`k8s.io/apimachinery/pkg/api/resource`):
//!
//! ```text
//! quantity  ::= sign? number suffix
//! number    ::= digits | digits "." digits? | "." digits
//! suffix    ::= "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E"     (powers of 1000)
//!             | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"                      (powers of 1024)
//!             | ("e" | "E") sign? digits                                     (power of ten)
//! ```
//!
//! Values are held as a whole number of nano-units in an `i128` (a fraction of a nano-unit
//! rounds up, as the API server does), so `0.1` equals `100m` and `1Gi` equals `1073741824`
//! without floating point. The `kube_quantity` crate was tried first and left out: it parses
//! through `f64` and accepts `Gi` or `+` as zero while rejecting `1E` (one exa).

use std::cmp::Ordering;
use std::fmt;

/// A parsed quantity; compares by value, shows as written.
#[derive(Debug, Clone)]
pub(crate) struct Quantity {
    nanos: i128,
    text: String,
}

/// Largest number of significant digits accepted (keeps the arithmetic in `i128`).
const MAX_DIGITS: usize = 30;

impl Quantity {
    /// The value in nano-units (`1` is 1,000,000,000).
    pub(crate) fn nanos(&self) -> i128 {
        self.nanos
    }

    /// Parses `text`; the error says what is wrong with it.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        Ok(Self {
            nanos: parse_nanos(text)?,
            text: text.to_owned(),
        })
    }
}

/// The value of the quantity `text` in nano-units, without allocating unless it is invalid
/// (the error says what is wrong with it).
pub(crate) fn parse_nanos(text: &str) -> Result<i128, String> {
    let bad = |why: &str| format!("`{text}` is not a Kubernetes quantity: {why}");
    if text.is_empty() {
        return Err(bad("it is empty"));
    }
    let (negative, rest) = match text.as_bytes()[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let num_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(num_len);
    // `.` is found byte by byte: a quantity is a few bytes, shorter than a char pattern's
    // searcher is worth.
    let (int_part, frac_part) = match number.bytes().position(|b| b == b'.') {
        Some(i) => (&number[..i], &number[i + 1..]),
        None => (number, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(bad("it has no digits before the unit"));
    }
    if frac_part.bytes().any(|b| b == b'.') {
        return Err(bad("it has more than one decimal point"));
    }
    // The digits of both parts as one whole number, leading zeros dropped.
    let mut mantissa: i128 = 0;
    let mut significant = 0usize;
    for b in int_part.bytes().chain(frac_part.bytes()) {
        if significant == 0 && b == b'0' {
            continue;
        }
        significant += 1;
        if significant > MAX_DIGITS {
            return Err(bad("it has too many digits"));
        }
        mantissa = mantissa * 10 + i128::from(b - b'0');
    }
    let frac_digits = i32::try_from(frac_part.len()).map_err(|_| bad("it is too long"))?;
    let (pow10, pow1024) = suffix_powers(suffix).ok_or_else(|| {
        bad("the unit must be one of n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei or an exponent such as e3")
    })?;
    // value = mantissa × 10^(pow10 − frac_digits) × 1024^pow1024; held in units of 10^-9.
    let exp10 = pow10 - frac_digits + 9;
    let too_large = || bad("it is too large");
    let mut nanos = mantissa;
    for _ in 0..pow1024 {
        nanos = nanos.checked_mul(1024).ok_or_else(too_large)?;
    }
    nanos = if exp10 >= 0 {
        let factor = u32::try_from(exp10)
            .ok()
            .and_then(|e| 10i128.checked_pow(e))
            .ok_or_else(too_large)?;
        nanos.checked_mul(factor).ok_or_else(too_large)?
    } else {
        // Smaller than a nano-unit: round up to the next whole nano-unit.
        match u32::try_from(-exp10)
            .ok()
            .and_then(|e| 10i128.checked_pow(e))
        {
            Some(divisor) => {
                let q = nanos / divisor;
                if nanos % divisor == 0 { q } else { q + 1 }
            }
            None => i128::from(nanos != 0),
        }
    };
    if negative {
        nanos = -nanos;
    }
    Ok(nanos)
}

/// The powers of ten and of 1024 a suffix stands for.
fn suffix_powers(suffix: &str) -> Option<(i32, u32)> {
    let p = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 1),
        "Mi" => (0, 2),
        "Gi" => (0, 3),
        "Ti" => (0, 4),
        "Pi" => (0, 5),
        "Ei" => (0, 6),
        _ => {
            let exp = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (exp.parse::<i32>().ok().filter(|e| e.abs() <= 60)?, 0)
        }
    };
    Some(p)
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl Quantity {
    /// Whether the value is below zero.
    pub(crate) fn is_negative(&self) -> bool {
        self.nanos < 0
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Quantity {
    /// A string (`2Gi`, `500m`) or a YAML number (`2`, `0.5`).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Float(f64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Int(n) => n.to_string(),
            Raw::Float(x) => x.to_string(),
            Raw::Text(t) => t,
        };
        Quantity::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const NANO: i128 = 1;
    const ONE: i128 = 1_000_000_000;

    #[rstest]
    #[case("0", 0)]
    #[case("1", ONE)]
    #[case("500m", 500_000_000)]
    #[case("0.5", 500_000_000)]
    #[case(".5", 500_000_000)]
    #[case("1.", ONE)]
    #[case("+2", 2 * ONE)]
    #[case("-1", -ONE)]
    #[case("100n", 100 * NANO)]
    #[case("250u", 250_000)]
    #[case("1k", 1000 * ONE)]
    #[case("1M", 1_000_000 * ONE)]
    #[case("1G", 1_000_000_000 * ONE)]
    #[case("1E", 1_000_000_000_000_000_000 * ONE)]
    #[case("1Ki", 1024 * ONE)]
    #[case("512Mi", 512 * 1024 * 1024 * ONE)]
    #[case("2Gi", 2 * 1024 * 1024 * 1024 * ONE)]
    #[case("1.5Gi", 1536 * 1024 * 1024 * ONE)]
    #[case("1Ei", 1_152_921_504_606_846_976 * ONE)]
    #[case("1e3", 1000 * ONE)]
    #[case("1E3", 1000 * ONE)]
    #[case("1e+3", 1000 * ONE)]
    #[case("5e-1", 500_000_000)]
    #[case("1.5e2", 150 * ONE)]
    #[case("0.0000000001", 1)]
    #[case("1e-12", 1)]
    #[case("1e-60", 1)]
    #[case("0e-60", 0)]
    #[case("007", 7 * ONE)]
    fn parses_exactly(#[case] text: &str, #[case] nanos: i128) {
        let q = Quantity::parse(text).unwrap();
        assert_eq!(q.nanos, nanos, "{text}");
        assert_eq!(q.to_string(), text);
    }

    #[rstest]
    #[case("", "it is empty")]
    #[case("Gi", "no digits")]
    #[case("+", "no digits")]
    #[case(".", "no digits")]
    #[case("1.2.3", "more than one decimal point")]
    #[case("1gi", "the unit must be")]
    #[case("1 Gi", "the unit must be")]
    #[case("1e", "the unit must be")]
    #[case("1e3.5", "the unit must be")]
    #[case("1KiB", "the unit must be")]
    #[case("inf", "no digits")]
    #[case("1e61", "the unit must be")]
    #[case("1e40", "too large")]
    #[case("123456789012345678901234567890123", "too many digits")]
    fn rejects_what_the_api_server_rejects(#[case] text: &str, #[case] why: &str) {
        let err = Quantity::parse(text).unwrap_err();
        assert!(err.contains(why), "{text}: {err}");
        assert!(err.contains(&format!("`{text}`")), "{err}");
    }

    #[rstest]
    #[case("0.1", "100m")]
    #[case("1Gi", "1073741824")]
    #[case("1k", "1e3")]
    #[case("1024Mi", "1Gi")]
    #[case("1000m", "1")]
    fn equal_values_in_different_notations(#[case] a: &str, #[case] b: &str) {
        assert_eq!(Quantity::parse(a).unwrap(), Quantity::parse(b).unwrap());
    }

    #[rstest]
    #[case("999m", "1")]
    #[case("1Gi", "1.1G")]
    #[case("1G", "1Gi")]
    #[case("511Mi", "512Mi")]
    #[case("-1", "0")]
    fn ordering(#[case] small: &str, #[case] big: &str) {
        assert!(Quantity::parse(small).unwrap() < Quantity::parse(big).unwrap());
    }

    #[test]
    fn deserializes_from_yaml_numbers_and_strings() {
        let v: Vec<Quantity> = serde_yaml::from_str("[2, 0.5, 4Gi, '250m']").unwrap();
        let texts: Vec<_> = v.iter().map(ToString::to_string).collect();
        assert_eq!(texts, vec!["2", "0.5", "4Gi", "250m"]);
        let err = serde_yaml::from_str::<Quantity>("4 GB")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a Kubernetes quantity"), "{err}");
    }
}
