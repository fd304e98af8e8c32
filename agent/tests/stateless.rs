//! The agent keeps no state: no zombies, no fd growth, and the same memory
//! after many spawns as after a few.

mod common;

use std::os::fd::AsFd;
use std::time::Instant;

use common::*;
use holden::pidfd::send_signal as pidfd_send_signal;

const WARM_UP_SPAWNS: usize = 10;

/// One spawn of /bin/true; waits for its exit through the pidfd.
fn spawn_true(client: &V1Client, id: u64) {
    let (_, pidfd) = client.start(id, &[b"/bin/true"]).started();
    assert!(poll_readable(pidfd.as_fd(), WAIT));
}

#[test]
fn no_zombies_and_no_fd_growth_after_a_spawn_storm() {
    let dir = TempDir::new("zombie");
    let agent = Agent::start(&dir, &[]);
    let client = V1Client::connect(&agent.socket);
    for id in 0..WARM_UP_SPAWNS as u64 {
        spawn_true(&client, id);
    }
    // A ping round-trip: the agent has finished the previous request (and
    // closed its pidfd copy) when the pong arrives.
    assert!(matches!(client.ping(1 << 60), Outcome::Pong { .. }));
    let fds_before = fd_count(agent.pid());
    // Short-lived, failing and killed processes from four clients.
    let threads: Vec<_> = (0..4u64)
        .map(|c| {
            let socket = agent.socket.clone();
            std::thread::spawn(move || {
                let client = V1Client::connect(&socket);
                for i in 0..250u64 {
                    let id = c << 32 | i;
                    match i % 5 {
                        0 => {
                            let (_, pidfd) = client.start(id, &[b"/bin/sleep", b"1000"]).started();
                            pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL).unwrap();
                            assert!(poll_readable(pidfd.as_fd(), WAIT));
                        }
                        1 => {
                            client.start(id, &[b"/nonexistent/holden"]).error();
                        }
                        _ => spawn_true(&client, id),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let zombies: Vec<_> = children_of(agent.pid())
        .into_iter()
        .filter(|&(_, state)| state == 'Z')
        .collect();
    assert!(
        zombies.is_empty(),
        "zombie children of the agent: {zombies:?}"
    );
    // The four clients have disconnected: wait for the agent to notice.
    wait_until("client connections to close", || {
        fd_count(agent.pid()) <= fds_before
    });
    assert!(matches!(client.ping(1 << 61), Outcome::Pong { .. }));
    assert_eq!(fd_count(agent.pid()), fds_before);
}

/// Memory (VmRSS) and fd count after `spawns` equal those after the warm-up.
fn memory_and_fds_stay_flat(spawns: usize) {
    let dir = TempDir::new("flat");
    let agent = Agent::start(&dir, &[]);
    let client = V1Client::connect(&agent.socket);
    for id in 0..WARM_UP_SPAWNS as u64 {
        spawn_true(&client, id);
    }
    assert!(matches!(client.ping(1 << 60), Outcome::Pong { .. }));
    let (rss_before, fds_before) = (vm_rss_kb(agent.pid()), fd_count(agent.pid()));
    let started = Instant::now();
    for id in 0..spawns as u64 {
        spawn_true(&client, WARM_UP_SPAWNS as u64 + id);
    }
    let elapsed = started.elapsed();
    assert!(matches!(client.ping(1 << 61), Outcome::Pong { .. }));
    let (rss_after, fds_after) = (vm_rss_kb(agent.pid()), fd_count(agent.pid()));
    eprintln!(
        "{spawns} spawns in {:.1} s ({:.0}/s); VmRSS {rss_before} -> {rss_after} kB; fds \
         {fds_before} -> {fds_after}",
        elapsed.as_secs_f64(),
        spawns as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(fds_after, fds_before, "fd count grew");
    assert_eq!(rss_after, rss_before, "VmRSS changed");
}

#[test]
fn memory_and_fds_after_10_000_spawns_equal_those_after_10() {
    memory_and_fds_stay_flat(10_000);
}

#[test]
#[ignore = "about 100 s on a 2-core machine; run with --ignored"]
fn memory_and_fds_after_100_000_spawns_equal_those_after_10() {
    memory_and_fds_stay_flat(100_000);
}
