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
    if let Some(message) = fraction(text) {
        return Err(message);
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
    let Some(unit_ns) = unit_ns(unit) else {
        return Err(format!(
            "unknown unit {unit:?} in duration {text:?}: expected ns, us, ms, s, m or h"
        ));
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

fn unit_ns(unit: &str) -> Option<u64> {
    Some(match unit {
        "ns" => 1,
        "us" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3600 * 1_000_000_000,
        _ => return None,
    })
}

/// The message for a duration with a fraction (`"1.5s"`), with what to write instead when
/// it is exact in a smaller unit; `None` when `text` has no fraction.
fn fraction(text: &str) -> Option<String> {
    let (whole, rest) = text.split_once('.')?;
    let digits_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let (decimals, unit) = rest.split_at(digits_end);
    let exact = (|| {
        if whole.is_empty() && decimals.is_empty() {
            return None;
        }
        let scale = 10u128.checked_pow(u32::try_from(decimals.len()).ok()?)?;
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let decimals: u128 = if decimals.is_empty() {
            0
        } else {
            decimals.parse().ok()?
        };
        let ns = (whole.checked_mul(scale)? + decimals).checked_mul(u128::from(unit_ns(unit)?))?;
        (ns % scale == 0).then(|| ns / scale)
    })();
    let instead = match exact.and_then(|ns| u64::try_from(ns).ok()) {
        Some(ns) => format!("write {:?}", format_duration(Duration::from_nanos(ns))),
        None => "write an integer in a smaller unit".to_string(),
    };
    Some(format!(
        "bad duration {text:?}: fractions are not accepted: {instead} (an integer and a unit: ns, us, ms, s, m or h)"
    ))
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
