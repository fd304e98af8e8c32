//! io_uring_enter interrupted by signals: retried inside, the completion still arrives.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ring::{OpTag, Timeout};

extern "C" fn ignore(_: libc::c_int) {}

#[test]
fn signals_during_the_wait_are_absorbed() {
    // A handler without SA_RESTART makes the blocked io_uring_enter return EINTR.
    // SAFETY: installs a handler that does nothing; sigaction struct built locally.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore as extern "C" fn(libc::c_int) as usize;
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
            0
        );
    }
    // SAFETY: pthread_self has no preconditions.
    let waiter = unsafe { libc::pthread_self() } as usize;
    let done = Arc::new(AtomicBool::new(false));
    let signaller = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut sent = 0u32;
            while !done.load(Ordering::Acquire) && sent < 100_000 {
                // SAFETY: the waiting thread is alive until `done` is set.
                unsafe { libc::pthread_kill(waiter as libc::pthread_t, libc::SIGUSR1) };
                sent += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let mut ring = ring(1);
    let id = ring.insert().unwrap();
    ring.timeout(id, Timeout::After(Duration::from_millis(500)))
        .unwrap();
    let mut completion = None;
    for _ in 0..WAIT_ROUNDS_MAX {
        ring.submit_and_wait(1, None)
            .expect("EINTR must not surface as an error");
        if let Some(c) = ring.next_completion() {
            completion = Some(c);
            break;
        }
    }
    done.store(true, Ordering::Release);
    signaller.join().unwrap();
    let c = completion.expect("timeout completion");
    assert_eq!((c.slot, c.op, c.result), (id, OpTag::Timeout, Ok(0)));
    assert!(
        ring.stats().enter_eintr > 0,
        "the waits were interrupted: {:?}",
        ring.stats()
    );
}
