//! The core's timers, one per service, in an indexed binary min-heap: the one store of their
//! deadlines. The shell derives its single ring timeout from [`Timers::next`]; a fired timer
//! goes back to the core with its token.

use crate::supervise::{ServiceId, TimerToken};

const NIL: u32 = u32::MAX;

/// At most one timer per service; every operation is O(log n), nothing is allocated after
/// [`Timers::new`].
pub struct Timers {
    /// Service indices, heap-ordered by deadline.
    heap: Box<[u32]>,
    len: usize,
    /// Per service: its position in `heap`, or NIL.
    position: Box<[u32]>,
    deadline_ns: Box<[u64]>,
    token: Box<[TimerToken]>,
}

impl Timers {
    pub fn new(capacity: usize) -> Timers {
        Timers {
            heap: vec![NIL; capacity].into_boxed_slice(),
            len: 0,
            position: vec![NIL; capacity].into_boxed_slice(),
            deadline_ns: vec![0; capacity].into_boxed_slice(),
            token: vec![TimerToken(0); capacity].into_boxed_slice(),
        }
    }

    /// Arms (or re-arms) the timer of `service`.
    pub fn set(&mut self, service: ServiceId, deadline_ns: u64, token: TimerToken) {
        let s = service.index();
        self.deadline_ns[s] = deadline_ns;
        self.token[s] = token;
        if self.position[s] == NIL {
            let at = self.len;
            self.heap[at] = s as u32;
            self.position[s] = at as u32;
            self.len += 1;
            self.up(at);
        } else {
            let at = self.position[s] as usize;
            self.up(at);
            self.down(self.position[s] as usize);
        }
    }

    /// Disarms the timer of `service` (no-op if none).
    pub fn clear(&mut self, service: ServiceId) {
        let s = service.index();
        let at = self.position[s];
        if at == NIL {
            return;
        }
        let at = at as usize;
        self.len -= 1;
        self.swap(at, self.len);
        self.position[s] = NIL;
        self.heap[self.len] = NIL;
        if at < self.len {
            self.up(at);
            self.down(at);
        }
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<u64> {
        (self.len > 0).then(|| self.deadline_ns[self.heap[0] as usize])
    }

    /// Takes the earliest timer if it is due at `now_ns`.
    pub fn pop_due(&mut self, now_ns: u64) -> Option<(ServiceId, TimerToken)> {
        let first = *self.heap.first().filter(|_| self.len > 0)? as usize;
        if self.deadline_ns[first] > now_ns {
            return None;
        }
        let id = ServiceId(first as u32);
        let token = self.token[first];
        self.clear(id);
        Some((id, token))
    }

    /// Armed timers.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The fixed capacity.
    pub fn capacity(&self) -> usize {
        self.heap.len()
    }

    fn key(&self, at: usize) -> u64 {
        self.deadline_ns[self.heap[at] as usize]
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.position[self.heap[a] as usize] = a as u32;
        if self.heap[b] != NIL {
            self.position[self.heap[b] as usize] = b as u32;
        }
    }

    fn up(&mut self, mut at: usize) {
        while at > 0 {
            let parent = (at - 1) / 2;
            if self.key(parent) <= self.key(at) {
                break;
            }
            self.swap(parent, at);
            at = parent;
        }
    }

    fn down(&mut self, mut at: usize) {
        loop {
            let (l, r) = (2 * at + 1, 2 * at + 2);
            let mut least = at;
            if l < self.len && self.key(l) < self.key(least) {
                least = l;
            }
            if r < self.len && self.key(r) < self.key(least) {
                least = r;
            }
            if least == at {
                return;
            }
            self.swap(at, least);
            at = least;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A naive model: the same operations on a plain array, compared after every step.
    #[test]
    fn agrees_with_a_naive_model_over_random_operations() {
        let n = 16;
        let mut timers = Timers::new(n);
        let mut model: Vec<Option<(u64, u64)>> = vec![None; n];
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut rand = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut now = 0u64;
        for step in 0..20_000u64 {
            let s = (rand() % n as u64) as usize;
            match rand() % 4 {
                0 | 1 => {
                    let deadline = now + rand() % 100;
                    timers.set(ServiceId(s as u32), deadline, TimerToken(step));
                    model[s] = Some((deadline, step));
                }
                2 => {
                    timers.clear(ServiceId(s as u32));
                    model[s] = None;
                }
                _ => {
                    now += rand() % 20;
                    while let Some((id, token)) = timers.pop_due(now) {
                        let (deadline, t) =
                            model[id.index()].take().expect("fired an unarmed timer");
                        assert!(deadline <= now);
                        assert_eq!(token, TimerToken(t));
                    }
                    assert!(
                        model.iter().flatten().all(|&(d, _)| d > now),
                        "a due timer stayed"
                    );
                }
            }
            let min = model.iter().flatten().map(|&(d, _)| d).min();
            assert_eq!(timers.next(), min);
            assert_eq!(timers.len(), model.iter().flatten().count());
        }
    }
}
