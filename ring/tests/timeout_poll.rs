//! Timeouts and POLL_ADD against the real kernel.

mod common;

use std::time::Duration;

use common::*;
use ring::{now_ns, Errno, OpError, OpTag, Timeout};

#[test]
fn relative_timeout_fires() {
    let mut ring = ring(4);
    let id = ring.insert().unwrap();
    ring.timeout(id, Timeout::After(Duration::from_millis(1)))
        .unwrap();
    let c = next(&mut ring);
    assert_eq!((c.slot, c.op, c.result), (id, OpTag::Timeout, Ok(0)));
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn timeouts_fire_in_deadline_order() {
    let mut ring = ring(8);
    let base = now_ns();
    // Inserted in scrambled order; deadlines 30, 10, 50, 20, 40 ms ahead.
    let offsets_ms = [30u64, 10, 50, 20, 40];
    let mut ids = Vec::new();
    for (i, ms) in offsets_ms.iter().enumerate() {
        let id = ring.insert().unwrap();
        let when = if i % 2 == 0 {
            Timeout::At(base + ms * 1_000_000)
        } else {
            Timeout::After(Duration::from_millis(*ms))
        };
        ring.timeout(id, when).unwrap();
        ids.push((*ms, id));
    }
    let mut fired = Vec::new();
    for _ in 0..offsets_ms.len() {
        let c = next(&mut ring);
        assert_eq!((c.op, c.result), (OpTag::Timeout, Ok(0)));
        fired.push(c.slot);
    }
    ids.sort_by_key(|(ms, _)| *ms);
    let expected: Vec<_> = ids.iter().map(|(_, id)| *id).collect();
    assert_eq!(fired, expected);
}

#[test]
fn poll_on_eventfd_completes_only_after_signal() {
    let mut ring = ring(4);
    let efd = eventfd();
    let id = ring.insert().unwrap();
    ring.attach(id, efd.try_clone().unwrap()).unwrap();
    ring.poll_add(id, libc::POLLIN as u32).unwrap();
    assert_eq!(
        ring.poll_add(id, libc::POLLIN as u32),
        Err(OpError::Busy(OpTag::Poll))
    );
    assert_eq!(poll_now(&mut ring), None);
    signal_eventfd(&efd);
    let c = next(&mut ring);
    assert_eq!((c.slot, c.op), (id, OpTag::Poll));
    assert!(c.result.unwrap() & libc::POLLIN as u32 != 0);
}

#[test]
fn cancel_yields_exactly_one_cancelled_completion() {
    let mut ring = ring(4);
    let id = ring.insert().unwrap();
    ring.attach(id, eventfd()).unwrap();
    ring.poll_add(id, libc::POLLIN as u32).unwrap();
    ring.timeout(id, Timeout::After(Duration::from_secs(3600)))
        .unwrap();
    ring.submit_and_wait(0, None).unwrap();
    ring.cancel(id).unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let c = next(&mut ring);
        assert_eq!(c.slot, id);
        assert_eq!(c.result, Err(Errno::CANCELED));
        seen.push(c.op);
    }
    seen.sort_by_key(|op| *op as u8);
    assert_eq!(seen, [OpTag::Poll, OpTag::Timeout]);
    assert_eq!(poll_now(&mut ring), None);
    assert_eq!(ring.in_flight(), 0);
    // The slot's ops are free again.
    ring.poll_add(id, libc::POLLIN as u32).unwrap();
    ring.remove(id).unwrap();
}
