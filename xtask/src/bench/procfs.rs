//! What /proc says about a process from outside: memory, fds, CPU time.

use std::path::Path;

/// One look at a process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Resident set (VmRSS), KiB.
    pub rss_kib: u64,
    /// Peak resident set (VmHWM), KiB.
    pub hwm_kib: u64,
    /// Private data + heap + anonymous mappings, virtual (VmData), KiB: grows with every
    /// heap allocation that is not returned.
    pub data_kib: u64,
    /// Resident anonymous memory (RssAnon), KiB.
    pub anon_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// CPU time on all its threads, ns (`/proc/PID/task/*/schedstat`, first field).
    pub cpu_ns: u64,
}

/// Reads a sample; `None` when the process is gone.
/// This process's hard RLIMIT_NOFILE (`Max open files` of `/proc/self/limits`), which the
/// orchestrators it starts inherit; `None` if unreadable or unlimited.
pub fn nofile_hard() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(4)?.parse().ok()
}

pub fn sample(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(Sample {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        data_kib: field("VmData:"),
        anon_kib: field("RssAnon:"),
        fds,
        cpu_ns: cpu_ns(pid)?,
    })
}

/// CPU time of a process in ns, all its threads (the orchestrator's spawner and log writer
/// threads included): the sum of `/proc/PID/task/*/schedstat` (exact), else utime+stime from
/// `/proc/PID/stat` in clock ticks (assumed 100 Hz, as on every Linux architecture we ship).
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()
        .map(|dir| {
            dir.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .collect::<Vec<u64>>()
        });
    if let Some(ns) = threads.filter(|t| !t.is_empty()) {
        return Some(ns.iter().sum());
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit(')').next()?.split_whitespace();
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * 10_000_000)
}

/// Whether the process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next()),
            Some("Z") | Some("X") | None
        ),
        Err(_) => false,
    }
}

/// The arguments of a process (empty when it is gone or a kernel thread).
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every pid in /proc.
pub fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Every live process with an argument that contains `marker` (a per-run directory).
pub fn pids_with(marker: &Path) -> Vec<u32> {
    let marker = marker.to_string_lossy();
    let me = std::process::id();
    pids()
        .into_iter()
        .filter(|&p| p != me && alive(p))
        .filter(|&p| cmdline(p).iter().any(|a| a.contains(marker.as_ref())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_of_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib && s.data_kib > 0);
        assert!(s.fds >= 3);
        assert!(s.cpu_ns > 0);
        assert!(alive(std::process::id()));
        assert!(!cmdline(std::process::id()).is_empty());
    }
}
