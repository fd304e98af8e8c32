//! Durations written as strings with a unit: "0", "250ms", "5s", "2m", "1h".

use std::time::Duration;

/// Longest duration any field accepts: anything longer is a mistake, not a policy.
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// Parses a duration; the error says what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.chars().any(char::is_whitespace) {
        return Err(format!(
            "bad duration {text:?}: expected an integer and a unit with no space (ns, us, ms, s, m, h), like \"250ms\" or \"5s\", or \"0\""
        ));
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.starts_with('-') {
        return Err(format!(
            "negative duration {text:?}: expected a duration like \"250ms\", \"5s\", \"2m\""
        ));
    }
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() || unit.is_empty() {
        return Err(format!(
            "bad duration {text:?}: expected an integer and a unit (ns, us, ms, s, m, h), like \"250ms\" or \"5s\", or \"0\""
        ));
    }
    let value: u64 = digits.parse().map_err(|_| {
        format!(
            "duration {text:?} is too large (at most {})",
            format_duration(DURATION_MAX)
        )
    })?;
    let unit_ns: u64 = match unit {
        "ns" => 1,
        "us" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3600 * 1_000_000_000,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in duration {text:?}: expected ns, us, ms, s, m or h"
            ))
        }
    };
    let duration = value
        .checked_mul(unit_ns)
        .map(Duration::from_nanos)
        .filter(|duration| *duration <= DURATION_MAX)
        .ok_or_else(|| {
            format!(
                "duration {text:?} is too large (at most {})",
                format_duration(DURATION_MAX)
            )
        })?;
    Ok(duration)
}

/// Renders a duration in the largest unit that represents it exactly.
pub fn format_duration(duration: Duration) -> String {
    let ns = duration.as_nanos();
    if ns == 0 {
        return "0".to_string();
    }
    for (unit, unit_ns) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if ns % unit_ns == 0 {
            return format!("{}{unit}", ns / unit_ns);
        }
    }
    format!("{ns}ns")
}
