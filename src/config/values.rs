//! Scalar flag values parsed the way Go's `flag` package parses them.
//!
//! etcd's numeric flags are Go `uint`/`uint64`/`int64` flags, read with
//! `strconv.ParseUint(s, 0, 64)` / `ParseInt(s, 0, 64)`: base prefixes `0x`,
//! `0o`, `0b` and a leading `0` for octal are honoured, and `_` may separate
//! digits. Booleans accept exactly Go's `strconv.ParseBool` spellings. Keeping
//! those rules means a value etcd accepts is accepted here with the same
//! meaning, and a value etcd rejects is rejected.

use std::fmt;

/// Why a number did not parse; displays as Go's `flag` package words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumError {
    /// Not a number at all.
    Syntax,
    /// A number, but too big (or too small) for the flag.
    Range,
}

impl fmt::Display for NumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NumError::Syntax => f.write_str("parse error"),
            NumError::Range => f.write_str("value out of range"),
        }
    }
}

/// Go's `strconv.ParseUint(text, 0, bits)`.
pub fn parse_uint(text: &str, bits: u32) -> Result<u64, NumError> {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return Err(NumError::Syntax);
    }
    let (base, digits): (u64, &[u8]) = if bytes[0] == b'0' {
        match bytes.get(1).map(u8::to_ascii_lowercase) {
            Some(b'b') if bytes.len() >= 3 => (2, &bytes[2..]),
            Some(b'o') if bytes.len() >= 3 => (8, &bytes[2..]),
            Some(b'x') if bytes.len() >= 3 => (16, &bytes[2..]),
            _ => (8, &bytes[1..]),
        }
    } else {
        (10, bytes)
    };
    let max = if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let mut value: u64 = 0;
    let mut underscores = false;
    for &c in digits {
        let digit = match c {
            b'_' => {
                underscores = true;
                continue;
            }
            b'0'..=b'9' => u64::from(c - b'0'),
            b'a'..=b'z' => u64::from(c - b'a') + 10,
            b'A'..=b'Z' => u64::from(c - b'A') + 10,
            _ => return Err(NumError::Syntax),
        };
        if digit >= base {
            return Err(NumError::Syntax);
        }
        value = value
            .checked_mul(base)
            .and_then(|v| v.checked_add(digit))
            .filter(|v| *v <= max)
            .ok_or(NumError::Range)?;
    }
    if underscores && !underscores_ok(text) {
        return Err(NumError::Syntax);
    }
    Ok(value)
}

/// Go's `strconv.ParseInt(text, 0, bits)`.
pub fn parse_int(text: &str, bits: u32) -> Result<i64, NumError> {
    let (negative, magnitude) = match text.as_bytes().first() {
        None => return Err(NumError::Syntax),
        Some(b'+') => (false, &text[1..]),
        Some(b'-') => (true, &text[1..]),
        Some(_) => (false, text),
    };
    let bits = bits.clamp(1, 64);
    let unsigned = parse_uint(magnitude, bits)?;
    let cutoff = 1u64 << (bits - 1);
    if negative {
        if unsigned > cutoff {
            return Err(NumError::Range);
        }
        // Two's complement: -cutoff is representable, and 0u64.wrapping_sub
        // gives exactly the bit pattern of the negated value.
        Ok(0u64.wrapping_sub(unsigned) as i64)
    } else if unsigned >= cutoff {
        Err(NumError::Range)
    } else {
        Ok(unsigned as i64)
    }
}

/// Go's `strconv.ParseBool`: `1 t T TRUE true True` and `0 f F FALSE false False`.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `time.ParseDuration` for the non-negative durations flags take:
/// `300ms`, `1.5h`, `2h45m`, `0`; units `ns us µs ms s m h`. Errors read as
/// Go's `flag` package words them (`parse error`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    const PARSE: &str = "parse error";
    let s = text.strip_prefix('+').unwrap_or(text);
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(PARSE.to_owned());
    }
    let mut nanos: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(PARSE.to_owned());
        }
        let value: f64 = num.parse().map_err(|_| PARSE.to_owned())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(PARSE.to_owned()),
        };
        nanos += value * scale;
        rest = tail;
    }
    if !nanos.is_finite() || nanos > i64::MAX as f64 {
        return Err(PARSE.to_owned());
    }
    Ok(std::time::Duration::from_nanos(nanos.round() as u64))
}

/// Go's rule for `_` in a number literal: only between digits, or right after
/// a base prefix.
fn underscores_ok(text: &str) -> bool {
    #[derive(PartialEq)]
    enum Saw {
        Start,
        Digit,
        Underscore,
        Other,
    }
    let mut s = text.as_bytes();
    if let Some(b'+' | b'-') = s.first() {
        s = &s[1..];
    }
    let mut saw = Saw::Start;
    let mut hex = false;
    let mut i = 0;
    if s.len() >= 2 && s[0] == b'0' && matches!(s[1].to_ascii_lowercase(), b'b' | b'o' | b'x') {
        i = 2;
        saw = Saw::Digit;
        hex = s[1].eq_ignore_ascii_case(&b'x');
    }
    for &c in &s[i..] {
        if c.is_ascii_digit() || (hex && c.is_ascii_hexdigit()) {
            saw = Saw::Digit;
        } else if c == b'_' {
            if saw != Saw::Digit {
                return false;
            }
            saw = Saw::Underscore;
        } else {
            if saw == Saw::Underscore {
                return false;
            }
            saw = Saw::Other;
        }
    }
    saw != Saw::Underscore
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn uint_accepts_go_base_prefixes_and_separators() {
        assert_eq!(parse_uint("100", 64), Ok(100));
        assert_eq!(parse_uint("0", 64), Ok(0));
        assert_eq!(parse_uint("0x10", 64), Ok(16));
        assert_eq!(parse_uint("0X1f", 64), Ok(31));
        assert_eq!(parse_uint("010", 64), Ok(8));
        assert_eq!(parse_uint("0o10", 64), Ok(8));
        assert_eq!(parse_uint("0b101", 64), Ok(5));
        assert_eq!(parse_uint("1_000", 64), Ok(1000));
        assert_eq!(parse_uint("0x_ff", 64), Ok(255));
        assert_eq!(parse_uint("18446744073709551615", 64), Ok(u64::MAX));
    }

    #[test]
    fn uint_rejects_what_go_rejects() {
        for bad in [
            "", "abc", "-1", "+1", "1.5", "08", "0x", "1__0", "_1", "1_", " 1", "1e3",
        ] {
            assert_eq!(parse_uint(bad, 64), Err(NumError::Syntax), "{bad:?}");
        }
        assert_eq!(parse_uint("18446744073709551616", 64), Err(NumError::Range));
        assert_eq!(parse_uint("256", 8), Err(NumError::Range));
    }

    #[test]
    fn int_handles_sign_and_limits() {
        assert_eq!(parse_int("-1", 64), Ok(-1));
        assert_eq!(parse_int("+7", 64), Ok(7));
        assert_eq!(parse_int("-0x10", 64), Ok(-16));
        assert_eq!(parse_int("9223372036854775807", 64), Ok(i64::MAX));
        assert_eq!(parse_int("-9223372036854775808", 64), Ok(i64::MIN));
        assert_eq!(parse_int("9223372036854775808", 64), Err(NumError::Range));
        assert_eq!(parse_int("-9223372036854775809", 64), Err(NumError::Range));
        assert_eq!(parse_int("-", 64), Err(NumError::Syntax));
        assert_eq!(parse_int("", 64), Err(NumError::Syntax));
    }

    #[test]
    fn bool_accepts_exactly_go_spellings() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(t), Some(true));
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(f), Some(false));
        }
        for bad in ["yes", "no", "tRUE", "", "2"] {
            assert_eq!(parse_bool(bad), None);
        }
    }

    #[test]
    fn errors_display_like_go_flag_package() {
        assert_eq!(NumError::Syntax.to_string(), "parse error");
        assert_eq!(NumError::Range.to_string(), "value out of range");
    }

    #[test]
    fn durations_parse_as_go_parses_them() {
        use std::time::Duration;
        let ok = [
            ("0", Duration::ZERO),
            ("10m", Duration::from_secs(600)),
            ("1h30m", Duration::from_secs(5400)),
            ("1.5h", Duration::from_secs(5400)),
            ("300ms", Duration::from_millis(300)),
            ("2s500ms", Duration::from_millis(2500)),
            ("10us", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("+5s", Duration::from_secs(5)),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in ["", "5", "s", "1x", "-1s", "1..5s", "h1", "1h 2m"] {
            assert_eq!(parse_duration(bad), Err("parse error".into()), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn durations_never_panic(s in ".{0,24}") {
            let _ = parse_duration(&s);
        }

        #[test]
        fn uint_round_trips_decimal(n in any::<u64>()) {
            prop_assert_eq!(parse_uint(&n.to_string(), 64), Ok(n));
        }

        #[test]
        fn int_round_trips_decimal(n in any::<i64>()) {
            prop_assert_eq!(parse_int(&n.to_string(), 64), Ok(n));
        }

        #[test]
        fn uint_never_panics(s in ".{0,24}") {
            let _ = parse_uint(&s, 64);
            let _ = parse_int(&s, 64);
        }
    }
}
