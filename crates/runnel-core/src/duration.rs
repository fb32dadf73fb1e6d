//! The duration strings of the contract (§4.5): `1h42m`, `2w`, `90s`, shared by `ttl`,
//! `delay` and waitpoint timeouts, and the stricter single-unit idempotency key TTL.

/// The longest duration string accepted.
pub const MAX_DURATION_STRING_LEN: usize = 100;

/// Parses `^(\d+(w|d|hr|h|m|s))+$` into whole seconds. `None` when the string does not
/// match or the total overflows.
pub fn parse_duration_secs(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > MAX_DURATION_STRING_LEN {
        return None;
    }
    let bytes = s.as_bytes();
    let mut total: u64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return None;
        }
        let amount: u64 = s[start..i].parse().ok()?;
        let rest = &s[i..];
        let (unit_secs, unit_len) = if rest.starts_with("hr") {
            (3600, 2)
        } else {
            match rest.as_bytes().first()? {
                b'w' => (7 * 86400, 1),
                b'd' => (86400, 1),
                b'h' => (3600, 1),
                b'm' => (60, 1),
                b's' => (1, 1),
                _ => return None,
            }
        };
        i += unit_len;
        total = total.checked_add(amount.checked_mul(unit_secs)?)?;
    }
    Some(total)
}

/// Parses the idempotency key TTL form `^\d+[smhd]$` into seconds.
pub fn parse_idempotency_ttl_secs(s: &str) -> Option<u64> {
    let unit = s.chars().last()?;
    let digits = &s[..s.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    let unit_secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return None,
    };
    amount.checked_mul(unit_secs)
}

/// Writes seconds in the compact form the API echoes: 3600 → `1h`, 5400 → `1h30m`,
/// 90061 → `1d1h1m1s`. Zero is `0s`.
pub fn format_duration_secs(secs: u64) -> String {
    if secs == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    let mut rest = secs;
    for (unit, size) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        let amount = rest / size;
        rest %= size;
        if amount > 0 {
            out.push_str(&amount.to_string());
            out.push_str(unit);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_contract_examples() {
        let cases = [
            ("1h42m", Some(6120)),
            ("10m", Some(600)),
            ("2w", Some(1_209_600)),
            ("90s", Some(90)),
            ("1hr", Some(3600)),
            ("1d2h", Some(93_600)),
            ("0s", Some(0)),
            ("", None),
            ("1", None),
            ("h", None),
            ("1x", None),
            ("1h ", None),
            ("-1h", None),
            ("1.5h", None),
            ("99999999999999999999s", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration_secs(input), want, "{input:?}");
        }
        assert_eq!(
            parse_duration_secs(&"1s".repeat(51)),
            None,
            "over 100 chars"
        );
    }

    #[test]
    fn idempotency_ttl_is_single_unit() {
        assert_eq!(parse_idempotency_ttl_secs("30d"), Some(2_592_000));
        assert_eq!(parse_idempotency_ttl_secs("5s"), Some(5));
        assert_eq!(parse_idempotency_ttl_secs("1h30m"), None);
        assert_eq!(parse_idempotency_ttl_secs("1w"), None);
        assert_eq!(parse_idempotency_ttl_secs("d"), None);
        assert_eq!(parse_idempotency_ttl_secs("1é"), None);
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format_duration_secs(3600), "1h");
        assert_eq!(format_duration_secs(5400), "1h30m");
        assert_eq!(format_duration_secs(90_061), "1d1h1m1s");
        assert_eq!(format_duration_secs(0), "0s");
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(secs in 0u64..10_000_000_000) {
            prop_assert_eq!(parse_duration_secs(&format_duration_secs(secs)), Some(secs));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,120}") {
            let _ = parse_duration_secs(&s);
            let _ = parse_idempotency_ttl_secs(&s);
        }
    }
}
