//! A fixed-size histogram of durations in nanoseconds, for the event loop's own timing (how
//! long it spends on one completion) and for `holdenctl stats`, which reads one back.
//!
//! Buckets are log-linear, as in HdrHistogram: values below 8 ns have a bucket each; above,
//! every power of two is split into [`SUB_BUCKETS`] equal buckets, so a bucket is at most
//! 1/8 (12.5 %) wider than its lower bound. The last bucket holds everything from about
//! 2^40 ns (18 minutes) up. Recording is a few instructions and an increment: no
//! allocation, no branch on the data beyond the bucket index.

/// Buckets per power of two (3 bits of precision).
pub const SUB_BUCKETS: usize = 8;
const SUB_BITS: u32 = SUB_BUCKETS.trailing_zeros();
/// Number of buckets: exact values 0..8, then powers of two 2^3 .. 2^39 split in 8.
pub const BUCKETS: usize = (40 - SUB_BITS as usize + 1) * SUB_BUCKETS;

/// The bucket of `value`.
pub fn bucket_of(value: u64) -> usize {
    if value < SUB_BUCKETS as u64 {
        return value as usize;
    }
    let octave = 63 - value.leading_zeros();
    let sub = (value >> (octave - SUB_BITS)) as usize & (SUB_BUCKETS - 1);
    let index = (octave - SUB_BITS + 1) as usize * SUB_BUCKETS + sub;
    index.min(BUCKETS - 1)
}

/// The smallest value of bucket `index`.
pub fn bucket_low(index: usize) -> u64 {
    if index < SUB_BUCKETS {
        return index as u64;
    }
    let octave = (index / SUB_BUCKETS) as u32 + SUB_BITS - 1;
    let sub = (index % SUB_BUCKETS) as u64;
    (SUB_BUCKETS as u64 + sub) << (octave - SUB_BITS)
}

/// The largest value of bucket `index` (the last bucket has no bound: `u64::MAX`).
pub fn bucket_high(index: usize) -> u64 {
    if index + 1 >= BUCKETS {
        u64::MAX
    } else {
        bucket_low(index + 1) - 1
    }
}

/// Counts of durations, with the largest seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    counts: [u64; BUCKETS],
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: [0; BUCKETS],
            max: 0,
        }
    }
}

impl Histogram {
    /// Counts one value.
    pub fn record(&mut self, value: u64) {
        let bucket = &mut self.counts[bucket_of(value)];
        *bucket = bucket.saturating_add(1);
        self.max = self.max.max(value);
    }

    /// The count of every bucket, in order.
    pub fn counts(&self) -> &[u64; BUCKETS] {
        &self.counts
    }

    /// The largest value recorded (0 if none).
    pub fn max(&self) -> u64 {
        self.max
    }
}

/// The value at quantile `q` (0.0–1.0) of `counts`: the top of the bucket holding it, but no
/// more than `max` (so that a quantile never exceeds what was seen). `None` without values.
pub fn quantile(counts: impl Iterator<Item = u64> + Clone, max: u64, q: f64) -> Option<u64> {
    let total: u64 = counts.clone().fold(0u64, |a, c| a.saturating_add(c));
    if total == 0 {
        return None;
    }
    // The rank of the value asked for, 1-based: at least the first, at most the last.
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    for (index, count) in counts.enumerate() {
        seen = seen.saturating_add(count);
        if seen >= rank {
            return Some(bucket_high(index).min(max));
        }
    }
    Some(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        assert_eq!(bucket_low(0), 0);
        for index in 1..BUCKETS {
            assert_eq!(
                bucket_low(index),
                bucket_high(index - 1) + 1,
                "bucket {index}"
            );
            assert_eq!(bucket_of(bucket_low(index)), index);
            if index + 1 < BUCKETS {
                assert_eq!(bucket_of(bucket_high(index)), index);
            }
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_of((1 << 40) - 1), BUCKETS - 1);
        assert_eq!(bucket_of(1 << 40), BUCKETS - 1);
    }

    #[test]
    fn a_bucket_is_at_most_an_eighth_wider_than_its_low_end() {
        for index in SUB_BUCKETS..BUCKETS - 1 {
            let (low, high) = (bucket_low(index), bucket_high(index));
            assert!(
                (high + 1 - low) * 8 <= low,
                "bucket {index}: {low}..={high}"
            );
        }
    }

    #[test]
    fn quantiles_come_from_the_buckets_and_never_exceed_the_max() {
        let mut h = Histogram::default();
        assert_eq!(quantile(h.counts().iter().copied(), h.max(), 0.5), None);
        for v in 1..=1000u64 {
            h.record(v * 1000); // 1 µs .. 1 ms
        }
        let q = |q| quantile(h.counts().iter().copied(), h.max(), q).unwrap();
        let p50 = q(0.5);
        assert!((500_000..=500_000 + 500_000 / 8).contains(&p50), "{p50}");
        let p999 = q(0.999);
        assert!((999_000..=1_000_000).contains(&p999), "{p999}");
        assert_eq!(q(1.0), 1_000_000);
        assert_eq!(h.max(), 1_000_000);
        assert_eq!(q(0.0), bucket_high(bucket_of(1000)));
    }
}
