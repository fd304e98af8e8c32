//! Local spawns off the event loop.
//!
//! A few spawner threads, started with the orchestrator, each with a [`Launcher`]: a spawn is
//! submitted by the loop, carried out by whichever thread is free, and its result (the pidfd,
//! or the stage and errno of the failure) comes back through a fixed queue and an eventfd
//! that the loop watches on its ring, like a QM spawn's answer through the agent. The loop
//! never waits for a child: a thread is suspended until its child has exec'd, and an exec
//! that stalls (a program on a storage device or FUSE mount that does not answer) holds only
//! that thread; the others go on spawning.
//!
//! Queues are allocated here, sized for one spawn in flight per service (what the core
//! allows); nothing is allocated per spawn (the job holds an `Arc` of the service's spec).

use super::output::ChildFds;
use crate::queue::Fifo;
use crate::spawn::{self, Launcher, SpawnError, SpawnSpec, SpawnStage, Spawned};
use crate::supervise::ServiceId;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Spawner threads: one more than a single stalled exec can hold.
pub(crate) const THREADS: usize = 4;
/// Each thread's own stack (it only calls the launcher).
const THREAD_STACK_BYTES: usize = 256 * 1024;

/// One spawn to carry out.
struct Job {
    service: ServiceId,
    spec: Arc<SpawnSpec>,
    /// What the child gets on fd 1 and 2 (`None`: the orchestrator's).
    output: ChildFds,
    /// An fd the child gets on a number of its own (its `notify_fd`).
    extra: Option<(Arc<OwnedFd>, i32)>,
}

/// One spawn carried out.
pub(crate) struct Done {
    pub service: ServiceId,
    pub result: Result<Spawned, SpawnError>,
}

struct Shared {
    jobs: Mutex<Fifo<Job>>,
    work: Condvar,
    done: Mutex<Fifo<Done>>,
    /// Counts finished spawns; watched by the loop.
    wake: OwnedFd,
    stop: AtomicBool,
}

/// Locks `mutex` even if a thread panicked while holding it (the queues stay consistent:
/// every operation on them is a single push or pop).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The spawner threads and their queues.
pub(crate) struct Spawner {
    shared: Arc<Shared>,
}

impl Spawner {
    /// Starts the threads, for up to `capacity` spawns in flight. Returns the spawner and the
    /// fd the loop polls (readable when spawns finished).
    pub(crate) fn start(capacity: usize) -> io::Result<(Spawner, OwnedFd)> {
        let wake = crate::sys::fd::eventfd()?;
        let watched = crate::sys::fd::dup_cloexec(wake.as_fd(), 0)?;
        let shared = Arc::new(Shared {
            jobs: Mutex::new(Fifo::with_capacity(capacity)),
            work: Condvar::new(),
            done: Mutex::new(Fifo::with_capacity(capacity)),
            wake,
            stop: AtomicBool::new(false),
        });
        // Without close_range (before 5.9) the threads spawn fork-style: still off the loop.
        let mut launchers: Vec<Option<Launcher>> = match Launcher::set(THREADS)? {
            Some(set) => set.into_iter().map(Some).collect(),
            None => (0..THREADS).map(|_| None).collect(),
        };
        for (index, launcher) in launchers.drain(..).enumerate() {
            let shared = Arc::clone(&shared);
            let builder = std::thread::Builder::new()
                .name(format!("holden-spawn-{index}"))
                .stack_size(THREAD_STACK_BYTES);
            crate::sys::signal::spawn_thread_blocking_signals(builder, move || {
                run(&shared, launcher)
            })?;
        }
        Ok((Spawner { shared }, watched))
    }

    /// Hands a spawn to the threads. Refused (`EAGAIN`) only if the queue is full, which
    /// the core's one spawn in flight per service rules out.
    pub(crate) fn submit(
        &self,
        service: ServiceId,
        spec: Arc<SpawnSpec>,
        output: ChildFds,
        extra: Option<(Arc<OwnedFd>, i32)>,
    ) -> Result<(), SpawnError> {
        let mut jobs = lock(&self.shared.jobs);
        if jobs.len() == jobs.capacity() {
            return Err(SpawnError::new(SpawnStage::Prepare, libc::EAGAIN));
        }
        jobs.push(Job {
            service,
            spec,
            output,
            extra,
        });
        drop(jobs);
        self.shared.work.notify_one();
        Ok(())
    }

    /// The next finished spawn.
    pub(crate) fn take(&self) -> Option<Done> {
        lock(&self.shared.done).pop()
    }

    /// Tells the threads to end once they are idle (a thread held by a stalled exec ends when
    /// it returns). They are not waited for.
    pub(crate) fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.work.notify_all();
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(shared: &Shared, mut launcher: Option<Launcher>) {
    loop {
        let job = {
            let mut jobs = lock(&shared.jobs);
            loop {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(job) = jobs.pop() {
                    break job;
                }
                jobs = shared
                    .work
                    .wait(jobs)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        };
        let output = spawn::Output {
            stdout: job.output[0].as_deref().map(AsFd::as_fd),
            stderr: job.output[1].as_deref().map(AsFd::as_fd),
            extra: job.extra.as_ref().map(|(fd, n)| (fd.as_fd(), *n)),
        };
        let result = match launcher.as_mut() {
            Some(launcher) => launcher.spawn_with(&job.spec, output),
            None => spawn::spawn_with(&job.spec, output),
        };
        drop(job.spec);
        drop(job.output);
        drop(job.extra);
        lock(&shared.done).push(Done {
            service: job.service,
            result,
        });
        let _ = crate::sys::fd::eventfd_add(shared.wake.as_fd(), 1);
    }
}
