//! bench-floor-scale: the floor for N services — the least a supervisor of N processes can do.
//!
//! `bench-floor-scale --probe PATH --records FILE --services N --crashing C [--seconds-max S]`
//!
//! Starts N probes (ids 0..N; the first C `exit` at once, the others stay `idle`) with
//! `posix_spawn` (as `bench-floor` does for the floor), waits on all their pidfds with one
//! epoll set, and for every exit reaps the process (`waitid(P_PIDFD)`) and spawns it again at
//! once. Nothing else: no policy, no bookkeeping, no logging. Runs until SIGTERM (or `S`
//! seconds), then SIGKILLs and reaps every child it still has and prints
//! `spawned=N cpu_ns=C wall_ns=W` on stdout. Exit status 0, 1 on a failure, 2 for misuse.

use holden::pidfd;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Most services (the orchestrator's slot limit is of this order).
const SERVICES_MAX: u64 = 65_536;
/// Events taken from epoll per wait.
const EVENTS_PER_WAIT: usize = 256;
/// Longest epoll wait, so the time bound and a missed signal are noticed.
const WAIT_MS_MAX: i32 = 100;
const SECONDS_MAX_DEFAULT: u64 = 600;
const SECONDS_MAX_LIMIT: u64 = 86_400;
const USAGE: &str = "usage: bench-floor-scale --probe PATH --records FILE --services N --crashing C [--seconds-max S]";

/// Set by SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

struct Args {
    probe: String,
    records: String,
    services: u64,
    crashing: u64,
    seconds_max: u64,
}

fn parse_args() -> Result<Args, String> {
    let (mut probe, mut records, mut services, mut crashing) = (None, None, None, None);
    let mut seconds_max = SECONDS_MAX_DEFAULT;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--probe" => probe = Some(value()?),
            "--records" => records = Some(value()?),
            "--services" => {
                services = Some(holden_bench::number(&arg, &value()?, 1, SERVICES_MAX)?)
            }
            "--crashing" => {
                crashing = Some(holden_bench::number(&arg, &value()?, 0, SERVICES_MAX)?)
            }
            "--seconds-max" => {
                seconds_max = holden_bench::number(&arg, &value()?, 1, SECONDS_MAX_LIMIT)?
            }
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let services = services.ok_or("--services is required")?;
    let crashing = crashing.ok_or("--crashing is required")?;
    if crashing > services {
        return Err("--crashing may not exceed --services".into());
    }
    Ok(Args {
        probe: probe.ok_or("--probe is required")?,
        records: records.ok_or("--records is required")?,
        services,
        crashing,
        seconds_max,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench-floor-scale: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-floor-scale: {e}");
            ExitCode::from(1)
        }
    }
}

/// One supervised probe.
struct Slot {
    spawner: holden_bench::PosixSpawn,
    pidfd: Option<OwnedFd>,
}

fn run(args: &Args) -> Result<(), String> {
    install_sigterm()?;
    let mut slots = Vec::with_capacity(args.services as usize);
    for id in 0..args.services {
        let id_text = id.to_string();
        let mode: &[u8] = if id < args.crashing { b"exit" } else { b"idle" };
        let argv: [&[u8]; 4] = [
            args.probe.as_bytes(),
            args.records.as_bytes(),
            id_text.as_bytes(),
            mode,
        ];
        let spawner = holden_bench::PosixSpawn::new(&argv)?;
        slots.push(Slot {
            spawner,
            pidfd: None,
        });
    }
    // SAFETY: epoll_create1 takes only flags.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        return Err(format!(
            "epoll_create1: {}",
            std::io::Error::last_os_error()
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds_max);
    let wall_start = Instant::now();
    let cpu_start = holden_bench::process_cpu_ns();
    let mut spawned = 0u64;
    let result = (|| {
        for index in 0..slots.len() {
            start(&mut slots, index, epfd)?;
            spawned += 1;
        }
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        while !STOP.load(Ordering::Relaxed) && Instant::now() < deadline {
            // SAFETY: the kernel writes at most EVENTS_PER_WAIT events into `events`.
            let n = unsafe {
                libc::epoll_wait(
                    epfd,
                    events.as_mut_ptr(),
                    EVENTS_PER_WAIT as i32,
                    WAIT_MS_MAX,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(format!("epoll_wait: {e}"));
            }
            for ev in &events[..n as usize] {
                let index = ev.u64 as usize;
                let Some(fd) = slots[index].pidfd.take() else {
                    continue;
                };
                reap(&fd)?;
                // Removed explicitly: closing the pidfd does not remove it while another
                // reference to the file lives on (a posix_spawn child has a copy of our fd
                // table until its execve has closed the close-on-exec fds, and the kernel
                // resumes us before that).
                // SAFETY: removes a registered fd from our epoll set.
                unsafe {
                    libc::epoll_ctl(
                        epfd,
                        libc::EPOLL_CTL_DEL,
                        fd.as_raw_fd(),
                        std::ptr::null_mut(),
                    )
                };
                drop(fd);
                start(&mut slots, index, epfd)?;
                spawned += 1;
            }
        }
        Ok(())
    })();
    for slot in &mut slots {
        if let Some(fd) = slot.pidfd.take() {
            let _ = holden::pidfd::send_signal(fd.as_fd(), libc::SIGKILL);
            let _ = wait_exit(&fd).and_then(|_| reap(&fd));
        }
    }
    // SAFETY: closes our epoll fd once.
    unsafe { libc::close(epfd) };
    result?;
    println!(
        "spawned={spawned} cpu_ns={} wall_ns={}",
        holden_bench::process_cpu_ns() - cpu_start,
        wall_start.elapsed().as_nanos()
    );
    Ok(())
}

/// Spawns slot `index` and adds its pidfd to the epoll set.
fn start(slots: &mut [Slot], index: usize, epfd: i32) -> Result<(), String> {
    let child = slots[index].spawner.spawn()?;
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: index as u64,
    };
    // SAFETY: registers a valid pidfd with a valid epoll_event.
    let rc =
        unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, child.pidfd.as_raw_fd(), &mut ev) };
    if rc < 0 {
        return Err(format!("epoll_ctl: {}", std::io::Error::last_os_error()));
    }
    slots[index].pidfd = Some(child.pidfd);
    Ok(())
}

fn reap(fd: &OwnedFd) -> Result<(), String> {
    match pidfd::wait_child(fd.as_fd()) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("pidfd polled readable but the probe is running".into()),
        Err(e) => Err(format!("waitid: {e}")),
    }
}

/// Blocks until the pidfd polls readable.
fn wait_exit(fd: &OwnedFd) -> Result<(), String> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: polls one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, -1) };
        if rc > 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if rc < 0 && e.raw_os_error() != Some(libc::EINTR) {
            return Err(format!("poll: {e}"));
        }
    }
}

fn install_sigterm() -> Result<(), String> {
    // SAFETY: sigaction with a handler that only stores to an atomic (async-signal-safe); no
    // SA_RESTART, so a blocking epoll_wait returns EINTR.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_term as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut())
    };
    if rc < 0 {
        return Err(format!("sigaction: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}
