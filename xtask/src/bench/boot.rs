//! The boot benchmark (issue 16): a seeded random dependency DAG of `type = "notify"`
//! services, each ready a fixed delay after its start, booted by holden-orchestrator; the
//! time from the orchestrator's start to the last ready against the graph's critical path
//! (the floor: a supervisor that costs nothing).
//!
//! Clocks. The total is the bench's own (CLOCK_MONOTONIC through `Instant`): from just before
//! it spawns the orchestrator to the moment it reads the orchestrator's log line saying the
//! last service is ready (`state=running ... reason=ready`, level info, on a pipe read by a
//! thread of the bench). That is the orchestrator's own view of the last ready, from its
//! first instant, with no race (a `holdenctl monitor` would have to connect after the start,
//! a status poll would add its period). It includes the log line's way out (the
//! orchestrator's log writer thread, the pipe, the reader's wake-up: tens of µs). The
//! breakdown is on the services' clock (CLOCK_MONOTONIC too, but read by the services and by
//! bench-launch, which stamps its exec of the orchestrator): each service records the top of
//! its `main` and the instant before it sent `READY=1`, so the time the orchestrator took
//! between a dependency's `READY=1` and its dependent's start is measured per edge.

use super::config;
use super::phases::{output_fits, Ctx};
use super::procfs;
use super::procs::Orchestrator;
use super::records::{self, KIND_LAUNCH, KIND_READY};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

/// The graph's seed: the same graph in every run (b"holden" and the number).
pub const SEED: u64 = 0x686f_6c64_656e_0016;
/// Each service's delay from the top of its `main` to `READY=1`.
pub const DELAY_MS: u64 = 20;
/// Each service comes `after` 0 to this many earlier ones (uniform), picked uniformly among
/// all earlier services.
pub const FAN_IN_MAX: u64 = 3;
/// One `after` edge in this many is also a `requires`.
pub const REQUIRES_ONE_IN: u64 = 4;
/// The goal of issue 16: total ≤ FACTOR × critical path + SLACK.
pub const GOAL_FACTOR: f64 = 1.1;
pub const GOAL_SLACK_NS: u64 = 50_000_000;
/// Longest wait for the last ready (a boot this slow is broken, not slow).
const BOOT_MAX: Duration = Duration::from_secs(60);
/// Longest wait for the services' records once the orchestrator said they are ready.
const RECORDS_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

/// splitmix64: small, seeded, good enough to draw a graph.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0; the modulo bias is negligible for these n).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A dependency graph: edges only from lower to higher index, so it is acyclic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dag {
    /// `after[i]`: the services `i` starts after (all lower than `i`, sorted).
    pub after: Vec<Vec<usize>>,
    /// `requires[i]`: a subset of `after[i]`.
    pub requires: Vec<Vec<usize>>,
    /// Each service's delay to `READY=1`, ms.
    pub delay_ms: Vec<u64>,
}

impl Dag {
    /// `n` services drawn from `seed`, each with the fixed delay `delay_ms`.
    pub fn random(n: usize, seed: u64, delay_ms: u64) -> Dag {
        let mut rng = Rng(seed);
        let mut after = Vec::with_capacity(n);
        let mut requires = Vec::with_capacity(n);
        for i in 0..n {
            let k = (rng.below(FAN_IN_MAX + 1) as usize).min(i);
            let mut parents: Vec<usize> = Vec::with_capacity(k);
            while parents.len() < k {
                let p = rng.below(i as u64) as usize;
                if !parents.contains(&p) {
                    parents.push(p);
                }
            }
            parents.sort_unstable();
            let req: Vec<usize> = parents
                .iter()
                .copied()
                .filter(|_| rng.below(REQUIRES_ONE_IN) == 0)
                .collect();
            after.push(parents);
            requires.push(req);
        }
        Dag {
            after,
            requires,
            delay_ms: vec![delay_ms; n],
        }
    }

    pub fn len(&self) -> usize {
        self.after.len()
    }

    pub fn edges(&self) -> usize {
        self.after.iter().map(Vec::len).sum()
    }

    pub fn requires_edges(&self) -> usize {
        self.requires.iter().map(Vec::len).sum()
    }

    pub fn roots(&self) -> usize {
        self.after.iter().filter(|a| a.is_empty()).count()
    }

    /// The critical path: the largest sum of delays along a path (ms), and the largest number
    /// of services on a path (the depth; with equal delays the same path).
    pub fn critical_path(&self) -> (u64, usize) {
        let mut finish = vec![0u64; self.len()];
        let mut depth = vec![0usize; self.len()];
        for i in 0..self.len() {
            let (f, d) = self.after[i]
                .iter()
                .fold((0, 0), |(f, d), &p| (f.max(finish[p]), d.max(depth[p])));
            finish[i] = f + self.delay_ms[i];
            depth[i] = d + 1;
        }
        (
            finish.iter().copied().max().unwrap_or(0),
            depth.iter().copied().max().unwrap_or(0),
        )
    }
}

/// One boot.
#[derive(Clone, Debug, Default)]
pub struct BootRun {
    /// Bench clock: spawn of the orchestrator → its log line of the last ready.
    pub total_ns: u64,
    /// Services' clock, from bench-launch's exec of the orchestrator: the first service's
    /// `main` (the orchestrator's own start-up and its first spawn).
    pub first_start_ns: u64,
    /// ... the last service without dependencies in its `main` (every root spawned).
    pub roots_started_ns: u64,
    /// ... the last `READY=1` sent.
    pub last_sent_ns: u64,
    /// The chain that made the last ready late, walked back from the last service to be
    /// ready through the dependency that was ready last: services on it, and
    /// `last_sent_ns` split into the orchestrator's start-up to the chain's first service,
    /// the services' own time (delay and its overshoot), and the orchestrator's reactions
    /// (a dependency's `READY=1` sent → the dependent's `main`).
    pub chain_services: usize,
    pub chain_startup_ns: u64,
    pub chain_services_ns: u64,
    pub chain_reactions_ns: u64,
    /// Every service with dependencies: its last dependency's `READY=1` sent → its `main`.
    pub reactions: Vec<u64>,
    /// The orchestrator's CPU time from its start to the last ready (all threads).
    pub cpu_ns: u64,
}

/// The boot benchmark for one graph size.
#[derive(Clone, Debug, Default)]
pub struct BootPoint {
    pub services: usize,
    pub seed: u64,
    pub delay_ms: u64,
    pub edges: usize,
    pub requires_edges: usize,
    pub roots: usize,
    pub depth: usize,
    pub critical_path_ns: u64,
    /// The services' output was inherited, not captured ([`output_fits`]).
    pub output_inherited: bool,
    pub runs: Vec<BootRun>,
}

impl BootPoint {
    /// The goal's limit: 1.1 × critical path + 50 ms.
    pub fn target_ns(&self) -> u64 {
        (self.critical_path_ns as f64 * GOAL_FACTOR) as u64 + GOAL_SLACK_NS
    }

    /// The run with the median total (the lower middle one for an even count).
    pub fn median(&self) -> Option<&BootRun> {
        let mut runs: Vec<&BootRun> = self.runs.iter().collect();
        runs.sort_by_key(|r| r.total_ns);
        runs.get(runs.len().saturating_sub(1) / 2).copied()
    }

    pub fn worst(&self) -> Option<&BootRun> {
        self.runs.iter().max_by_key(|r| r.total_ns)
    }
}

/// The graph of `services` services and its figures, without runs.
pub fn point(services: usize) -> (Dag, BootPoint) {
    let dag = Dag::random(services, SEED, DELAY_MS);
    let (cp_ms, depth) = dag.critical_path();
    let point = BootPoint {
        services,
        seed: SEED,
        delay_ms: DELAY_MS,
        edges: dag.edges(),
        requires_edges: dag.requires_edges(),
        roots: dag.roots(),
        depth,
        critical_path_ns: cp_ms * 1_000_000,
        output_inherited: !output_fits(services),
        runs: Vec::new(),
    };
    (dag, point)
}

/// The service index of a `service=bN` log line that says it became ready; `Err` with the
/// line for a failure (the boot is broken).
fn ready_of(line: &str) -> Result<Option<usize>, String> {
    let mut name = None;
    let mut state = None;
    let mut reason = None;
    for token in line.split_whitespace() {
        let token = token.trim_start_matches(|c: char| c == '<' || c.is_ascii_digit() || c == '>');
        if let Some(v) = token.strip_prefix("service=") {
            name = Some(v);
        } else if let Some(v) = token.strip_prefix("state=") {
            state = Some(v);
        } else if let Some(v) = token.strip_prefix("reason=") {
            reason = Some(v);
        }
    }
    let Some(index) = name
        .and_then(|n| n.strip_prefix('b'))
        .and_then(|n| n.parse().ok())
    else {
        return Ok(None);
    };
    match (state, reason) {
        (Some("running"), Some("ready")) => Ok(Some(index)),
        (Some("failed" | "backoff"), _) => Err(format!("a boot service failed: {line}")),
        _ => Ok(None),
    }
}

/// Boots `dag` once under holden-orchestrator and stops it.
pub fn run(ctx: &mut Ctx, dag: &Dag, point: &BootPoint, round: usize) -> Result<BootRun, String> {
    let n = dag.len();
    let label = format!("boot N={n} (run {round})");
    let name = format!("boot-{n}-{round}");
    let recs = ctx.dir.join(&format!("{name}.rec"));
    let text = config::boot(
        &ctx.dir.0,
        &ctx.bins.boot_service,
        &recs,
        dag,
        point.output_inherited,
    );
    let (mut orch, started, lines) = Orchestrator::start_launched(
        &ctx.bins.orchestrator,
        &ctx.bins.launch,
        &recs,
        &ctx.dir,
        &name,
        &text,
    )?;
    let mut ready_at: Vec<Option<Instant>> = vec![None; n];
    let mut ready = 0;
    while ready < n {
        match lines.recv_timeout(POLL) {
            Ok(line) => {
                if let Some(i) = ready_of(&line.text)? {
                    let slot = ready_at
                        .get_mut(i)
                        .ok_or_else(|| format!("{label}: unknown service in {}", line.text))?;
                    if slot.replace(line.at).is_none() {
                        ready += 1;
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                orch.check()?;
                return Err(format!("{label}: the orchestrator closed its stderr"));
            }
        }
        use super::procs::Supervisor;
        orch.check()?;
        if started.elapsed() > BOOT_MAX {
            return Err(format!(
                "{label}: {ready} of {n} services ready after {} s; log: {}",
                BOOT_MAX.as_secs(),
                super::procs::log_tail(&orch.log)
            ));
        }
        ctx.progress
            .update(&label, &format!("{ready}/{n} services ready"));
    }
    let last = ready_at.iter().flatten().max().copied().unwrap_or(started);
    let total_ns = (last - started).as_nanos() as u64;
    use super::procs::Supervisor;
    let cpu_ns = procfs::cpu_ns(orch.pid()).unwrap_or(0);
    // Each service appends its record just after sending READY=1: wait for the last ones.
    let wait_end = Instant::now() + RECORDS_WAIT;
    while records::count(&recs) < n as u64 + 1 && Instant::now() < wait_end {
        std::thread::sleep(Duration::from_millis(5));
    }
    ctx.progress.update(&label, "stopping");
    orch.stop()?;
    let all = records::read(&recs)?;
    let _ = std::fs::remove_file(&recs);
    breakdown(dag, &all, total_ns, cpu_ns).map_err(|e| format!("{label}: {e}"))
}

/// The services' records of one boot, read against the graph.
fn breakdown(
    dag: &Dag,
    all: &[records::Record],
    total_ns: u64,
    cpu_ns: u64,
) -> Result<BootRun, String> {
    let n = dag.len();
    let launch = all
        .iter()
        .find(|r| r.kind == KIND_LAUNCH)
        .ok_or("no launch record (bench-launch)")?
        .start_ns;
    let mut times: Vec<Option<(u64, u64)>> = vec![None; n];
    for r in all.iter().filter(|r| r.kind == KIND_READY) {
        let slot = times
            .get_mut(r.service as usize)
            .ok_or_else(|| format!("a record of unknown service {}", r.service))?;
        if slot.replace((r.start_ns, r.end_ns)).is_some() {
            return Err(format!("service b{} started twice", r.service));
        }
    }
    let times: Vec<(u64, u64)> = times
        .iter()
        .enumerate()
        .map(|(i, t)| t.ok_or_else(|| format!("service b{i} left no record")))
        .collect::<Result<_, _>>()?;
    let since = |t: u64| t.saturating_sub(launch);
    let mut reactions = Vec::new();
    for (i, parents) in dag.after.iter().enumerate() {
        let Some(ready) = parents.iter().map(|&p| times[p].1).max() else {
            continue;
        };
        if times[i].0 < ready {
            return Err(format!(
                "service b{i} started before its dependencies were ready"
            ));
        }
        reactions.push(times[i].0 - ready);
    }
    let roots = (0..n).filter(|&i| dag.after[i].is_empty());
    let roots_started = roots.map(|i| times[i].0).max().unwrap_or(launch);
    let first_start = times.iter().map(|t| t.0).min().unwrap_or(launch);
    let (last, &(_, last_sent)) = times
        .iter()
        .enumerate()
        .max_by_key(|(_, t)| t.1)
        .ok_or("no service")?;
    // Back from the last ready through the dependency that was ready last.
    let mut at = last;
    let mut chain = (1, 0u64, 0u64);
    loop {
        chain.1 += times[at].1 - times[at].0;
        let Some(&p) = dag.after[at].iter().max_by_key(|&&p| times[p].1) else {
            break;
        };
        chain.2 += times[at].0 - times[p].1;
        chain.0 += 1;
        at = p;
    }
    Ok(BootRun {
        total_ns,
        first_start_ns: since(first_start),
        roots_started_ns: since(roots_started),
        last_sent_ns: since(last_sent),
        chain_services: chain.0,
        chain_startup_ns: since(times[at].0),
        chain_services_ns: chain.1,
        chain_reactions_ns: chain.2,
        reactions,
        cpu_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_graph_is_seeded_acyclic_and_within_the_fan_in() {
        let a = Dag::random(256, SEED, 20);
        assert_eq!(a, Dag::random(256, SEED, 20));
        assert_ne!(a, Dag::random(256, SEED + 1, 20));
        for (i, parents) in a.after.iter().enumerate() {
            assert!(parents.len() as u64 <= FAN_IN_MAX);
            assert!(parents.windows(2).all(|w| w[0] < w[1]), "sorted, distinct");
            assert!(parents.iter().all(|&p| p < i), "edges go up only");
            assert!(a.requires[i].iter().all(|r| parents.contains(r)));
        }
        assert!(a.after[0].is_empty());
        let (cp, depth) = a.critical_path();
        assert_eq!(cp, depth as u64 * 20);
        assert!((5..=40).contains(&depth), "depth {depth}");
    }

    #[test]
    fn critical_path_takes_the_longest_sum() {
        // 0 → 2, 1 → 2, 2 → 3; 1 is slow.
        let dag = Dag {
            after: vec![vec![], vec![], vec![0, 1], vec![2], vec![]],
            requires: vec![vec![]; 5],
            delay_ms: vec![10, 50, 10, 10, 60],
        };
        assert_eq!(dag.critical_path(), (70, 3));
        assert_eq!(dag.roots(), 3);
        assert_eq!(dag.edges(), 3);
    }

    #[test]
    fn ready_lines_and_failures() {
        let ok = "<6>service=b17 partition=local state=running from=starting pid=5 restarts=0 reason=ready";
        assert_eq!(ready_of(ok), Ok(Some(17)));
        let spawned = "<6>service=b17 partition=local state=starting from=stopped restarts=0 reason=spawned spawned_pid=5";
        assert_eq!(ready_of(spawned), Ok(None));
        let failed = "<3>service=b3 partition=local state=failed from=starting restarts=0 reason=start-timeout";
        assert!(ready_of(failed).is_err());
        assert_eq!(ready_of("<5>event=started services=256"), Ok(None));
    }

    #[test]
    fn the_breakdown_adds_up() {
        use super::records::{Record, LAUNCH_SERVICE};
        // 0 and 1 roots, 2 after both; launch at 1000.
        let dag = Dag {
            after: vec![vec![], vec![], vec![0, 1]],
            requires: vec![vec![]; 3],
            delay_ms: vec![20; 3],
        };
        let rec = |service, kind, start_ns, end_ns| Record {
            service,
            kind,
            start_ns,
            end_ns,
        };
        let all = [
            rec(LAUNCH_SERVICE, KIND_LAUNCH, 1000, 1000),
            rec(1, KIND_READY, 1300, 1500),
            rec(0, KIND_READY, 1200, 1400),
            rec(2, KIND_READY, 1550, 1800),
        ];
        let b = breakdown(&dag, &all, 900, 5).unwrap();
        assert_eq!(b.first_start_ns, 200);
        assert_eq!(b.roots_started_ns, 300);
        assert_eq!(b.last_sent_ns, 800);
        assert_eq!(b.reactions, vec![50]);
        assert_eq!(b.chain_services, 2);
        assert_eq!(b.chain_startup_ns, 300);
        assert_eq!(b.chain_services_ns, 250 + 200);
        assert_eq!(b.chain_reactions_ns, 50);
        assert_eq!(
            b.chain_startup_ns + b.chain_services_ns + b.chain_reactions_ns,
            b.last_sent_ns
        );
        // A missing record is an error.
        assert!(breakdown(&dag, &all[..3], 900, 5).is_err());
    }
}
