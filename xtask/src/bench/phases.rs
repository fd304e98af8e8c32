//! The measurements. Each phase starts its own processes in the run directory, measures from
//! outside (probe records, /proc), and stops them by pid before it returns.

use super::config;
use super::procfs::{self, Sample};
use super::procs::{Agent, FloorScale, Orchestrator, RunDir, Supervisor};
use super::progress::Progress;
use super::records::{self, KIND_EXIT};
use super::stats::{self, Stall, Summary};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// First restarts of a latency run left out of the figures (cold caches, start-up).
pub const WARMUP_RESTARTS: usize = 10;
/// A run whose record count has not moved for this long is stuck: broken, not slow.
const STALL_MAX: Duration = Duration::from_secs(20);
/// Poll interval of the record file.
const POLL: Duration = Duration::from_millis(20);
/// Services kept crashing in the "idle" scale variant (the others stay up).
pub const IDLE_VARIANT_CRASHING: usize = 4;
/// Restart delay of holden v0.2's loop, per event.
pub const V02_SLEEP_MS: u64 = 100;
/// Slot counts tried below a refused one.
const SLOTS_PROBE_STEPS: usize = 32;
/// Time an orchestrator must survive to count as started.
const SLOTS_PROBE_WAIT: Duration = Duration::from_millis(300);
/// Slots of the single-service latency runs (the configuration default).
const LATENCY_SLOTS: usize = 64;

/// Paths of the programs under test (static musl builds for this machine's architecture).
pub struct Binaries {
    pub orchestrator: PathBuf,
    pub agent: PathBuf,
    pub holdenctl: PathBuf,
    pub probe: PathBuf,
    pub floor: PathBuf,
    pub floor_scale: PathBuf,
    /// The boot benchmark's `type = "notify"` service, and the wrapper that stamps the
    /// orchestrator's exec on the services' clock.
    pub boot_service: PathBuf,
    pub launch: PathBuf,
}

/// How much to measure.
pub struct Plan {
    pub latency_restarts: u64,
    /// Latency and scale measurements are split in this many rounds, floor and holden
    /// alternating, so that a burst of foreign load hits both alike.
    pub rounds: u64,
    /// Open fds held by the fd-table analysis loops: as many pidfds as the largest N holds
    /// (512 in a quick run, under any default fd limit).
    pub ballast_fds: u64,
    pub v02_restarts: u64,
    pub scale_ns: Vec<usize>,
    pub scale_settle: Duration,
    pub scale_window: Duration,
    pub scale_rounds: u64,
    pub scale_start_max: Duration,
    pub memory_slots: Vec<usize>,
    pub memory_restarts: u64,
    pub growth_early: u64,
    /// Services of the re-exec runs (one crash-looping, the others up), and re-execs per run.
    pub reexec_services: Vec<usize>,
    pub reexecs: u32,
    /// Boot benchmark: graph sizes, each with the number of boots.
    pub boot: Vec<(usize, usize)>,
    pub growth_late: u64,
    pub phase_time_max: Duration,
    pub growth_time_max: Duration,
}

/// Shared by every phase.
pub struct Ctx {
    pub bins: Binaries,
    pub dir: RunDir,
    pub plan: Plan,
    pub progress: Progress,
}

/// A restart loop of one service.
#[derive(Clone, Debug, Default)]
pub struct LoopResult {
    pub latency: Summary,
    pub restarts_per_s: f64,
    /// CPU time of the supervising process (the loop itself, or the orchestrator) per restart.
    pub cpu_ns_per_restart: f64,
    /// holden-agent's CPU time per restart (QM only).
    pub agent_cpu_ns_per_restart: Option<f64>,
    pub orchestrator: Option<Sample>,
    pub agent: Option<Sample>,
    /// Raw material, so that rounds can be pooled: every latency, and the totals behind the
    /// rates.
    pub samples: Vec<u64>,
    pub counted: u64,
    pub seconds: f64,
    pub cpu_ns: u64,
    pub agent_cpu_ns: Option<u64>,
}

impl LoopResult {
    /// Figures from raw material.
    #[allow(clippy::too_many_arguments)]
    fn from_raw(
        mut samples: Vec<u64>,
        counted: u64,
        seconds: f64,
        cpu_ns: u64,
        agent_cpu_ns: Option<u64>,
        orchestrator: Option<Sample>,
        agent: Option<Sample>,
    ) -> LoopResult {
        let latency = Summary::of(&mut samples);
        LoopResult {
            latency,
            restarts_per_s: counted as f64 / seconds.max(1e-9),
            cpu_ns_per_restart: cpu_ns as f64 / counted.max(1) as f64,
            agent_cpu_ns_per_restart: agent_cpu_ns.map(|a| a as f64 / counted.max(1) as f64),
            orchestrator,
            agent,
            samples,
            counted,
            seconds,
            cpu_ns,
            agent_cpu_ns,
        }
    }

    /// Two rounds of the same measurement as one.
    pub fn merge(self, other: LoopResult) -> LoopResult {
        let mut samples = self.samples;
        samples.extend(other.samples);
        LoopResult::from_raw(
            samples,
            self.counted + other.counted,
            self.seconds + other.seconds,
            self.cpu_ns + other.cpu_ns,
            self.agent_cpu_ns
                .zip(other.agent_cpu_ns)
                .map(|(a, b)| a + b),
            other.orchestrator.or(self.orchestrator),
            other.agent.or(self.agent),
        )
    }
}

/// One point of the scale measurement.
#[derive(Clone, Debug, Default)]
pub struct ScalePoint {
    pub n: usize,
    /// Services that crash-loop (all of them, or [`IDLE_VARIANT_CRASHING`]).
    pub crashing: usize,
    pub restarts_per_s: f64,
    pub cpu_ns_per_restart: f64,
    /// Who supervised it: the floor loop (bench-floor-scale) or holden-orchestrator, under the
    /// default policy or as the shipped unit runs it.
    pub by: Who,
    /// The services' stdout and stderr were inherited, not captured: this machine's fd limit
    /// cannot hold N services' output pipes ([`output_fits`]).
    pub output_inherited: bool,
    /// Restart latency of the crashing services during the window.
    pub latency: Summary,
    /// The supervising process at the end of the window.
    pub orchestrator: Sample,
    /// holden's event loop: how long it spent on each completion during the window
    /// (`holdenctl stats`; `None` for the floor loop).
    pub stall: Option<Stall>,
    /// Raw material for pooling rounds.
    pub samples: Vec<u64>,
    pub counted: u64,
    pub seconds: f64,
    pub cpu_ns: u64,
}

impl ScalePoint {
    /// Two rounds of the same point as one.
    pub fn merge(mut self, other: ScalePoint) -> ScalePoint {
        self.samples.extend(other.samples);
        self.counted += other.counted;
        self.seconds += other.seconds;
        self.cpu_ns += other.cpu_ns;
        self.orchestrator = other.orchestrator;
        self.stall = match (self.stall.take(), other.stall) {
            (Some(a), Some(b)) => Some(a.merge(&b)),
            (a, b) => a.or(b),
        };
        self.restarts_per_s = self.counted as f64 / self.seconds.max(1e-9);
        self.cpu_ns_per_restart = self.cpu_ns as f64 / self.counted.max(1) as f64;
        self.latency = Summary::of(&mut self.samples);
        self
    }
}

/// Orchestrator memory with a number of slots.
#[derive(Clone, Debug, Default)]
pub struct SlotsPoint {
    pub slots: usize,
    pub orchestrator: Sample,
}

/// Live re-execs of an orchestrator with `services` services, one of them restarting at once.
#[derive(Clone, Debug, Default)]
pub struct ReexecPoint {
    pub services: usize,
    /// The pause of each re-exec (`holdenctl reexec`: the old instance leaving its loop to the
    /// new one entering its loop), ns.
    pub pauses: Summary,
    /// The crash-looping service's restart latencies over the whole run (re-execs included).
    pub restarts: Summary,
    /// Its restarts during the run.
    pub restarted: u64,
}

/// Memory and fds early and late in a long run (one local and one QM service).
#[derive(Clone, Debug, Default)]
pub struct Growth {
    pub early_restarts: u64,
    pub late_restarts: u64,
    pub seconds: f64,
    pub orchestrator: (Sample, Sample),
    pub agent: (Sample, Sample),
}

/// The floor (or, with a sleep, holden v0.2's pattern): bench-floor spawning the probe.
pub fn floor(
    ctx: &mut Ctx,
    label: &str,
    count: u64,
    sleep_ms: u64,
    extra: &[&str],
) -> Result<LoopResult, String> {
    let recs = ctx.dir.join(&format!("{label}.rec"));
    let target = count + WARMUP_RESTARTS as u64 + 1;
    let seconds_max = ctx.plan.phase_time_max.as_secs().max(1);
    let mut child = Command::new(&ctx.bins.floor)
        .arg("--probe")
        .arg(&ctx.bins.probe)
        .arg("--records")
        .arg(&recs)
        .args(["--count", &target.to_string()])
        .args(["--sleep-ms", &sleep_ms.to_string()])
        .args(["--seconds-max", &seconds_max.to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", ctx.bins.floor.display()))?;
    let hard_deadline = Instant::now() + ctx.plan.phase_time_max + Duration::from_secs(30);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() > hard_deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{label}: bench-floor did not finish; killed"));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("{label}: wait: {e}")),
        }
        let n = records::count(&recs);
        ctx.progress
            .update(label, &format!("{n}/{target} restarts"));
        std::thread::sleep(POLL);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{label}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{label}: bench-floor failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Result<u64, String> {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{label}: bench-floor printed no {name}: {text:?}"))
    };
    let (spawned, cpu_ns, wall_ns) = (field("spawned")?, field("cpu_ns")?, field("wall_ns")?);
    let all = records::read(&recs)?;
    if all.len() as u64 != spawned {
        return Err(format!(
            "{label}: {spawned} spawned but {} probe records",
            all.len()
        ));
    }
    let lat = records::latencies(&all, WARMUP_RESTARTS..all.len())?;
    let _ = std::fs::remove_file(&recs);
    Ok(LoopResult::from_raw(
        lat,
        spawned,
        wall_ns as f64 / 1e9,
        cpu_ns,
        None,
        None,
        None,
    ))
}

/// Waits until the records file holds `target` records. Returns the count, which is short of
/// `target` only when `deadline` passed. An error when a process died or nothing moves.
fn wait_records(
    progress: &mut Progress,
    label: &str,
    recs: &Path,
    target: u64,
    deadline: Instant,
    sup: &mut dyn Supervisor,
    agent: Option<&Agent>,
) -> Result<u64, String> {
    let mut last = (records::count(recs), Instant::now());
    loop {
        let n = records::count(recs);
        if n >= target || Instant::now() > deadline {
            return Ok(n);
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > STALL_MAX {
            sup.check()?;
            return Err(format!(
                "{label}: no restart for {} s (stuck at {n} records); log: {}",
                STALL_MAX.as_secs(),
                super::procs::log_tail(sup.log())
            ));
        }
        sup.check()?;
        if let Some(a) = agent {
            a.check()?;
        }
        progress.update(label, &format!("{n}/{target} restarts"));
        std::thread::sleep(POLL);
    }
}

fn sample_of(pid: u32, what: &str) -> Result<Sample, String> {
    procfs::sample(pid).ok_or_else(|| format!("{what} (pid {pid}) is gone"))
}

/// One service restarting at once under holden-orchestrator, local or through the agent.
pub fn holden(ctx: &mut Ctx, label: &str, qm: bool, count: u64) -> Result<LoopResult, String> {
    let recs = ctx.dir.join(&format!("{label}.rec"));
    let agent = if qm {
        Some(Agent::start(&ctx.bins.agent, &ctx.dir)?)
    } else {
        None
    };
    let text = config::orchestrator(
        &ctx.dir.0,
        LATENCY_SLOTS,
        &ctx.bins.probe,
        &recs,
        &config::services(1, 1, qm),
    );
    let mut orch = Orchestrator::start(&ctx.bins.orchestrator, &ctx.dir, label, &text)?;
    let deadline = Instant::now() + ctx.plan.phase_time_max;
    let target = count + WARMUP_RESTARTS as u64 + 1;
    let first = WARMUP_RESTARTS as u64 + 1;
    wait_records(
        &mut ctx.progress,
        label,
        &recs,
        first,
        deadline,
        &mut orch,
        agent.as_ref(),
    )?;
    let (c0, t0) = (records::count(&recs), Instant::now());
    let o0 = sample_of(orch.pid(), "holden-orchestrator")?;
    let a0 = agent
        .as_ref()
        .map(|a| sample_of(a.pid(), "holden-agent"))
        .transpose()?;
    wait_records(
        &mut ctx.progress,
        label,
        &recs,
        target,
        deadline,
        &mut orch,
        agent.as_ref(),
    )?;
    let (c1, t1) = (records::count(&recs), Instant::now());
    let o1 = sample_of(orch.pid(), "holden-orchestrator")?;
    let a1 = agent
        .as_ref()
        .map(|a| sample_of(a.pid(), "holden-agent"))
        .transpose()?;
    orch.stop()?;
    drop(agent);
    let all = records::read(&recs)?;
    let lat = records::latencies(&all, WARMUP_RESTARTS..all.len())?;
    let _ = std::fs::remove_file(&recs);
    Ok(LoopResult::from_raw(
        lat,
        c1 - c0,
        (t1 - t0).as_secs_f64(),
        o1.cpu_ns.saturating_sub(o0.cpu_ns),
        a0.zip(a1)
            .map(|(a0, a1)| a1.cpu_ns.saturating_sub(a0.cpu_ns)),
        Some(o1),
        a1,
    ))
}

/// Open files an orchestrator needs per local service with captured output: its pidfd (and
/// one more during a restart) and both ends of two pipes.
const FDS_PER_CAPTURED_SERVICE: u64 = 6;
/// Open files an orchestrator needs besides its services.
const FDS_FIXED: u64 = 64;

/// Whether `n` services with captured output fit this process's hard fd limit (which the
/// orchestrator raises its soft limit to).
pub fn output_fits(n: usize) -> bool {
    procfs::nofile_hard().is_none_or(|hard| n as u64 * FDS_PER_CAPTURED_SERVICE + FDS_FIXED <= hard)
}

/// Who supervises a scale point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Who {
    /// The bare floor loop (bench-floor-scale).
    Floor,
    /// holden-orchestrator under the default policy.
    #[default]
    Holden,
    /// holden-orchestrator under SCHED_FIFO 1 with reset-on-fork (the shipped unit's policy).
    HoldenRealtime,
}

impl Who {
    pub fn name(self) -> &'static str {
        match self {
            Who::Floor => "floor",
            Who::Holden => "holden",
            Who::HoldenRealtime => "holden-fifo",
        }
    }
}

/// N local services, `crashing` of which restart at once while the others stay up, under
/// holden-orchestrator or under the bare floor loop; figures over a fixed window once every
/// service has started.
pub fn scale(ctx: &mut Ctx, n: usize, crashing: usize, by: Who) -> Result<ScalePoint, String> {
    let floor = by == Who::Floor;
    let who = by.name();
    let label = format!("scale {who} N={n} crashing={crashing}");
    let name = format!("scale-{who}-{n}-{crashing}");
    let recs = ctx.dir.join(&format!("{name}.rec"));
    let mut sup: Box<dyn Stoppable> = if floor {
        Box::new(FloorScale::start(
            &ctx.bins.floor_scale,
            &ctx.dir,
            &name,
            &ctx.bins.probe,
            &recs,
            n,
            crashing,
        )?)
    } else {
        let mut services = config::services(n, crashing, false);
        for s in services.iter_mut() {
            s.inherit_output = !output_fits(n);
        }
        let text = config::orchestrator(&ctx.dir.0, n, &ctx.bins.probe, &recs, &services);
        Box::new(Orchestrator::start_as(
            &ctx.bins.orchestrator,
            &ctx.dir,
            &name,
            &text,
            by == Who::HoldenRealtime,
        )?)
    };
    // Every service has started once.
    let deadline = Instant::now() + ctx.plan.scale_start_max;
    loop {
        wait_records(
            &mut ctx.progress,
            &label,
            &recs,
            n as u64,
            deadline,
            sup.as_supervisor(),
            None,
        )?;
        let all = records::read(&recs)?;
        let mut seen = vec![false; n];
        for r in &all {
            if let Some(s) = seen.get_mut(r.service as usize) {
                *s = true;
            }
        }
        let started = seen.iter().filter(|&&s| s).count();
        if started == n {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{label}: only {started} of {n} services started within {} s",
                ctx.plan.scale_start_max.as_secs()
            ));
        }
        ctx.progress
            .update(&label, &format!("starting: {started}/{n} services up"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let settle = ctx.plan.scale_settle;
    sleep_checked(ctx, &label, settle, sup.as_supervisor(), "settling")?;
    let stall0 = (!floor).then(|| stall_snapshot(ctx)).transpose()?;
    let (c0, t0) = (records::count(&recs), Instant::now());
    let o0 = sample_of(sup.as_supervisor().pid(), who)?;
    let window = ctx.plan.scale_window;
    sleep_checked(ctx, &label, window, sup.as_supervisor(), "measuring")?;
    let (c1, t1) = (records::count(&recs), Instant::now());
    let o1 = sample_of(sup.as_supervisor().pid(), who)?;
    let stall = match stall0 {
        Some(s0) => Some(stall_snapshot(ctx)?.since(&s0)),
        None => None,
    };
    ctx.progress.update(&label, "stopping");
    sup.stop_boxed()?;
    let all = records::read(&recs)?;
    let window = c0 as usize..(c1 as usize).min(all.len());
    let restarts = all[window.clone()]
        .iter()
        .filter(|r| r.kind == KIND_EXIT)
        .count() as u64;
    let mut lat = records::latencies(&all, window)?;
    let seconds = (t1 - t0).as_secs_f64();
    let cpu_ns = o1.cpu_ns.saturating_sub(o0.cpu_ns);
    let _ = std::fs::remove_file(&recs);
    Ok(ScalePoint {
        n,
        crashing,
        by,
        output_inherited: !floor && !output_fits(n),
        restarts_per_s: restarts as f64 / seconds,
        cpu_ns_per_restart: cpu_ns as f64 / restarts.max(1) as f64,
        latency: Summary::of(&mut lat),
        orchestrator: o1,
        stall,
        samples: lat,
        counted: restarts,
        seconds,
        cpu_ns,
    })
}

/// The orchestrator's stall histogram so far (`holdenctl stats --json` on the run's control
/// socket).
fn stall_snapshot(ctx: &Ctx) -> Result<Stall, String> {
    let out = Command::new(&ctx.bins.holdenctl)
        .arg("--socket")
        .arg(ctx.dir.join("control.sock"))
        .args(["stats", "--json"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", ctx.bins.holdenctl.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "holdenctl stats failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Stall::parse(&text).ok_or_else(|| format!("holdenctl stats printed no histogram: {text}"))
}

/// A supervisor that can be stopped through a box.
trait Stoppable {
    fn as_supervisor(&mut self) -> &mut dyn Supervisor;
    fn stop_boxed(self: Box<Self>) -> Result<(), String>;
}

impl Stoppable for Orchestrator {
    fn as_supervisor(&mut self) -> &mut dyn Supervisor {
        self
    }
    fn stop_boxed(self: Box<Self>) -> Result<(), String> {
        (*self).stop()
    }
}

impl Stoppable for FloorScale {
    fn as_supervisor(&mut self) -> &mut dyn Supervisor {
        self
    }
    fn stop_boxed(self: Box<Self>) -> Result<(), String> {
        (*self).stop()
    }
}

/// The largest slot count up to `slots` with which holden-orchestrator starts (one idle
/// service), and why `slots` itself was refused, if it was. Tries downwards, at most
/// [`SLOTS_PROBE_STEPS`] times.
pub fn startable_slots(ctx: &mut Ctx, slots: usize) -> Result<(usize, Option<String>), String> {
    let mut refusal = None;
    for k in (slots.saturating_sub(SLOTS_PROBE_STEPS)..=slots)
        .rev()
        .filter(|&k| k > 0)
    {
        let recs = ctx.dir.join("preflight.rec");
        let text = config::orchestrator(
            &ctx.dir.0,
            k,
            &ctx.bins.probe,
            &recs,
            &config::services(1, 0, false),
        );
        let mut orch = Orchestrator::start(&ctx.bins.orchestrator, &ctx.dir, "preflight", &text)?;
        ctx.progress.update(
            "preflight",
            &format!("does the orchestrator start with {k} slots?"),
        );
        let end = Instant::now() + SLOTS_PROBE_WAIT;
        let mut result = Ok(());
        while Instant::now() < end && result.is_ok() {
            result = orch.check();
            std::thread::sleep(POLL);
        }
        match result {
            Ok(()) => {
                orch.stop()?;
                let _ = std::fs::remove_file(&recs);
                return Ok((k, refusal));
            }
            Err(e) => {
                refusal.get_or_insert(e.replace('\n', " "));
            }
        }
    }
    Err(format!(
        "holden-orchestrator starts with none of {}..={slots} slots: {}",
        slots.saturating_sub(SLOTS_PROBE_STEPS).max(1),
        refusal.unwrap_or_default()
    ))
}

/// Sleeps `time` in small steps, checking that the orchestrator lives.
fn sleep_checked(
    ctx: &mut Ctx,
    label: &str,
    time: Duration,
    sup: &mut dyn Supervisor,
    what: &str,
) -> Result<(), String> {
    let end = Instant::now() + time;
    while Instant::now() < end {
        sup.check()?;
        let left = end.saturating_duration_since(Instant::now());
        ctx.progress
            .update(label, &format!("{what}, {:.1} s left", left.as_secs_f64()));
        std::thread::sleep(POLL.min(left));
    }
    Ok(())
}

/// Orchestrator memory with `slots` slots and one service restarting at once.
pub fn slots(ctx: &mut Ctx, slots: usize) -> Result<SlotsPoint, String> {
    let label = format!("memory slots={slots}");
    let recs = ctx.dir.join(&format!("slots-{slots}.rec"));
    let text = config::orchestrator(
        &ctx.dir.0,
        slots,
        &ctx.bins.probe,
        &recs,
        &config::services(1, 1, false),
    );
    let mut orch = Orchestrator::start(
        &ctx.bins.orchestrator,
        &ctx.dir,
        &format!("slots-{slots}"),
        &text,
    )?;
    let deadline = Instant::now() + ctx.plan.phase_time_max;
    let target = ctx.plan.memory_restarts;
    wait_records(
        &mut ctx.progress,
        &label,
        &recs,
        target,
        deadline,
        &mut orch,
        None,
    )?;
    let sample = sample_of(orch.pid(), "holden-orchestrator")?;
    orch.stop()?;
    Ok(SlotsPoint {
        slots,
        orchestrator: sample,
    })
}

/// One local and one QM service restarting at once: memory and fds of both processes after
/// `growth_early` and after `growth_late` restarts.
pub fn growth(ctx: &mut Ctx) -> Result<Growth, String> {
    let label = "memory growth";
    let recs = ctx.dir.join("growth.rec");
    let agent = Agent::start(&ctx.bins.agent, &ctx.dir)?;
    let mut services = config::services(2, 2, false);
    services[1].qm = true;
    let text = config::orchestrator(&ctx.dir.0, LATENCY_SLOTS, &ctx.bins.probe, &recs, &services);
    let mut orch = Orchestrator::start(&ctx.bins.orchestrator, &ctx.dir, "growth", &text)?;
    let early = ctx.plan.growth_early;
    let late = ctx.plan.growth_late;
    let deadline = Instant::now() + ctx.plan.growth_time_max;
    let c0 = wait_records(
        &mut ctx.progress,
        label,
        &recs,
        early,
        deadline,
        &mut orch,
        Some(&agent),
    )?;
    let t0 = Instant::now();
    let o0 = sample_of(orch.pid(), "holden-orchestrator")?;
    let a0 = sample_of(agent.pid(), "holden-agent")?;
    let c1 = wait_records(
        &mut ctx.progress,
        label,
        &recs,
        late,
        deadline,
        &mut orch,
        Some(&agent),
    )?;
    let seconds = t0.elapsed().as_secs_f64();
    let o1 = sample_of(orch.pid(), "holden-orchestrator")?;
    let a1 = sample_of(agent.pid(), "holden-agent")?;
    orch.stop()?;
    drop(agent);
    // The records are only counted here; the latency runs check them.
    let _ = std::fs::remove_file(&recs);
    Ok(Growth {
        early_restarts: c0,
        late_restarts: c1,
        seconds,
        orchestrator: (o0, o1),
        agent: (a0, a1),
    })
}

/// One line for the progress log.
pub fn loop_line(r: &LoopResult) -> String {
    format!(
        "{} restarts, p50 {} µs, p99 {} µs, max {} µs, {:.0} restarts/s",
        r.latency.count,
        stats::us(r.latency.p50_ns),
        stats::us(r.latency.p99_ns),
        stats::us(r.latency.max_ns),
        r.restarts_per_s
    )
}

/// `services` services, the first restarting at once and the others up; after a warm-up,
/// `reexecs` live re-execs (`holdenctl reexec`, 100 ms apart). The pause of each is what the
/// new instance reports; the crash-looping service's restart latencies show what the pauses
/// cost a restart that fell due in one.
pub fn reexec(ctx: &mut Ctx, services: usize) -> Result<ReexecPoint, String> {
    let label = format!("re-exec services={services}");
    let recs = ctx.dir.join(&format!("reexec-{services}.rec"));
    let text = config::orchestrator(
        &ctx.dir.0,
        services,
        &ctx.bins.probe,
        &recs,
        &config::services(services, 1, false),
    );
    let name = format!("reexec-{services}");
    let mut orch = Orchestrator::start(&ctx.bins.orchestrator, &ctx.dir, &name, &text)?;
    let deadline = Instant::now() + ctx.plan.phase_time_max;
    let warm = records::count(&recs) + services as u64 + 200;
    wait_records(
        &mut ctx.progress,
        &label,
        &recs,
        warm,
        deadline,
        &mut orch,
        None,
    )?;
    let first = records::count(&recs) as usize;
    let mut pauses = Vec::new();
    for k in 1..=ctx.plan.reexecs {
        ctx.progress
            .update(&label, &format!("re-exec {k}/{}", ctx.plan.reexecs));
        let out = Command::new(&ctx.bins.holdenctl)
            .arg("--socket")
            .arg(ctx.dir.join("control.sock"))
            .arg("reexec")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", ctx.bins.holdenctl.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            return Err(format!(
                "holdenctl reexec failed ({}): {}{}",
                out.status,
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        pauses.push(parse_reexec_pause(&text).ok_or_else(|| format!("holdenctl reexec: {text}"))?);
        orch.check()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    let all = records::read(&recs)?;
    let last = all.len();
    orch.stop()?;
    let mut latencies = records::latencies(&all, first..last)?;
    Ok(ReexecPoint {
        services,
        pauses: Summary::of(&mut pauses),
        restarted: latencies.len() as u64,
        restarts: Summary::of(&mut latencies),
    })
}

/// The pause in ns from `re-executed in 4.349 ms (...)`.
fn parse_reexec_pause(text: &str) -> Option<u64> {
    let ms = text.strip_prefix("re-executed in ")?.split(' ').next()?;
    let (whole, frac) = ms.split_once('.')?;
    let us = whole.parse::<u64>().ok()? * 1_000 + frac.parse::<u64>().ok()?;
    Some(us * 1_000)
}

#[cfg(test)]
mod reexec_tests {
    #[test]
    fn parses_the_pause() {
        assert_eq!(
            super::parse_reexec_pause("re-executed in 4.349 ms (re-exec 1 of this orchestrator)"),
            Some(4_349_000)
        );
        assert_eq!(super::parse_reexec_pause("refused"), None);
    }
}
