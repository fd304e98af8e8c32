//! Percentiles of a sample of durations.

/// p50, p99 and max of a sample (nanoseconds), nearest-rank.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    pub mean_ns: u64,
}

impl Summary {
    /// Summarises `samples` (sorted in place). An empty sample gives all zeros.
    pub fn of(samples: &mut [u64]) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        samples.sort_unstable();
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Summary {
            count: samples.len(),
            p50_ns: percentile(samples, 50),
            p99_ns: percentile(samples, 99),
            max_ns: samples[samples.len() - 1],
            mean_ns: (sum / samples.len() as u128) as u64,
        }
    }
}

/// Nearest-rank percentile of sorted samples: the smallest value with at least `pct` % of
/// the samples at or below it.
pub fn percentile(sorted: &[u64], pct: u64) -> u64 {
    assert!(!sorted.is_empty() && pct <= 100);
    let rank = (sorted.len() as u64 * pct).div_ceil(100).max(1);
    sorted[rank as usize - 1]
}

/// Nanoseconds as microseconds with one decimal ("123.4").
pub fn us(ns: u64) -> String {
    format!("{}.{}", ns / 1000, (ns % 1000) / 100)
}

/// `a / b` with two decimals, or "n/a" when `b` is zero.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "n/a".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        let s = Summary::of(&mut v);
        assert_eq!((s.count, s.p50_ns, s.p99_ns, s.max_ns), (100, 50, 99, 100));
        assert_eq!(percentile(&[7], 99), 7);
        assert_eq!(percentile(&[1, 2], 50), 1);
        assert_eq!(Summary::of(&mut []), Summary::default());
    }

    #[test]
    fn formatting() {
        assert_eq!(us(123_456), "123.4");
        assert_eq!(ratio(3.0, 2.0), "1.50");
        assert_eq!(ratio(1.0, 0.0), "n/a");
    }
}
