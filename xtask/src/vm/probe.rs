//! What the guest found out about its kernel (`HOLDEN-VM-PROBE:` lines), what the
//! orchestrator's start line claims about it, and whether the two agree with each other and
//! with the documented kernel versions of each feature.
//!
//! A kernel that lacks a feature is not a failure; a claim that does not match the kernel is.

use super::kernel::release_version;

/// `statfs` magic of pidfs (`PID_FS_MAGIC`, Linux 6.9+): pidfds live there.
pub const PID_FS_MAGIC: u64 = 0x5049_4446;
/// `statfs` magic of the anonymous inode filesystem: pidfds before pidfs.
pub const ANON_INODE_FS_MAGIC: u64 = 0x0904_1934;

/// The first kernels with each feature (docs/orchestrator.md, BRIEF section 4).
pub const PIDFS_KERNEL: (u32, u32) = (6, 9);
/// A pidfd polls `POLLHUP` at its process's reap (the same release as pidfs).
pub const PIDFD_REAP_HUP_KERNEL: (u32, u32) = (6, 9);
pub const PIDFD_GET_INFO_KERNEL: (u32, u32) = (6, 13);
pub const PIDFD_INFO_EXIT_KERNEL: (u32, u32) = (6, 15);
pub const IO_URING_DISABLED_KERNEL: (u32, u32) = (6, 6);

/// The guest's own findings.
#[derive(Debug, PartialEq)]
pub struct Probe {
    /// `uname -m`.
    pub arch: String,
    /// `uname -r`.
    pub release: String,
    pub version: (u32, u32),
    /// CPUs online (`nproc`).
    pub cpus: u32,
    /// `kernel.io_uring_disabled`; `None`: the kernel has no such sysctl.
    pub io_uring_disabled: Option<u32>,
    /// `cgroup.controllers` of a cgroup2 mounted in the guest; `None`: cgroup2 did not mount.
    pub cgroup2_controllers: Option<Vec<String>>,
    /// `statfs` magic of a pidfd the orchestrator holds (only when it started).
    pub pidfd_fs_magic: Option<u64>,
}

impl Probe {
    /// Parses the `HOLDEN-VM-PROBE: key=value` lines of a console log.
    pub fn parse(text: &str) -> Result<Probe, String> {
        let value = |key: &str| -> Option<&str> {
            text.lines()
                .filter_map(|l| l.trim().strip_prefix("HOLDEN-VM-PROBE: "))
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::trim)
        };
        let need = |key: &str| value(key).ok_or_else(|| format!("the guest did not probe {key}"));
        let release = need("kernel")?.to_string();
        let version = release_version(&release)
            .ok_or_else(|| format!("kernel release `{release}`: no major.minor"))?;
        let cpus = need("cpus")?;
        let io_uring_disabled = match need("io_uring_disabled")? {
            "absent" => None,
            v => Some(
                v.parse()
                    .map_err(|_| format!("kernel.io_uring_disabled=`{v}`: not a number"))?,
            ),
        };
        let cgroup2_controllers = match need("cgroup2_controllers")? {
            "unavailable" => None,
            list => Some(list.split_whitespace().map(str::to_string).collect()),
        };
        let pidfd_fs_magic = match value("pidfd_fs_magic") {
            None => None,
            Some(v) => {
                let hex = v.split_whitespace().next().unwrap_or("");
                Some(
                    u64::from_str_radix(hex.trim_start_matches("0x"), 16)
                        .map_err(|_| format!("pidfd_fs_magic `{hex}`: not hex"))?,
                )
            }
        };
        Ok(Probe {
            arch: need("arch")?.to_string(),
            release,
            version,
            cpus: cpus
                .parse()
                .map_err(|_| format!("cpus=`{cpus}`: not a number"))?,
            io_uring_disabled,
            cgroup2_controllers,
            pidfd_fs_magic,
        })
    }

    /// pidfs as the guest saw it: `Some(true)` pidfs, `Some(false)` anon_inode.
    pub fn pidfs(&self) -> Result<bool, String> {
        match self.pidfd_fs_magic {
            Some(PID_FS_MAGIC) => Ok(true),
            Some(ANON_INODE_FS_MAGIC) => Ok(false),
            Some(m) => Err(format!(
                "a pidfd of the orchestrator is on filesystem magic {m:#x}: neither pidfs nor anon_inode"
            )),
            None => Err("the guest found no pidfd of the orchestrator to probe".into()),
        }
    }

    /// `kernel.io_uring_disabled=...` as printed in the report.
    pub fn io_uring_disabled_text(&self) -> String {
        match self.io_uring_disabled {
            Some(v) => v.to_string(),
            None => "absent".into(),
        }
    }

    pub fn cgroup2_text(&self) -> String {
        match &self.cgroup2_controllers {
            Some(list) if list.is_empty() => "mounted, no controllers".into(),
            Some(list) => list.join(","),
            None => "unavailable".into(),
        }
    }
}

/// What the orchestrator's `event=start` line states about the kernel.
#[derive(Debug, PartialEq)]
pub struct Claims {
    pub kernel: (u32, u32),
    pub pidfs: bool,
    pub pidfd_get_info: bool,
    pub pidfd_info_exit: bool,
    pub pidfd_reap_hup: bool,
}

impl Claims {
    /// From the orchestrator's log in a console (`orch| <5>event=start ... kernel=6.1
    /// pidfs=no pidfd_get_info=no pidfd_info_exit=no ...`).
    pub fn parse(text: &str) -> Result<Claims, String> {
        let line = text
            .lines()
            .filter_map(|l| l.strip_prefix("orch| "))
            .find(|l| l.contains("event=start "))
            .ok_or("orchestrator log: no event=start line")?;
        let word = |key: &str| -> Result<&str, String> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .ok_or_else(|| format!("the start line does not state {key}: {line}"))
        };
        let yes_no = |key: &str| -> Result<bool, String> {
            match word(key)? {
                "yes" => Ok(true),
                "no" => Ok(false),
                other => Err(format!("the start line says {key}={other}: {line}")),
            }
        };
        let kernel = word("kernel")?;
        Ok(Claims {
            kernel: release_version(kernel)
                .ok_or_else(|| format!("the start line says kernel={kernel}: {line}"))?,
            pidfs: yes_no("pidfs")?,
            pidfd_get_info: yes_no("pidfd_get_info")?,
            pidfd_info_exit: yes_no("pidfd_info_exit")?,
            pidfd_reap_hup: yes_no("pidfd_reap_hup")?,
        })
    }

    pub fn text(&self) -> String {
        let yn = |b: bool| if b { "yes" } else { "no" };
        format!(
            "kernel={}.{} pidfs={} pidfd_get_info={} pidfd_info_exit={} pidfd_reap_hup={}",
            self.kernel.0,
            self.kernel.1,
            yn(self.pidfs),
            yn(self.pidfd_get_info),
            yn(self.pidfd_info_exit),
            yn(self.pidfd_reap_hup)
        )
    }
}

/// The features a kernel of `version` has by the documented versions.
pub fn documented(version: (u32, u32)) -> Claims {
    Claims {
        kernel: version,
        pidfs: version >= PIDFS_KERNEL,
        pidfd_get_info: version >= PIDFD_GET_INFO_KERNEL,
        pidfd_info_exit: version >= PIDFD_INFO_EXIT_KERNEL,
        pidfd_reap_hup: version >= PIDFD_REAP_HUP_KERNEL,
    }
}

/// Checks the orchestrator's claims against the guest's probe (kernel version, pidfs by the
/// filesystem of a real pidfd) and, for a kernel whose pidfd features follow the mainline
/// versions (`mainline`: Debian's, as the matrix's probes confirm), against the documented
/// versions (also for PIDFD_GET_INFO and PIDFD_INFO_EXIT, which a shell cannot probe).
/// Another kernel (`--kernel`) may carry backports: only the probe and the claims' own
/// consistency are asserted then. Returns the report line.
pub fn check_claims(probe: &Probe, claims: &Claims, mainline: bool) -> Result<String, String> {
    let doc = documented(probe.version);
    let v = |k: (u32, u32)| format!("{}.{}", k.0, k.1);
    let yn = |b: bool| if b { "yes" } else { "no" };
    if claims.kernel != probe.version {
        return Err(format!(
            "the orchestrator claims kernel={}, the guest runs {}",
            v(claims.kernel),
            probe.release
        ));
    }
    let pidfs = probe.pidfs()?;
    let fs = if pidfs { "pidfs" } else { "anon_inode" };
    if claims.pidfs != pidfs {
        return Err(format!(
            "the orchestrator claims pidfs={}, but its pidfd is on {fs} in the guest",
            yn(claims.pidfs)
        ));
    }
    // The exit information is one of PIDFD_GET_INFO's answers.
    if claims.pidfd_info_exit && !claims.pidfd_get_info {
        return Err(format!(
            "the orchestrator claims pidfd_info_exit=yes without pidfd_get_info: {}",
            claims.text()
        ));
    }
    if !mainline {
        return Ok(format!(
            "kernel-claims start line `{}` matches the guest (kernel {}, pidfd on {fs}); \
             documented versions not asserted for a kernel given with --kernel",
            claims.text(),
            probe.release
        ));
    }
    if pidfs != doc.pidfs {
        return Err(format!(
            "kernel {}: pidfs={} in the guest, but pidfs is documented from {} on",
            probe.release,
            yn(pidfs),
            v(PIDFS_KERNEL)
        ));
    }
    for (name, claimed, documented, since) in [
        (
            "pidfd_get_info",
            claims.pidfd_get_info,
            doc.pidfd_get_info,
            PIDFD_GET_INFO_KERNEL,
        ),
        (
            "pidfd_info_exit",
            claims.pidfd_info_exit,
            doc.pidfd_info_exit,
            PIDFD_INFO_EXIT_KERNEL,
        ),
        (
            "pidfd_reap_hup",
            claims.pidfd_reap_hup,
            doc.pidfd_reap_hup,
            PIDFD_REAP_HUP_KERNEL,
        ),
    ] {
        if claimed != documented {
            return Err(format!(
                "the orchestrator claims {name}={} on kernel {}, documented from {} on",
                yn(claimed),
                probe.release,
                v(since)
            ));
        }
    }
    Ok(format!(
        "kernel-claims start line `{}` matches the guest (kernel {}, pidfd on {fs}) and the \
         documented kernels (pidfs {}, PIDFD_GET_INFO {}, PIDFD_INFO_EXIT {}, POLLHUP at \
         the reap {})",
        claims.text(),
        probe.release,
        v(PIDFS_KERNEL),
        v(PIDFD_GET_INFO_KERNEL),
        v(PIDFD_INFO_EXIT_KERNEL),
        v(PIDFD_REAP_HUP_KERNEL)
    ))
}

/// The per-kernel behaviour the documentation promises for these features (printed, and
/// asserted by the checks: `exit-status`, the agent's pidfds accepted).
pub fn behaviour(claims: &Claims) -> String {
    let exit = if claims.pidfd_info_exit {
        "QM exit status read through PIDFD_INFO_EXIT"
    } else {
        "QM exit status unknown (no PIDFD_INFO_EXIT, 6.15+)"
    };
    let identity = if claims.pidfs {
        "pidfds checked by pidfs magic and told apart by pidfs inode"
    } else {
        "pidfds checked by anon_inode:[pidfd] and told apart by pid (no pidfs, 6.9+)"
    };
    let reap = if !claims.pidfd_info_exit {
        ""
    } else if claims.pidfd_reap_hup {
        "; a QM exit not yet reaped waits for POLLHUP at the reap"
    } else {
        "; a QM exit not yet reaped is looked at again every 1 ms"
    };
    format!("{exit}; {identity}{reap}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBES: &str = "HOLDEN-VM: boot: kernel 6.12.117+deb13-amd64\n\
        HOLDEN-VM-PROBE: arch=x86_64\n\
        HOLDEN-VM-PROBE: kernel=6.12.117+deb13-amd64\n\
        HOLDEN-VM-PROBE: cpus=2\n\
        HOLDEN-VM-PROBE: io_uring_disabled=1\n\
        HOLDEN-VM-PROBE: cgroup2_controllers=cpuset cpu io memory hugetlb pids rdma misc\n\
        HOLDEN-VM-PROBE: pidfd_fs_magic=50494446 path=/proc/90/fd/9 link=anon_inode:[pidfd]\n\
        orch| <5>event=start version=0.3.0 kernel=6.12 pidfs=yes pidfd_get_info=no pidfd_info_exit=no pidfd_reap_hup=yes (exit status of QM processes will be reported as unknown)\n";

    #[test]
    fn parses_the_probe_lines() {
        let p = Probe::parse(PROBES).unwrap();
        assert_eq!(p.arch, "x86_64");
        assert_eq!(p.version, (6, 12));
        assert_eq!(p.cpus, 2);
        assert_eq!(p.io_uring_disabled, Some(1));
        assert_eq!(
            p.cgroup2_text(),
            "cpuset,cpu,io,memory,hugetlb,pids,rdma,misc"
        );
        assert_eq!(p.pidfs(), Ok(true));
        let old = PROBES
            .replace("io_uring_disabled=1", "io_uring_disabled=absent")
            .replace(
                "cgroup2_controllers=cpuset cpu io memory hugetlb pids rdma misc",
                "cgroup2_controllers=unavailable",
            )
            .replace("magic=50494446", "magic=9041934");
        let p = Probe::parse(&old).unwrap();
        assert_eq!(p.io_uring_disabled, None);
        assert_eq!(p.cgroup2_controllers, None);
        assert_eq!(p.pidfs(), Ok(false));
        for (from, to) in [
            ("PROBE: cpus=2", "PROBE: x=2"),
            ("cpus=2", "cpus=two"),
            ("kernel=6.12.117", "kernel=x"),
            ("io_uring_disabled=1", "io_uring_disabled=?"),
            ("magic=50494446", "magic=zz"),
        ] {
            assert!(Probe::parse(&PROBES.replace(from, to)).is_err(), "{to}");
        }
        let unknown = Probe::parse(&PROBES.replace("magic=50494446", "magic=1234")).unwrap();
        assert!(unknown.pidfs().is_err());
        let none = Probe::parse(&PROBES.replace("pidfd_fs_magic", "nothing")).unwrap();
        assert!(none.pidfs().is_err());
    }

    #[test]
    fn parses_the_start_line() {
        let c = Claims::parse(PROBES).unwrap();
        assert_eq!(
            c,
            Claims {
                kernel: (6, 12),
                pidfs: true,
                pidfd_get_info: false,
                pidfd_info_exit: false,
                pidfd_reap_hup: true
            }
        );
        assert_eq!(
            c.text(),
            "kernel=6.12 pidfs=yes pidfd_get_info=no pidfd_info_exit=no pidfd_reap_hup=yes"
        );
        for (from, to) in [
            ("event=start", "event=begin"),
            (" pidfs=yes", ""),
            ("pidfd_info_exit=no", "pidfd_info_exit=maybe"),
            (" pidfd_reap_hup=yes", ""),
            ("kernel=6.12 ", "kernel=new "),
        ] {
            assert!(Claims::parse(&PROBES.replace(from, to)).is_err(), "{to}");
        }
    }

    #[test]
    fn the_documented_kernels() {
        assert_eq!(
            documented((5, 10)).text(),
            "kernel=5.10 pidfs=no pidfd_get_info=no pidfd_info_exit=no pidfd_reap_hup=no"
        );
        assert_eq!(
            documented((6, 12)).text(),
            "kernel=6.12 pidfs=yes pidfd_get_info=no pidfd_info_exit=no pidfd_reap_hup=yes"
        );
        assert_eq!(
            documented((6, 13)).text(),
            "kernel=6.13 pidfs=yes pidfd_get_info=yes pidfd_info_exit=no pidfd_reap_hup=yes"
        );
        assert_eq!(
            documented((6, 15)).text(),
            "kernel=6.15 pidfs=yes pidfd_get_info=yes pidfd_info_exit=yes pidfd_reap_hup=yes"
        );
    }

    #[test]
    fn a_missing_feature_passes_and_a_wrong_claim_fails() {
        let probe = Probe::parse(PROBES).unwrap();
        let claims = Claims::parse(PROBES).unwrap();
        assert!(check_claims(&probe, &claims, true).is_ok());
        // The same on 6.1, without pidfs.
        let old = PROBES
            .replace("kernel=6.12.117+deb13-amd64", "kernel=6.1.0-50-amd64")
            .replace("magic=50494446", "magic=9041934")
            .replace("kernel=6.12 pidfs=yes", "kernel=6.1 pidfs=no")
            .replace("pidfd_reap_hup=yes", "pidfd_reap_hup=no");
        let line = check_claims(
            &Probe::parse(&old).unwrap(),
            &Claims::parse(&old).unwrap(),
            true,
        )
        .expect("6.1 without pidfs passes");
        assert!(line.contains("pidfd on anon_inode"), "{line}");
        for wrong in [
            // pidfs claimed where the kernel has none, and the reverse.
            old.replace("kernel=6.1 pidfs=no", "kernel=6.1 pidfs=yes"),
            PROBES.replace("pidfs=yes", "pidfs=no"),
            // Features claimed before the kernel that brought them.
            PROBES.replace("pidfd_get_info=no", "pidfd_get_info=yes"),
            PROBES.replace("pidfd_info_exit=no", "pidfd_info_exit=yes"),
            old.replace("pidfd_reap_hup=no", "pidfd_reap_hup=yes"),
            // Denied where the kernel has it.
            PROBES.replace("pidfd_reap_hup=yes", "pidfd_reap_hup=no"),
            // Another kernel version.
            PROBES.replace("kernel=6.12 pidfs", "kernel=6.13 pidfs"),
            // pidfs on a kernel documented without it (a probe that disagrees with the table).
            old.replace("kernel=6.1 pidfs=no", "kernel=6.1 pidfs=yes")
                .replace("magic=9041934", "magic=50494446"),
        ] {
            let p = Probe::parse(&wrong).unwrap();
            let c = Claims::parse(&wrong).unwrap();
            assert!(check_claims(&p, &c, true).is_err(), "{}", c.text());
        }
    }

    #[test]
    fn another_kernel_is_held_to_its_probe_not_to_the_versions() {
        // A 6.12 kernel with PIDFD_GET_INFO and PIDFD_INFO_EXIT backported (--kernel).
        let backported = PROBES.replace(
            "pidfd_get_info=no pidfd_info_exit=no",
            "pidfd_get_info=yes pidfd_info_exit=yes",
        );
        let p = Probe::parse(&backported).unwrap();
        let c = Claims::parse(&backported).unwrap();
        assert!(check_claims(&p, &c, true).is_err());
        let line = check_claims(&p, &c, false).expect("not held to the versions");
        assert!(line.contains("not asserted"), "{line}");
        // Still wrong: pidfs denied while the pidfd is on pidfs, exit info without GET_INFO.
        for wrong in [
            backported.replace("pidfs=yes", "pidfs=no"),
            backported.replace("pidfd_get_info=yes", "pidfd_get_info=no"),
            backported.replace("kernel=6.12 pidfs", "kernel=6.1 pidfs"),
        ] {
            let p = Probe::parse(&wrong).unwrap();
            let c = Claims::parse(&wrong).unwrap();
            assert!(check_claims(&p, &c, false).is_err(), "{}", c.text());
        }
    }
}
