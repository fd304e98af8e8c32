//! The Markdown report: machine, goals (met or missed, by how much), tables.

use super::machine::Machine;
use super::phases::{
    Growth, LoopResult, ReexecPoint, ScalePoint, SlotsPoint, Who, IDLE_VARIANT_CRASHING,
    V02_SLEEP_MS,
};
use super::procfs::Sample;
use super::stats::{ms, ratio, us};
use std::fmt::Write;

const KIB_PER_MIB: u64 = 1024;
/// Goals of issue 13 (latency against the posix_spawn floor, scale, loop stall) and of
/// issue 8 (memory, sizes).
const LOCAL_P50_FACTOR_MAX: f64 = 1.0;
const LOCAL_P99_FACTOR_MAX: f64 = 1.2;
const QM_P50_FACTOR_MAX: f64 = 1.2;
const SCALE_RATE_SHARE_MIN: f64 = 0.9;
const WATCHED_P99_FACTOR_MAX: f64 = 1.5;
const COST_GROWTH_FACTOR_MAX: f64 = 1.2;
/// The loop-stall goal: p99.9 under this, with this many services crash-looping.
const STALL_P999_NS_MAX: u64 = 100_000;
pub const STALL_GOAL_N: usize = 64;
const ORCH_RSS_KIB_MAX: u64 = 4 * KIB_PER_MIB;
const ORCH_RSS_GOAL_SLOTS: usize = 1024;
const AGENT_RSS_KIB_MAX: u64 = 2 * KIB_PER_MIB;
const BINARY_BYTES_MAX: u64 = 2 * 1024 * 1024;

/// One static binary.
#[derive(Clone, Debug)]
pub struct SizeRow {
    pub arch: String,
    pub binary: String,
    pub bytes: u64,
    pub is_static: bool,
}

/// Everything a run measured; a phase that failed leaves its field empty and an error.
#[derive(Default)]
pub struct Results {
    pub command: String,
    pub machine: Machine,
    pub seconds: f64,
    pub floor: Option<LoopResult>,
    pub local: Option<LoopResult>,
    pub qm: Option<LoopResult>,
    pub v02: Option<LoopResult>,
    /// Analysis loops: the fork-style spawn and the Launcher in the floor loop, and the
    /// floor, the fork-style spawn and the Launcher in a big process.
    pub floor_fork: Option<LoopResult>,
    pub launcher: Option<LoopResult>,
    pub floor_heavy: Option<LoopResult>,
    pub fork_heavy: Option<LoopResult>,
    pub launcher_heavy: Option<LoopResult>,
    /// Open fds of the big-process analysis loops (and KiB of heap they touch).
    pub ballast_fds: u64,
    pub ballast_kib: u64,
    pub scale: Vec<ScalePoint>,
    pub slots: Vec<SlotsPoint>,
    pub growth: Option<Growth>,
    pub reexec: Vec<ReexecPoint>,
    pub boot: Vec<super::boot::BootPoint>,
    pub sizes: Vec<SizeRow>,
    pub errors: Vec<String>,
    pub notes: Vec<String>,
}

/// A goal of the issue against its measurement.
#[derive(Debug)]
pub struct Goal {
    pub goal: String,
    pub measured: String,
    /// `None`: not measured in this run.
    pub met: Option<bool>,
    pub margin: String,
}

fn ratio_goal(goal: &str, value: Option<f64>, max: f64, what: &str) -> Goal {
    match value {
        Some(v) => Goal {
            goal: goal.into(),
            measured: format!("{v:.2}× {what}"),
            met: Some(v <= max),
            margin: margin_below(v, max),
        },
        None => missing(goal),
    }
}

/// "x % headroom" or "missed by x %" for a value that should stay at or below `max`.
fn margin_below(v: f64, max: f64) -> String {
    if v <= max {
        format!("{:.0} % headroom", (1.0 - v / max) * 100.0)
    } else {
        format!(
            "missed by {:.0} % ({:.2}× the limit)",
            (v / max - 1.0) * 100.0,
            v / max
        )
    }
}

fn missing(goal: &str) -> Goal {
    Goal {
        goal: goal.into(),
        measured: "not measured (phase failed)".into(),
        met: None,
        margin: String::new(),
    }
}

/// holden's points where every service crash-loops, by N.
fn churn_points(r: &Results) -> Vec<&ScalePoint> {
    r.scale
        .iter()
        .filter(|p| p.by == Who::Holden && p.crashing == p.n)
        .collect()
}

/// holden's points with [`IDLE_VARIANT_CRASHING`] crashing services, by N (N = that number
/// is the churn point with no idle service: the baseline of this variant).
fn idle_points(r: &Results) -> Vec<&ScalePoint> {
    r.scale
        .iter()
        .filter(|p| {
            p.by == Who::Holden
                && p.crashing == IDLE_VARIANT_CRASHING.min(p.n)
                && p.n >= IDLE_VARIANT_CRASHING
        })
        .collect()
}

/// The floor's point for the same load as `p`.
fn floor_of<'a>(r: &'a Results, p: &ScalePoint) -> Option<&'a ScalePoint> {
    r.scale
        .iter()
        .find(|f| f.by == Who::Floor && f.n == p.n && f.crashing == p.crashing)
}

/// A share that should be at least `min` ("x points above" or "missed by x points").
fn share_goal(goal: String, share: f64, min: f64, detail: String) -> Goal {
    Goal {
        goal,
        measured: format!("{:.0} % ({detail})", share * 100.0),
        met: Some(share >= min),
        margin: if share >= min {
            format!("{:.0} points above", (share - min) * 100.0)
        } else {
            format!("missed by {:.0} points", (min - share) * 100.0)
        },
    }
}

/// The goals, evaluated.
pub fn goals(r: &Results) -> Vec<Goal> {
    let mut out = Vec::new();
    let floor = r.floor.as_ref();
    let f = |l: Option<&LoopResult>, pick: fn(&LoopResult) -> u64| -> Option<f64> {
        let (l, fl) = (l?, floor?);
        (pick(fl) > 0).then(|| pick(l) as f64 / pick(fl) as f64)
    };
    out.push(ratio_goal(
        "local restart latency p50 ≤ 1.0× floor p50 (posix_spawn)",
        f(r.local.as_ref(), |l| l.latency.p50_ns),
        LOCAL_P50_FACTOR_MAX,
        "floor",
    ));
    out.push(ratio_goal(
        "local restart latency p99 ≤ 1.2× floor p99",
        f(r.local.as_ref(), |l| l.latency.p99_ns),
        LOCAL_P99_FACTOR_MAX,
        "floor",
    ));
    out.push(ratio_goal(
        "QM restart latency p50 ≤ 1.2× floor p50",
        f(r.qm.as_ref(), |l| l.latency.p50_ns),
        QM_P50_FACTOR_MAX,
        "floor",
    ));
    let idle = idle_points(r);
    let churn = churn_points(r);
    match (idle.first(), idle.last()) {
        (Some(alone), Some(many)) if many.n > alone.n => {
            out.push(share_goal(
                format!(
                    "restarts/s of {IDLE_VARIANT_CRASHING} crashing services among N={} ≥ 90 % of {IDLE_VARIANT_CRASHING} alone",
                    many.n
                ),
                many.restarts_per_s / alone.restarts_per_s.max(1e-9),
                SCALE_RATE_SHARE_MIN,
                format!(
                    "{:.0} vs {:.0} restarts/s",
                    many.restarts_per_s, alone.restarts_per_s
                ),
            ));
            match churn.first().filter(|p| p.n == 1) {
                Some(one) => out.push(ratio_goal(
                    &format!(
                        "CPU per restart at N={} ({IDLE_VARIANT_CRASHING} crashing) ≤ 1.2× N=1",
                        many.n
                    ),
                    Some(many.cpu_ns_per_restart / one.cpu_ns_per_restart.max(1.0)),
                    COST_GROWTH_FACTOR_MAX,
                    "N=1",
                )),
                None => out.push(missing("CPU per restart against N=1")),
            }
            out.push(ratio_goal(
                &format!(
                    "(context) restart latency p99 of {IDLE_VARIANT_CRASHING} crashing among N={} ≤ 1.5× {IDLE_VARIANT_CRASHING} alone",
                    many.n
                ),
                Some(many.latency.p99_ns as f64 / alone.latency.p99_ns.max(1) as f64),
                WATCHED_P99_FACTOR_MAX,
                &format!("N={}", alone.n),
            ));
        }
        _ => out.push(missing("restarts/s and CPU per restart at the largest N")),
    }
    if let (Some(one), Some(all)) = (churn.first().filter(|p| p.n == 1), churn.last()) {
        if all.n > 1 {
            out.push(share_goal(
                format!(
                    "(context) restarts/s with all N={} crash-looping, against N=1",
                    all.n
                ),
                all.restarts_per_s / one.restarts_per_s.max(1e-9),
                SCALE_RATE_SHARE_MIN,
                format!(
                    "{:.0} vs {:.0} restarts/s",
                    all.restarts_per_s, one.restarts_per_s
                ),
            ));
        }
    }
    // The goal as the shipped unit runs the loop (SCHED_FIFO 1), the default policy as
    // context.
    let realtime = r
        .scale
        .iter()
        .find(|p| p.by == Who::HoldenRealtime && p.n == STALL_GOAL_N && p.crashing == p.n);
    let default = churn
        .iter()
        .copied()
        .filter(|p| p.n <= STALL_GOAL_N)
        .max_by_key(|p| p.n);
    if realtime.is_none() && default.is_none() {
        out.push(missing(&format!(
            "loop stall p99.9 < 100 µs with {STALL_GOAL_N} services crash-looping (holdenctl stats)"
        )));
    }
    for (point, context) in [(realtime, false), (default, realtime.is_some())] {
        let Some(p) = point else {
            continue;
        };
        let policy = if p.by == Who::HoldenRealtime {
            ", the loop at SCHED_FIFO 1 as the shipped unit runs it"
        } else {
            ", default scheduling policy"
        };
        let goal = format!(
            "{}loop stall p99.9 < 100 µs with {STALL_GOAL_N} services crash-looping{policy} \
             (holdenctl stats)",
            if context { "(context) " } else { "" }
        );
        match p
            .stall
            .as_ref()
            .and_then(|st| Some((st, st.quantile(0.999)?)))
        {
            Some((st, p999)) => out.push(Goal {
                goal,
                measured: format!(
                    "p99.9 {} µs, max {} µs over {} completions{}",
                    us(p999),
                    us(st.max_ns),
                    st.count(),
                    if p.n == STALL_GOAL_N {
                        String::new()
                    } else {
                        format!(
                            " (N={}: the largest N of this run up to {STALL_GOAL_N})",
                            p.n
                        )
                    }
                ),
                met: Some(p999 < STALL_P999_NS_MAX),
                margin: margin_below(p999 as f64, STALL_P999_NS_MAX as f64),
            }),
            None => out.push(missing(&goal)),
        }
    }
    match r.slots.iter().find(|s| s.slots == ORCH_RSS_GOAL_SLOTS) {
        Some(s) => out.push(kib_goal(
            "orchestrator RSS at 1,024 slots < 4 MiB",
            s.orchestrator.rss_kib,
            ORCH_RSS_KIB_MAX,
        )),
        None => out.push(missing("orchestrator RSS at 1,024 slots < 4 MiB")),
    }
    if let Some(p) = r
        .scale
        .iter()
        .filter(|p| p.by != Who::Floor && p.n == ORCH_RSS_GOAL_SLOTS)
        .max_by_key(|p| p.orchestrator.rss_kib)
    {
        out.push(kib_goal(
            "(context) orchestrator RSS with 1,024 slots all holding a service",
            p.orchestrator.rss_kib,
            ORCH_RSS_KIB_MAX,
        ));
    }
    match &r.growth {
        Some(g) => {
            let od = g.orchestrator.1.data_kib as i64 - g.orchestrator.0.data_kib as i64;
            let ad = g.agent.1.data_kib as i64 - g.agent.0.data_kib as i64;
            out.push(Goal {
                goal: "zero heap growth after start-up (VmData, orchestrator and agent)".into(),
                measured: format!(
                    "{od:+} KiB / {ad:+} KiB between {} and {} restarts",
                    g.early_restarts, g.late_restarts
                ),
                met: Some(od <= 0 && ad <= 0),
                margin: if od <= 0 && ad <= 0 {
                    "no growth".into()
                } else {
                    format!("grew by {} KiB", od.max(0) + ad.max(0))
                },
            });
        }
        None => out.push(missing("zero heap growth after start-up")),
    }
    let agent_rss = [
        r.qm.as_ref().and_then(|q| q.agent).map(|a| a.rss_kib),
        r.growth.as_ref().map(|g| g.agent.1.rss_kib),
    ]
    .into_iter()
    .flatten()
    .max();
    match agent_rss {
        Some(kib) => out.push(kib_goal("agent RSS < 2 MiB", kib, AGENT_RSS_KIB_MAX)),
        None => out.push(missing("agent RSS < 2 MiB")),
    }
    // Issue 14: no restart is delayed by more than the re-exec's own time.
    for p in &r.reexec {
        let allowed = p.pauses.max_ns + p.restarts.p99_ns;
        out.push(Goal {
            goal: format!(
                "a re-exec delays a restart by no more than its pause (N = {})",
                p.services
            ),
            measured: format!(
                "longest restart {} against the longest pause {} + restart p99 {}",
                us(p.restarts.max_ns),
                us(p.pauses.max_ns),
                us(p.restarts.p99_ns)
            ),
            met: Some(p.restarts.max_ns <= allowed),
            margin: margin_below(p.restarts.max_ns as f64, allowed as f64),
        });
    }
    // Issue 16: a boot within 1.1× the critical path + 50 ms.
    for p in &r.boot {
        let (Some(median), Some(worst)) = (p.median(), p.worst()) else {
            continue;
        };
        let target = p.target_ns();
        out.push(Goal {
            goal: format!(
                "boot ≤ 1.1× critical path + 50 ms (N = {}, median of {} boots)",
                p.services,
                p.runs.len()
            ),
            measured: format!(
                "median {} ms (worst {} ms) against critical path {} ms: {:.2}×; target {} ms",
                ms(median.total_ns),
                ms(worst.total_ns),
                ms(p.critical_path_ns),
                median.total_ns as f64 / p.critical_path_ns.max(1) as f64,
                ms(target)
            ),
            met: Some(median.total_ns <= target),
            margin: margin_below(median.total_ns as f64, target as f64),
        });
    }
    match r.sizes.iter().max_by_key(|s| s.bytes) {
        Some(biggest) => {
            let all_static = r.sizes.iter().all(|s| s.is_static);
            let ok = biggest.bytes < BINARY_BYTES_MAX && all_static;
            out.push(Goal {
                goal: "each static binary < 2 MiB".into(),
                measured: format!(
                    "largest {} ({}) {} KiB{}",
                    biggest.binary,
                    biggest.arch,
                    biggest.bytes / 1024,
                    if all_static { "" } else { "; NOT all static" }
                ),
                met: Some(ok),
                margin: margin_below(biggest.bytes as f64, BINARY_BYTES_MAX as f64),
            });
        }
        None => out.push(missing("each static binary < 2 MiB")),
    }
    out
}

fn kib_goal(goal: &str, kib: u64, max: u64) -> Goal {
    Goal {
        goal: goal.into(),
        measured: format!("{} KiB", kib),
        met: Some(kib < max),
        margin: margin_below(kib as f64, max as f64),
    }
}

fn mib(kib: u64) -> String {
    format!("{:.2}", kib as f64 / KIB_PER_MIB as f64)
}

/// The whole report.
pub fn render(r: &Results, svg_name: &str) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(s, "# holden benchmark report\n");
    let _ = writeln!(
        s,
        "`{}` — {}, {:.0} s, source {}.\n",
        r.command, m.date_utc, r.seconds, m.revision
    );
    let _ = writeln!(s, "## Machine\n");
    let _ = writeln!(
        s,
        "| CPU | cores | kernel | memory | load average at start | at end |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let _ = writeln!(
        s,
        "| {} | {} | {} | {} MiB | {} | {} |\n",
        m.cpu, m.cores, m.kernel, m.memory_mib, m.load_start, m.load_end
    );
    if !r.errors.is_empty() {
        let _ = writeln!(s, "## Errors (something is broken)\n");
        for e in &r.errors {
            let _ = writeln!(s, "- {}", e.replace('\n', " "));
        }
        let _ = writeln!(s);
    }
    goals_section(&mut s, r);
    latency_section(&mut s, r);
    scale_section(&mut s, r, svg_name);
    memory_section(&mut s, r);
    reexec_section(&mut s, r);
    boot_section(&mut s, r);
    size_section(&mut s, r);
    if !r.notes.is_empty() {
        let _ = writeln!(s, "## Notes\n");
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
        let _ = writeln!(s);
    }
    s
}

fn goals_section(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## Goals (issues 13, 14, 16 and 8)\n");
    let _ = writeln!(s, "| goal | measured | met | margin |");
    let _ = writeln!(s, "|---|---|---|---|");
    for g in goals(r) {
        let met = match g.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "—",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            g.goal, g.measured, met, g.margin
        );
    }
    let _ = writeln!(s);
}

fn latency_section(s: &mut String, r: &Results) {
    let _ = writeln!(
        s,
        "## Restart latency\n\nOne service that exits at once, restarted with no delay: time from one \
         instance's last timestamp (just before `_exit`) to the next instance's first (top of \
         `main`), CLOCK_MONOTONIC, taken by the probe itself. Ratios are to the floor of this \
         run. CPU is the supervising process's (the loop, or holden-orchestrator) per restart.\n"
    );
    let _ = writeln!(
        s,
        "| loop | restarts | p50 µs | p99 µs | max µs | p50 × floor | p99 × floor | restarts/s | CPU µs/restart |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    let floor = r.floor.as_ref();
    let big = format!(
        "{} KiB of heap touched, {} open fds",
        r.ballast_kib, r.ballast_fds
    );
    let rows: [(String, Option<&LoopResult>); 9] = [
        (
            "floor: posix_spawn (CLONE_VM, CLONE_VFORK; same session, signal and stdin set-up) + pidfd_open, poll pidfd, waitid, repeat".into(),
            floor,
        ),
        ("holden-orchestrator, local".into(), r.local.as_ref()),
        (
            "holden-orchestrator, QM via holden-agent (own PID ns)".into(),
            r.qm.as_ref(),
        ),
        (
            "v0.2 pattern (a model): floor + 100 ms sleep per event".into(),
            r.v02.as_ref(),
        ),
        (
            "analysis: the fork-style spawn (holden::spawn::spawn: clone3, exec report; the floor before issue 13)".into(),
            r.floor_fork.as_ref(),
        ),
        (
            "analysis: holden's Launcher (CLONE_VM, CLONE_VFORK, CLONE_FILES, close_range unshare, exec report), as a spawner thread calls it".into(),
            r.launcher.as_ref(),
        ),
        (format!("analysis: floor (posix_spawn) in a big process ({big})"), r.floor_heavy.as_ref()),
        (format!("analysis: fork-style spawn in a big process ({big})"), r.fork_heavy.as_ref()),
        (format!("analysis: Launcher in a big process ({big})"), r.launcher_heavy.as_ref()),
    ];
    for (name, l) in rows {
        let Some(l) = l else {
            let _ = writeln!(s, "| {name} | failed | | | | | | | |");
            continue;
        };
        let (p50f, p99f) = floor.map_or(("n/a".into(), "n/a".into()), |f| {
            (
                ratio(l.latency.p50_ns as f64, f.latency.p50_ns as f64),
                ratio(l.latency.p99_ns as f64, f.latency.p99_ns as f64),
            )
        });
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {p50f} | {p99f} | {:.0} | {:.1} |",
            l.latency.count,
            us(l.latency.p50_ns),
            us(l.latency.p99_ns),
            us(l.latency.max_ns),
            l.restarts_per_s,
            l.cpu_ns_per_restart / 1000.0
        );
    }
    if let Some(a) = r.qm.as_ref().and_then(|q| q.agent_cpu_ns_per_restart) {
        let _ = writeln!(
            s,
            "\nholden-agent CPU per QM restart: {:.1} µs.",
            a / 1000.0
        );
    }
    if let (Some(v), Some(l)) = (&r.v02, &r.local) {
        let _ = writeln!(
            s,
            "\nholden (local) restarts a crashing service {:.0}× faster than v0.2's pattern \
             (p50 {} µs against {} µs; v0.2 sleeps {V02_SLEEP_MS} ms per event).",
            v.latency.p50_ns as f64 / l.latency.p50_ns.max(1) as f64,
            us(l.latency.p50_ns),
            us(v.latency.p50_ns)
        );
    }
    let _ = writeln!(s);
}

fn scale_section(s: &mut String, r: &Results, svg_name: &str) {
    let _ = writeln!(
        s,
        "## Scale\n\nN local services in one orchestrator (slots = N), and the same load under \
         the floor loop for N services (bench-floor-scale: posix_spawn as the floor, one epoll \
         set of pidfds, waitid, spawn again; nothing else). *churn*: all N exit at once \
         and are restarted; otherwise {IDLE_VARIANT_CRASHING} crash-loop and the others stay \
         up. Figures over a fixed window after every service has started; latency is over \
         every restart of a crashing service in the window. With every service churning, a \
         restart waits for the restarts queued before it: latency then grows as N / \
         (restarts/s) for any supervisor, the floor included. *Loop stall*: how long \
         holden's event loop spent on one completion in the window, from its own histogram \
         (`holdenctl stats`; quantiles and max are bucket tops, at most 1/8 above the exact \
         value).\n"
    );
    let _ = writeln!(
        s,
        "| N | load | restarts/s holden / floor | CPU µs/restart holden / floor | latency p50 µs holden / floor | p99 µs holden / floor | max µs holden | p99 × floor | loop stall p99.9 / max µs | orchestrator RSS MiB |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for p in r.scale.iter().filter(|p| p.by != Who::Floor) {
        let inherited = if p.output_inherited {
            " (output inherited)"
        } else {
            ""
        };
        let load = if p.crashing == p.n && p.by == Who::HoldenRealtime {
            "churn, loop at SCHED_FIFO 1 (the shipped unit)".to_string()
        } else if p.crashing == p.n {
            "churn".to_string()
        } else {
            format!("{} crashing, {} idle", p.crashing, p.n - p.crashing)
        };
        let load = format!("{load}{inherited}");
        let f = floor_of(r, p);
        let fl = |v: Option<String>| v.unwrap_or_else(|| "n/a".into());
        let _ = writeln!(
            s,
            "| {} | {load} | {:.0} / {} | {:.1} / {} | {} / {} | {} / {} | {} | {} | {} | {} |",
            p.n,
            p.restarts_per_s,
            fl(f.map(|f| format!("{:.0}", f.restarts_per_s))),
            p.cpu_ns_per_restart / 1000.0,
            fl(f.map(|f| format!("{:.1}", f.cpu_ns_per_restart / 1000.0))),
            us(p.latency.p50_ns),
            fl(f.map(|f| us(f.latency.p50_ns))),
            us(p.latency.p99_ns),
            fl(f.map(|f| us(f.latency.p99_ns))),
            us(p.latency.max_ns),
            fl(f.map(|f| ratio(p.latency.p99_ns as f64, f.latency.p99_ns as f64))),
            fl(p.stall.as_ref().and_then(|st| Some(format!(
                "{} / {}",
                us(st.quantile(0.999)?),
                us(st.max_ns)
            )))),
            mib(p.orchestrator.rss_kib)
        );
    }
    let churn = churn_points(r);
    if let (Some(a), Some(b)) = (churn.first(), churn.last()) {
        if a.n == 1 && b.n > 1 {
            let _ = writeln!(
                s,
                "\nN={} : N=1 (churn): restarts/s {}, CPU per restart {}, p99 latency {}.",
                b.n,
                ratio(b.restarts_per_s, a.restarts_per_s),
                ratio(b.cpu_ns_per_restart, a.cpu_ns_per_restart),
                ratio(b.latency.p99_ns as f64, a.latency.p99_ns as f64)
            );
        }
    }
    let _ = writeln!(s, "\n![restart latency against N]({svg_name})\n");
}

fn sample_row(s: &mut String, what: &str, a: &Sample) {
    let _ = writeln!(
        s,
        "| {what} | {} | {} | {} | {} | {} |",
        mib(a.rss_kib),
        mib(a.hwm_kib),
        a.data_kib,
        a.anon_kib,
        a.fds
    );
}

fn memory_section(s: &mut String, r: &Results) {
    let _ = writeln!(
        s,
        "## Memory\n\nFrom /proc/PID/status of the running process: VmRSS, VmHWM (peak RSS), \
         VmData (heap and private anonymous mappings, virtual: grows with any allocation that is \
         kept), RssAnon; fds from /proc/PID/fd.\n"
    );
    let _ = writeln!(
        s,
        "| process | RSS MiB | HWM MiB | VmData KiB | RssAnon KiB | fds |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for p in &r.slots {
        sample_row(
            s,
            &format!("orchestrator, {} slots, 1 service", p.slots),
            &p.orchestrator,
        );
    }
    if let Some(o) = r.local.as_ref().and_then(|l| l.orchestrator.as_ref()) {
        sample_row(s, "orchestrator, 64 slots, after the local latency run", o);
    }
    if let Some(a) = r.qm.as_ref().and_then(|q| q.agent.as_ref()) {
        sample_row(s, "agent, after the QM latency run", a);
    }
    if let Some(g) = &r.growth {
        sample_row(
            s,
            &format!("orchestrator after {} restarts", g.early_restarts),
            &g.orchestrator.0,
        );
        sample_row(
            s,
            &format!("orchestrator after {} restarts", g.late_restarts),
            &g.orchestrator.1,
        );
        sample_row(
            s,
            &format!("agent after {} restarts", g.early_restarts),
            &g.agent.0,
        );
        sample_row(
            s,
            &format!("agent after {} restarts", g.late_restarts),
            &g.agent.1,
        );
        let _ = writeln!(
            s,
            "\nGrowth run: one local and one QM service restarting at once in one orchestrator; \
             {} → {} restarts took {:.0} s.",
            g.early_restarts, g.late_restarts, g.seconds
        );
    }
    let _ = writeln!(s);
}

fn reexec_section(s: &mut String, r: &Results) {
    if r.reexec.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "## Live re-exec\n\n`holdenctl reexec` on an orchestrator with N services, one of them \
         restarting at once, the others up, 100 ms apart. The pause is what the new instance \
         reports: from the old instance leaving its loop for the re-exec to the new one \
         entering its loop, every service carried on. The restart latencies are the crash-looping \
         service's over the whole run, re-execs included: a restart that falls due in a pause \
         waits for its end.\n"
    );
    let _ = writeln!(
        s,
        "| N | re-execs | pause p50 | pause max | restarts | restart p50 | restart p99 | restart max |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for p in &r.reexec {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            p.services,
            p.pauses.count,
            us(p.pauses.p50_ns),
            us(p.pauses.max_ns),
            p.restarted,
            us(p.restarts.p50_ns),
            us(p.restarts.p99_ns),
            us(p.restarts.max_ns)
        );
    }
    let _ = writeln!(s);
}

fn boot_section(s: &mut String, r: &Results) {
    if r.boot.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "## Boot\n\nA random dependency graph (seeded: the same graph in every run) of N \
         `type = \"notify\"` services, each `after` 0 to {fan} earlier ones (one edge in {req} \
         also `requires`), each ready (`READY=1`) {delay} ms after the top of its `main`. \
         *Total*: from the bench spawning the orchestrator to the orchestrator's log line \
         saying the last service is ready, read on a pipe (bench clock). *Critical path*: the \
         largest sum of delays along a dependency path, what a supervisor that costs nothing \
         would take. The rest is on the services' clock from the orchestrator's exec \
         (bench-launch stamps it): *first start* is the first service's `main` (the \
         orchestrator's own start-up), *roots up* the last service without dependencies in its \
         `main`; *reaction* is a dependency's `READY=1` sent → its dependent's `main` (the \
         notify read, the transition, the dependency pass, the spawn and the exec), over every \
         service with dependencies. *Late chain*: from the last service to be ready back \
         through the dependency that was ready last; its time splits exactly into start-up, \
         the services' own time (delays and their overshoot) and the orchestrator's reactions \
         along it.\n",
        fan = super::boot::FAN_IN_MAX,
        req = super::boot::REQUIRES_ONE_IN,
        delay = r.boot[0].delay_ms,
    );
    let _ = writeln!(
        s,
        "| N | seed | edges (requires) | roots | depth | critical path ms | target ms | boots | total ms median / worst | × critical path | met |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for p in &r.boot {
        let (Some(median), Some(worst)) = (p.median(), p.worst()) else {
            continue;
        };
        let _ = writeln!(
            s,
            "| {}{} | {:#x} | {} ({}) | {} | {} | {} | {} | {} | {} / {} | {:.2} / {:.2} | {} |",
            p.services,
            if p.output_inherited {
                " (output inherited)"
            } else {
                ""
            },
            p.seed,
            p.edges,
            p.requires_edges,
            p.roots,
            p.depth,
            ms(p.critical_path_ns),
            ms(p.target_ns()),
            p.runs.len(),
            ms(median.total_ns),
            ms(worst.total_ns),
            median.total_ns as f64 / p.critical_path_ns.max(1) as f64,
            worst.total_ns as f64 / p.critical_path_ns.max(1) as f64,
            if median.total_ns <= p.target_ns() {
                "yes"
            } else {
                "**no**"
            }
        );
    }
    let _ = writeln!(
        s,
        "\nBreakdown of the median boot (ms; services' clock unless said):\n"
    );
    let _ = writeln!(
        s,
        "| N | first start | roots up | last READY=1 sent | total (bench clock) | reaction p50 / p99 / max µs | late chain: services | start-up | services' own | reactions | orchestrator CPU ms |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for p in &r.boot {
        let Some(b) = p.median() else {
            continue;
        };
        let reactions = super::stats::Summary::of(&mut b.reactions.clone());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} / {} / {} | {} | {} | {} (nominal {}) | {} | {} |",
            p.services,
            ms(b.first_start_ns),
            ms(b.roots_started_ns),
            ms(b.last_sent_ns),
            ms(b.total_ns),
            us(reactions.p50_ns),
            us(reactions.p99_ns),
            us(reactions.max_ns),
            b.chain_services,
            ms(b.chain_startup_ns),
            ms(b.chain_services_ns),
            b.chain_services as u64 * p.delay_ms,
            ms(b.chain_reactions_ns),
            ms(b.cpu_ns)
        );
    }
    let _ = writeln!(s);
}

fn size_section(s: &mut String, r: &Results) {
    let _ = writeln!(
        s,
        "## Binary sizes\n\nRelease builds from `cargo xtask dist` (static musl, stripped, LTO).\n"
    );
    let _ = writeln!(s, "| arch | binary | bytes | KiB | static |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    for z in &r.sizes {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            z.arch,
            z.binary,
            z.bytes,
            z.bytes / 1024,
            if z.is_static { "yes" } else { "**no**" }
        );
    }
    let _ = writeln!(s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::Stall;

    fn churn(n: usize, by: Who, stall_ns: u64) -> ScalePoint {
        ScalePoint {
            n,
            crashing: n,
            by,
            stall: Some(Stall {
                buckets: vec![(stall_ns, 1000)],
                max_ns: stall_ns,
            }),
            ..ScalePoint::default()
        }
    }

    fn stall_goals(r: &Results) -> Vec<Goal> {
        goals(r)
            .into_iter()
            .filter(|g| g.goal.contains("loop stall"))
            .collect()
    }

    #[test]
    fn the_stall_goal_is_judged_as_the_unit_schedules_the_loop_with_the_default_as_context() {
        let mut r = Results {
            scale: vec![
                churn(4, Who::Holden, 20_000),
                churn(STALL_GOAL_N, Who::Holden, 150_000),
                churn(STALL_GOAL_N, Who::HoldenRealtime, 40_000),
            ],
            ..Results::default()
        };
        let g = stall_goals(&r);
        assert_eq!(g.len(), 2, "{g:?}");
        assert!(g[0].goal.starts_with("loop stall") && g[0].goal.contains("SCHED_FIFO 1"));
        assert_eq!(g[0].met, Some(true));
        assert!(g[1].goal.starts_with("(context)") && g[1].goal.contains("default"));
        assert_eq!(g[1].met, Some(false));
        // Without the real-time point the default policy's is the goal.
        r.scale.retain(|p| p.by != Who::HoldenRealtime);
        let g = stall_goals(&r);
        assert_eq!(g.len(), 1, "{g:?}");
        assert!(g[0].goal.starts_with("loop stall") && g[0].goal.contains("default"));
        assert_eq!(g[0].met, Some(false));
        // Nothing measured: one missing goal.
        r.scale.clear();
        let g = stall_goals(&r);
        assert_eq!(g.len(), 1, "{g:?}");
        assert_eq!(g[0].met, None);
    }
}
