//! The `[cgroup]` table: where local services' cgroups live (`docs/config.md`).

use std::path::PathBuf;

/// `[cgroup] root`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum CgroupRoot {
    /// The orchestrator's own cgroup when it is delegated to it (systemd's `Delegate=yes`),
    /// otherwise no cgroups (logged once at start).
    #[default]
    Auto,
    /// No cgroups: services run in the orchestrator's cgroup, and stop and kill signal the
    /// main process only.
    Off,
    /// Services' cgroups under this directory of a cgroup v2 mount, which must exist.
    Path(PathBuf),
}

/// The `[cgroup]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CgroupConfig {
    pub root: CgroupRoot,
}

pub use crate::cgroup::{CgroupLimit, CgroupLimits, CGROUP_LIMIT_KEYS};

/// A byte size: a number, or a number with `K`, `M`, `G` or `T` (powers of 1024), or `max`.
pub fn parse_bytes(text: &str) -> Result<String, String> {
    let expected = "a size like \"32M\", \"512K\", \"2G\", a number of bytes, or \"max\"";
    if text == "max" || text == "infinity" {
        return Ok("max".to_string());
    }
    let (digits, shift) = match text.as_bytes().last() {
        Some(b'K' | b'k') => (&text[..text.len() - 1], 10),
        Some(b'M' | b'm') => (&text[..text.len() - 1], 20),
        Some(b'G' | b'g') => (&text[..text.len() - 1], 30),
        Some(b'T' | b't') => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("bad size {text:?}: expected {expected}"))?;
    n.checked_mul(1u64 << shift)
        .filter(|&bytes| bytes <= i64::MAX as u64)
        .map(|bytes| bytes.to_string())
        .ok_or_else(|| format!("size {text:?} is too large: expected {expected}"))
}

/// `cpu_max`: `"max"`, a percentage of one CPU (`"50%"`, `"250%"`: quota in a 100 ms period),
/// or `"QUOTA PERIOD"` in microseconds as `cpu.max` has it.
pub fn parse_cpu_max(text: &str) -> Result<String, String> {
    let expected = "\"max\", a share of one CPU like \"50%\" or \"150%\", or \"QUOTA PERIOD\" in microseconds like \"20000 100000\"";
    const PERIOD: u64 = 100_000;
    if text == "max" {
        return Ok("max".to_string());
    }
    if let Some(percent) = text.strip_suffix('%') {
        let percent: u64 = percent
            .trim()
            .parse()
            .ok()
            .filter(|&p| (1..=100_000).contains(&p))
            .ok_or_else(|| format!("bad cpu_max {text:?}: expected {expected} (1% or more)"))?;
        return Ok(format!("{} {PERIOD}", percent * PERIOD / 100));
    }
    let mut parts = text.split_whitespace();
    let quota = parts.next().and_then(|q| {
        if q == "max" {
            Some(None)
        } else {
            q.parse::<u64>().ok().map(Some)
        }
    });
    let period = parts.next().map(|p| p.parse::<u64>().ok());
    match (quota, period, parts.next()) {
        // The kernel's bounds: quota at least 1 ms, period 1 ms..=1 s.
        (Some(quota), Some(Some(period)), None)
            if (1000..=1_000_000).contains(&period) && quota.is_none_or(|q| q >= 1000) =>
        {
            Ok(match quota {
                Some(q) => format!("{q} {period}"),
                None => format!("max {period}"),
            })
        }
        _ => Err(format!(
            "bad cpu_max {text:?}: expected {expected} (quota >= 1000, period 1000..=1000000)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_cpu_shares_become_the_cgroup_files_text() {
        assert_eq!(parse_bytes("32M").unwrap(), "33554432");
        assert_eq!(parse_bytes("512k").unwrap(), "524288");
        assert_eq!(parse_bytes("4096").unwrap(), "4096");
        assert_eq!(parse_bytes("max").unwrap(), "max");
        for bad in ["", "M", "-1M", "1.5G", "32MB", "99999999999T"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_cpu_max("50%").unwrap(), "50000 100000");
        assert_eq!(parse_cpu_max("250%").unwrap(), "250000 100000");
        assert_eq!(parse_cpu_max("20000 100000").unwrap(), "20000 100000");
        assert_eq!(parse_cpu_max("max 50000").unwrap(), "max 50000");
        assert_eq!(parse_cpu_max("max").unwrap(), "max");
        for bad in ["0%", "x%", "100", "10 100000", "20000 10", "1 2 3", ""] {
            assert!(parse_cpu_max(bad).is_err(), "{bad:?}");
        }
    }
}
