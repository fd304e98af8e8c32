//! The one fixed-capacity FIFO of holden: allocated once, never grown.
//!
//! Every queue between a machine and its shell (the supervision core's actions, the events
//! the shell feeds back, the agent link's events and sends) is a `Fifo`. Its capacity is
//! computed at start-up from the number of services; a push beyond it is a bug in that
//! computation and panics, so that a queue can never grow or silently drop.

/// A fixed-capacity first-in first-out queue.
pub struct Fifo<T> {
    items: Box<[Option<T>]>,
    head: usize,
    len: usize,
}

impl<T> Fifo<T> {
    /// A queue for at most `capacity` items (at least one).
    pub fn with_capacity(capacity: usize) -> Fifo<T> {
        Fifo {
            items: (0..capacity.max(1)).map(|_| None).collect(),
            head: 0,
            len: 0,
        }
    }

    /// Appends `item`. Panics when full: capacities are sized so that this cannot happen.
    pub fn push(&mut self, item: T) {
        assert!(self.len < self.items.len(), "fixed queue overflow");
        let at = (self.head + self.len) % self.items.len();
        self.items[at] = Some(item);
        self.len += 1;
    }

    /// Removes the oldest item.
    pub fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let item = self.items[self.head].take();
        self.head = (self.head + 1) % self.items.len();
        self.len -= 1;
        item
    }

    /// Removes every item.
    pub fn clear(&mut self) {
        while self.pop().is_some() {}
        self.head = 0;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The fixed capacity.
    pub fn capacity(&self) -> usize {
        self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_wraps_and_never_grows() {
        let mut q = Fifo::with_capacity(3);
        for round in 0..10 {
            q.push(round);
            q.push(round + 100);
            assert_eq!(q.pop(), Some(round));
            assert_eq!(q.pop(), Some(round + 100));
        }
        assert!(q.is_empty());
        q.push(1);
        q.push(2);
        q.push(3);
        assert_eq!(q.len(), 3);
        assert_eq!(q.capacity(), 3);
        q.clear();
        assert_eq!(q.pop(), None);
    }

    #[test]
    #[should_panic(expected = "fixed queue overflow")]
    fn a_push_beyond_the_capacity_is_a_bug() {
        let mut q = Fifo::with_capacity(1);
        q.push(1);
        q.push(2);
    }
}
