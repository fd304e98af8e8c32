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

/// The event loop's stall histogram, as `holdenctl stats --json` gives it: the non-empty
/// buckets as (lowest ns, count), and the longest stall. Bucket bounds follow
/// `docs/control.md` ("Stats"): below 8 ns one value each, above, each power of two split
/// in 8.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stall {
    pub buckets: Vec<(u64, u64)>,
    pub max_ns: u64,
}

/// The last value of the stall bucket starting at `low`.
pub fn stall_bucket_high(low: u64) -> u64 {
    if low < 8 {
        return low;
    }
    let octave = 63 - low.leading_zeros();
    low + (1u64 << (octave - 3)) - 1
}

impl Stall {
    /// From `holdenctl stats --json`; `None` if the text has no histogram.
    pub fn parse(json: &str) -> Option<Stall> {
        let field = |key: &str| -> Option<u64> {
            let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
            json[at..].split([',', '}']).next()?.trim().parse().ok()
        };
        let at = json.find("\"stall_buckets\":[")? + 17;
        let end = at + json[at..].find("]]").map_or(0, |e| e + 1);
        let mut buckets = Vec::new();
        for pair in json[at..end].split("],[").filter(|p| !p.is_empty()) {
            let mut it = pair.trim_matches(['[', ']']).split(',');
            let low = it.next()?.trim().parse().ok()?;
            let count = it.next()?.trim().parse().ok()?;
            buckets.push((low, count));
        }
        Some(Stall {
            buckets,
            max_ns: field("stall_max_ns").unwrap_or(0),
        })
    }

    /// What was counted after `earlier` (a snapshot of the same histogram). The longest stall
    /// of that window is not known exactly: it is at most the top of the highest bucket the
    /// window hit, and at most the longest since start-up.
    pub fn since(&self, earlier: &Stall) -> Stall {
        let buckets: Vec<(u64, u64)> = self
            .buckets
            .iter()
            .map(|&(low, count)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|b| b.0 == low)
                    .map_or(0, |b| b.1);
                (low, count.saturating_sub(before))
            })
            .filter(|b| b.1 > 0)
            .collect();
        let top = buckets
            .iter()
            .map(|b| stall_bucket_high(b.0))
            .max()
            .unwrap_or(0);
        Stall {
            buckets,
            max_ns: top.min(self.max_ns),
        }
    }

    /// Two windows as one.
    pub fn merge(mut self, other: &Stall) -> Stall {
        for &(low, count) in &other.buckets {
            match self.buckets.iter_mut().find(|b| b.0 == low) {
                Some(b) => b.1 += count,
                None => self.buckets.push((low, count)),
            }
        }
        self.buckets.sort_unstable();
        self.max_ns = self.max_ns.max(other.max_ns);
        self
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.1).sum()
    }

    /// The stall at quantile `q`: the top of the bucket holding it, at most the max.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for &(low, count) in &self.buckets {
            seen += count;
            if seen >= rank {
                return Some(stall_bucket_high(low).min(self.max_ns));
            }
        }
        Some(self.max_ns)
    }
}

/// Nanoseconds as microseconds with one decimal ("123.4").
pub fn us(ns: u64) -> String {
    format!("{}.{}", ns / 1000, (ns % 1000) / 100)
}

/// Nanoseconds as milliseconds with one decimal ("123.4").
pub fn ms(ns: u64) -> String {
    format!("{}.{}", ns / 1_000_000, (ns % 1_000_000) / 100_000)
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
    fn stall_histograms_are_read_subtracted_and_merged() {
        // Bounds as docs/control.md gives them: low(i) = (8 + i % 8) << (i / 8 - 1).
        let low = |i: u64| if i < 8 { i } else { (8 + i % 8) << (i / 8 - 1) };
        for i in 0..302 {
            assert_eq!(stall_bucket_high(low(i)), low(i + 1) - 1, "bucket {i}");
        }
        let early = Stall::parse(
            r#"{"completions":3,"stall_max_ns":5000,"stall_buckets":[[3584,2],[4608,1]],"x":1}"#,
        )
        .unwrap();
        assert_eq!(early.buckets, vec![(3584, 2), (4608, 1)]);
        let late = Stall::parse(
            r#"{"stall_max_ns":300000,"stall_buckets":[[3584,10],[4608,1],[98304,1]]}"#,
        )
        .unwrap();
        let window = late.since(&early);
        assert_eq!(window.buckets, vec![(3584, 8), (98304, 1)]);
        assert_eq!(window.max_ns, stall_bucket_high(98304));
        assert_eq!(window.quantile(0.5), Some(stall_bucket_high(3584)));
        assert_eq!(window.quantile(0.999), Some(window.max_ns));
        let both = window.clone().merge(&early);
        assert_eq!(both.count(), 12);
        assert_eq!(
            Stall::parse(r#"{"stall_max_ns":null,"stall_buckets":[]}"#)
                .unwrap()
                .quantile(0.5),
            None
        );
    }

    #[test]
    fn formatting() {
        assert_eq!(us(123_456), "123.4");
        assert_eq!(ratio(3.0, 2.0), "1.50");
        assert_eq!(ratio(1.0, 0.0), "n/a");
    }
}
