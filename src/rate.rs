//! A token bucket over an injected clock (sans-IO): `burst` events at once, `per_sec` a
//! second after that. The agent's forwarding of notifications and the link's acceptance of
//! them are both held to one.

/// See the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    /// Nanoseconds of credit: an event costs `1e9 / per_sec`, at most `burst` events' worth
    /// is kept.
    credit_ns: u64,
    cost_ns: u64,
    full_ns: u64,
    at_ns: u64,
}

impl TokenBucket {
    /// A full bucket at `now_ns`. `per_sec` and `burst` are at least 1.
    pub fn new(per_sec: u64, burst: u64, now_ns: u64) -> TokenBucket {
        let cost_ns = 1_000_000_000 / per_sec.max(1);
        let full_ns = cost_ns.saturating_mul(burst.max(1));
        TokenBucket {
            credit_ns: full_ns,
            cost_ns,
            full_ns,
            at_ns: now_ns,
        }
    }

    /// Takes one event's token at `now_ns`; false when none is left (the event is over the
    /// rate). A clock that goes back earns nothing.
    pub fn take(&mut self, now_ns: u64) -> bool {
        let earned = now_ns.saturating_sub(self.at_ns);
        self.at_ns = self.at_ns.max(now_ns);
        self.credit_ns = self.credit_ns.saturating_add(earned).min(self.full_ns);
        if self.credit_ns < self.cost_ns {
            return false;
        }
        self.credit_ns -= self.cost_ns;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::TokenBucket;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_burst_then_the_rate() {
        let mut b = TokenBucket::new(100, 5, 0);
        assert_eq!((0..10).filter(|_| b.take(0)).count(), 5);
        // 100 a second: one every 10 ms.
        assert!(!b.take(9 * MS));
        assert!(b.take(10 * MS));
        assert!(!b.take(10 * MS));
        // A second later there is at most a burst.
        let got = (0..50).filter(|_| b.take(1_010 * MS)).count();
        assert_eq!(got, 5);
    }

    #[test]
    fn over_a_second_no_more_than_rate_plus_burst() {
        let mut b = TokenBucket::new(1024, 256, 0);
        let mut taken = 0;
        for i in 0..100_000u64 {
            // 100,000 attempts spread over one second.
            if b.take(i * 10_000) {
                taken += 1;
            }
        }
        assert!(taken <= 1024 + 256, "{taken}");
        assert!(taken >= 1024, "{taken}");
    }

    #[test]
    fn a_clock_that_goes_back_earns_nothing() {
        let mut b = TokenBucket::new(10, 1, 1_000 * MS);
        assert!(b.take(1_000 * MS));
        assert!(!b.take(0));
        assert!(!b.take(1_050 * MS));
        assert!(b.take(1_100 * MS));
    }
}
