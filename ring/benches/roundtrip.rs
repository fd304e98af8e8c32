//! Round-trip cost per operation: `ring` against the same loop written directly on the
//! `io-uring` crate, measured in the same run (interleaved rounds, median), printed as ns/op
//! and a ratio. Run: `cargo bench -p holden-ring`.

use std::hint::black_box;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use ring::{Limits, OpTag, Ring, Timeout};

/// Ops per measured round: POLL_ADD is ~1 µs, a zero TIMEOUT ~20 µs (timer + wake-up).
const POLL_OPS_PER_ROUND: u32 = 100_000;
const TIMEOUT_OPS_PER_ROUND: u32 = 10_000;
const ROUNDS: usize = 11;

fn eventfd_signalled() -> OwnedFd {
    // SAFETY: eventfd returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a local; the counter stays non-zero, so POLLIN stays ready.
    let written = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    assert_eq!(written, 8);
    fd
}

#[derive(Clone, Copy)]
enum Op {
    Poll,
    Timeout0,
}

fn ops_per_round(op: Op) -> u32 {
    match op {
        Op::Poll => POLL_OPS_PER_ROUND,
        Op::Timeout0 => TIMEOUT_OPS_PER_ROUND,
    }
}

fn ring_loop(ring: &mut Ring, fd: &OwnedFd, op: Op) -> Duration {
    let id = ring.insert().unwrap();
    // The slot owns a duplicate (outside the measured loop); removing it closes that.
    ring.attach(id, fd.try_clone().unwrap()).unwrap();
    let start = Instant::now();
    for _ in 0..ops_per_round(op) {
        match op {
            Op::Poll => ring.poll_add(id, libc::POLLIN as u32).unwrap(),
            Op::Timeout0 => ring.timeout(id, Timeout::After(Duration::ZERO)).unwrap(),
        }
        ring.submit_and_wait(1, None).unwrap();
        let c = ring.next_completion().unwrap();
        debug_assert!(c.op == OpTag::Poll || c.op == OpTag::Timeout);
        black_box(c.result.unwrap());
    }
    let elapsed = start.elapsed();
    ring.remove(id).unwrap();
    elapsed
}

fn raw_loop(uring: &mut IoUring, fd: &OwnedFd, op: Op) -> Duration {
    let timespec = types::Timespec::new();
    let start = Instant::now();
    for i in 0..ops_per_round(op) {
        let sqe = match op {
            Op::Poll => {
                opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), libc::POLLIN as u32).build()
            }
            Op::Timeout0 => opcode::Timeout::new(&timespec).build(),
        };
        // SAFETY: the entry points at `timespec` (alive for the whole loop) or at nothing.
        unsafe { uring.submission().push(&sqe.user_data(i as u64)).unwrap() };
        uring.submit_and_wait(1).unwrap();
        let cqe = uring.completion().next().unwrap();
        black_box(cqe.result());
    }
    start.elapsed()
}

fn min(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let limits = Limits::small();
    let mut ring = Ring::new(limits).expect("io_uring setup");
    let mut uring = IoUring::builder()
        .setup_cqsize(limits.cq_entries_effective())
        .build(limits.sq_entries)
        .expect("io_uring setup");
    let fd = eventfd_signalled();
    println!("round trip per op: {ROUNDS} interleaved rounds each, median (and min)");
    for (name, op) in [
        ("POLL_ADD on a signalled eventfd", Op::Poll),
        ("TIMEOUT of 0", Op::Timeout0),
    ] {
        // Warm-up of both paths.
        ring_loop(&mut ring, &fd, op);
        raw_loop(&mut uring, &fd, op);
        let (mut ring_ns, mut raw_ns) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let ops = ops_per_round(op) as f64;
            raw_ns.push(raw_loop(&mut uring, &fd, op).as_nanos() as f64 / ops);
            ring_ns.push(ring_loop(&mut ring, &fd, op).as_nanos() as f64 / ops);
        }
        let (ring_min, raw_min) = (min(&ring_ns), min(&raw_ns));
        let (ring_med, raw_med) = (median(ring_ns), median(raw_ns));
        println!(
            "{name:<32} ring {ring_med:7.1} ns/op   io-uring {raw_med:7.1} ns/op   ratio {:.3} ({:+.1} %)   [min: {ring_min:.1} / {raw_min:.1} = {:.3}]",
            ring_med / raw_med,
            (ring_med / raw_med - 1.0) * 100.0,
            ring_min / raw_min,
        );
    }
}
