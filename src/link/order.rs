//! Outstanding requests in the order they were made: an intrusive doubly linked list over
//! service indices (fixed arrays, O(1) push and remove). Every request has the same timeout,
//! so the oldest has the earliest deadline.

const NIL: u32 = u32::MAX;

pub(super) struct Order {
    prev: Box<[u32]>,
    next: Box<[u32]>,
    linked: Box<[bool]>,
    head: u32,
    tail: u32,
}

impl Order {
    pub(super) fn new(capacity: usize) -> Order {
        Order {
            prev: vec![NIL; capacity].into_boxed_slice(),
            next: vec![NIL; capacity].into_boxed_slice(),
            linked: vec![false; capacity].into_boxed_slice(),
            head: NIL,
            tail: NIL,
        }
    }

    /// Appends `index` as the newest (moving it if it is already linked).
    pub(super) fn push(&mut self, index: usize) {
        self.remove(index);
        let i = index as u32;
        self.prev[index] = self.tail;
        self.next[index] = NIL;
        if self.tail != NIL {
            self.next[self.tail as usize] = i;
        } else {
            self.head = i;
        }
        self.tail = i;
        self.linked[index] = true;
    }

    /// Unlinks `index` (no-op if it is not linked).
    pub(super) fn remove(&mut self, index: usize) {
        if !self.linked[index] {
            return;
        }
        let (p, n) = (self.prev[index], self.next[index]);
        if p != NIL {
            self.next[p as usize] = n;
        } else {
            self.head = n;
        }
        if n != NIL {
            self.prev[n as usize] = p;
        } else {
            self.tail = p;
        }
        self.linked[index] = false;
    }

    /// The oldest linked index.
    pub(super) fn oldest(&self) -> Option<usize> {
        (self.head != NIL).then_some(self.head as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_first_with_removal_anywhere() {
        let mut o = Order::new(4);
        assert_eq!(o.oldest(), None);
        o.push(2);
        o.push(0);
        o.push(3);
        assert_eq!(o.oldest(), Some(2));
        o.remove(0);
        o.remove(2);
        assert_eq!(o.oldest(), Some(3));
        o.push(1);
        o.push(3);
        assert_eq!(o.oldest(), Some(1));
        o.remove(1);
        o.remove(3);
        o.remove(3);
        assert_eq!(o.oldest(), None);
    }
}
