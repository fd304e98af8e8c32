//! The runs of `cargo xtask vm-test --matrix`: every kernel and architecture holden ships
//! for, booted with the same scenario, plus one run where io_uring is switched off.

use super::kernel::Series;
use crate::elf;

/// A guest architecture: its QEMU, machine, console and Debian names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The name `cargo xtask dist --arch` and `uname -m` use.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Debian's architecture (package suffix and kernel flavour).
    pub fn deb(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    pub fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// The Debian package that has [`Arch::qemu`].
    pub fn qemu_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86",
            Arch::Aarch64 => "qemu-system-arm",
        }
    }

    /// Machine and CPU. aarch64 is always TCG (no KVM for it on an x86_64 host); its CPU is a
    /// Cortex-A72, an ARMv8.0 core found in automotive SoCs: the oldest ISA level the binaries
    /// must run on, and quick under TCG (no pointer authentication to emulate).
    ///
    /// An x86_64 guest with more than one vCPU runs TCG in one host thread (`thread=single`,
    /// the vCPUs taking turns): with a thread per vCPU, the guest kernel's live code patching
    /// (static keys, `text_poke_bp`'s int3) raced with the other vCPU and the guest oopsed on
    /// an `int3` in random kernel functions (`can_migrate_task`, `__alloc_pages_noprof`) in 1
    /// of 10 boots of `--run x86_64-6.12-cgroup`, before holden ran; a CI run failed on it.
    pub fn machine_args(self, kvm: bool, cpus: u32) -> Vec<&'static str> {
        match (self, kvm) {
            (Arch::X86_64, true) => vec!["-accel", "kvm", "-cpu", "host"],
            (Arch::X86_64, false) if cpus > 1 => {
                vec!["-accel", "tcg,thread=single", "-cpu", "max"]
            }
            (Arch::X86_64, false) => vec!["-accel", "tcg", "-cpu", "max"],
            (Arch::Aarch64, _) => vec!["-M", "virt", "-accel", "tcg", "-cpu", "cortex-a72"],
        }
    }

    /// Whether `--kvm` applies to this architecture on this (x86_64) host.
    pub fn kvm_capable(self) -> bool {
        self == Arch::X86_64
    }

    /// The serial console's device name in the guest.
    pub fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }

    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => elf::EM_X86_64,
            Arch::Aarch64 => elf::EM_AARCH64,
        }
    }
}

/// What the guest does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// The supervision scenario (init.sh): services killed and restarted through the agent,
    /// the agent killed, a crash loop to its start limit, holdenctl, a clean shutdown. With
    /// `Some(n)`, `kernel.io_uring_disabled` is set to `n` first (n < 2).
    Supervision { io_uring_disabled: Option<u8> },
    /// `kernel.io_uring_disabled=2`, then the orchestrator must refuse to start with the
    /// documented message and exit code.
    IoUringDisabled,
    /// Cgroup limits with the controllers enabled (vm-cgroup.toml): a memory hog OOM-killed in
    /// its cgroup and restarted, a fork bomb held by `pids_max`, `cpu_weight`/`cpu_max` in
    /// the cgroup files, the cgroups removed at shutdown.
    CgroupLimits,
}

impl Scenario {
    /// The kernel command line words that tell init.sh what to do.
    pub fn cmdline(self) -> String {
        match self {
            Scenario::Supervision {
                io_uring_disabled: None,
            } => "holden.scenario=supervision".into(),
            Scenario::Supervision {
                io_uring_disabled: Some(n),
            } => format!("holden.scenario=supervision holden.io_uring_disabled={n}"),
            Scenario::IoUringDisabled => {
                "holden.scenario=io-uring-disabled holden.io_uring_disabled=2".into()
            }
            Scenario::CgroupLimits => "holden.scenario=cgroup-limits".into(),
        }
    }
}

/// One guest boot.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub name: &'static str,
    pub arch: Arch,
    pub series: Series,
    pub cpus: u32,
    pub scenario: Scenario,
}

const BULLSEYE: Series = Series {
    suite: "bullseye",
    prefix: "5.10.0-",
    version: (5, 10),
};
const BOOKWORM: Series = Series {
    suite: "bookworm",
    prefix: "6.1.",
    version: (6, 1),
};
const TRIXIE: Series = Series {
    suite: "trixie",
    prefix: "6.12.",
    version: (6, 12),
};

/// Every run of `--matrix`, in order. Two vCPUs in some runs of each architecture, so that
/// the orchestrator and the agent interleave on two CPUs (on x86_64 TCG the two take turns
/// in one host thread, see [`Arch::machine_args`]).
pub const MATRIX: [Run; 6] = [
    Run {
        name: "x86_64-5.10",
        arch: Arch::X86_64,
        series: BULLSEYE,
        cpus: 1,
        scenario: Scenario::Supervision {
            io_uring_disabled: None,
        },
    },
    Run {
        name: "x86_64-6.1",
        arch: Arch::X86_64,
        series: BOOKWORM,
        cpus: 1,
        scenario: Scenario::Supervision {
            io_uring_disabled: None,
        },
    },
    // As the AutoSD image ships it (docs/deploy.md, section 6): io_uring for root only.
    Run {
        name: "x86_64-6.12",
        arch: Arch::X86_64,
        series: TRIXIE,
        cpus: 2,
        scenario: Scenario::Supervision {
            io_uring_disabled: Some(1),
        },
    },
    Run {
        name: "x86_64-6.12-io_uring_disabled",
        arch: Arch::X86_64,
        series: TRIXIE,
        cpus: 1,
        scenario: Scenario::IoUringDisabled,
    },
    Run {
        name: "x86_64-6.12-cgroup",
        arch: Arch::X86_64,
        series: TRIXIE,
        cpus: 2,
        scenario: Scenario::CgroupLimits,
    },
    Run {
        name: "aarch64-6.12",
        arch: Arch::Aarch64,
        series: TRIXIE,
        cpus: 2,
        scenario: Scenario::Supervision {
            io_uring_disabled: None,
        },
    },
];

/// The run of a plain `cargo xtask vm-test`: Debian 12's kernel, as before the matrix.
pub const DEFAULT_RUN: &str = "x86_64-6.1";

pub fn find(name: &str) -> Option<&'static Run> {
    MATRIX.iter().find(|r| r.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_covers_what_holden_ships_for() {
        let kernels = |arch| {
            MATRIX
                .iter()
                .filter(|r| r.arch == arch)
                .map(|r| r.series.version)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            kernels(Arch::X86_64),
            [(5, 10), (6, 1), (6, 12), (6, 12), (6, 12)]
        );
        assert_eq!(kernels(Arch::Aarch64), [(6, 12)]);
        for arch in [Arch::X86_64, Arch::Aarch64] {
            assert!(
                MATRIX.iter().any(|r| r.arch == arch && r.cpus >= 2),
                "{arch:?}: no run with two vCPUs"
            );
        }
        assert_eq!(
            MATRIX
                .iter()
                .filter(|r| r.scenario == Scenario::IoUringDisabled)
                .count(),
            1
        );
        // kernel.io_uring_disabled exists since 6.6.
        for r in MATRIX.iter().filter(|r| {
            matches!(
                r.scenario,
                Scenario::IoUringDisabled
                    | Scenario::Supervision {
                        io_uring_disabled: Some(_)
                    }
            )
        }) {
            assert!(
                r.series.version >= super::super::probe::IO_URING_DISABLED_KERNEL,
                "{}",
                r.name
            );
        }
        assert!(find(DEFAULT_RUN).is_some());
        let mut names: Vec<_> = MATRIX.iter().map(|r| r.name).collect();
        names.dedup();
        assert_eq!(names.len(), MATRIX.len());
    }

    #[test]
    fn the_scenario_reaches_the_guest_on_its_command_line() {
        assert_eq!(
            Scenario::IoUringDisabled.cmdline(),
            "holden.scenario=io-uring-disabled holden.io_uring_disabled=2"
        );
        assert_eq!(
            Scenario::Supervision {
                io_uring_disabled: Some(1)
            }
            .cmdline(),
            "holden.scenario=supervision holden.io_uring_disabled=1"
        );
    }
}
