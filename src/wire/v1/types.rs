//! The small value types of holden wire v1: frame kinds, error stages, flags and capabilities.

use bitflags::bitflags;

/// The kind byte of a frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[repr(u8)]
pub enum FrameKind {
    /// Orchestrator to agent: start one process.
    Start = 1,
    /// Agent to orchestrator: the process runs; its pidfd travels with this packet.
    Started = 2,
    /// Agent to orchestrator: a request failed.
    Error = 3,
    /// Orchestrator to agent: are you there, what do you speak?
    Ping = 4,
    /// Agent to orchestrator: the answer to `Ping`.
    Pong = 5,
    /// Agent to orchestrator (minor 1+): the process of this request, announced by `Started`,
    /// exec'd the requested program.
    Running = 6,
    /// Agent to orchestrator (minor 2+), unsolicited (request id 0): an sd_notify datagram a
    /// process sent to the agent's notify socket, with the sender's pid.
    Notify = 7,
}

impl FrameKind {
    /// Maps a header kind byte to a kind, `None` for an unknown byte.
    pub fn from_u8(kind: u8) -> Option<FrameKind> {
        match kind {
            1 => Some(FrameKind::Start),
            2 => Some(FrameKind::Started),
            3 => Some(FrameKind::Error),
            4 => Some(FrameKind::Ping),
            5 => Some(FrameKind::Pong),
            6 => Some(FrameKind::Running),
            7 => Some(FrameKind::Notify),
            _ => None,
        }
    }
}

/// Which step of a request failed, carried by an `Error` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[repr(u8)]
pub enum ErrorStage {
    /// `fork`/`clone3` failed.
    Fork = 1,
    /// `execve` failed in the child (errno from the child).
    Exec = 2,
    /// Obtaining or sending the pidfd failed.
    Pidfd = 3,
    /// The request asked for a uid/gid or path the agent may not use, or setting it failed.
    Permission = 4,
    /// The frame could not be decoded.
    Decode = 5,
    /// The frame's major version is not spoken by the receiver.
    Version = 6,
    /// A count or length exceeds a limit (too many entries, too long).
    Limit = 7,
    /// The receiver failed for a reason of its own.
    Internal = 8,
    /// Preparing the child before `execve` failed: `chdir`, `setsid`, stdio redirection.
    Setup = 9,
}

impl ErrorStage {
    /// Maps a stage byte to a stage, `None` for an unknown byte.
    pub fn from_u8(stage: u8) -> Option<ErrorStage> {
        match stage {
            1 => Some(ErrorStage::Fork),
            2 => Some(ErrorStage::Exec),
            3 => Some(ErrorStage::Pidfd),
            4 => Some(ErrorStage::Permission),
            5 => Some(ErrorStage::Decode),
            6 => Some(ErrorStage::Version),
            7 => Some(ErrorStage::Limit),
            8 => Some(ErrorStage::Internal),
            9 => Some(ErrorStage::Setup),
            _ => None,
        }
    }

    /// A short lowercase name for messages and logs.
    pub fn name(self) -> &'static str {
        match self {
            ErrorStage::Fork => "fork",
            ErrorStage::Exec => "exec",
            ErrorStage::Pidfd => "pidfd",
            ErrorStage::Permission => "permission",
            ErrorStage::Decode => "decode",
            ErrorStage::Version => "version",
            ErrorStage::Limit => "limit",
            ErrorStage::Internal => "internal",
            ErrorStage::Setup => "setup",
        }
    }
}

bitflags! {
    /// Flags of a `Start` request. A receiver refuses unknown bits (a start must never be
    /// half understood): a sender uses a bit only after the peer's `Pong` version has it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct StartFlags: u32 {
        /// Call `setsid()` in the child before `execve`.
        const NEW_SESSION = 1 << 0;
        /// Connect the child's stdin, stdout and stderr to `/dev/null`.
        const STDIO_NULL = 1 << 1;
        /// Start from the agent's own environment and add/override the `Start` entries; without
        /// this flag the child's environment is exactly the `Start` entries.
        const INHERIT_ENV = 1 << 2;
        /// (Minor 2+.) The child gets `NOTIFY_SOCKET` naming the agent's notify socket (it
        /// replaces one in the request), and what it sends there is forwarded as `Notify`.
        /// Only for an agent that announced `NOTIFY_FORWARD`.
        const NOTIFY = 1 << 3;
        /// (Minor 2+.) The child is created in a cgroup of its own, named by the `cgroup`
        /// field that follows the environment, under the agent's delegated cgroup. Only for
        /// an agent that announced `CGROUPS`.
        const CGROUP = 1 << 4;
        /// (Minor 2+.) The child gets the execution environment of the `exec` section that
        /// follows (the `cgroup`, or) the environment: resource limits, umask, OOM score,
        /// nice, scheduling, CPU affinity, `no_new_privs`, supplementary groups,
        /// capabilities. Only for an agent that announced `EXEC_ENV`.
        const EXEC_ENV = 1 << 5;
        /// (Minor 2+, only with `CGROUP`.) The agent writes the limits of the
        /// `cgroup_limits` section that follows (after `exec`, if any) into the child's own
        /// cgroup before it starts the child. Only for an agent that announced `CGROUPS`.
        const CGROUP_LIMITS = 1 << 6;
    }
}

bitflags! {
    /// What an agent can do, announced in `Pong`. Unknown bits are kept, not refused: they
    /// come from a newer agent and only say what it offers.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Capabilities: u32 {
        /// The agent reaps its children at once (SIGCHLD ignored), so the exit status of a
        /// started process is readable through `PIDFD_GET_INFO`/`PIDFD_INFO_EXIT` (Linux 6.15+).
        const EXIT_STATUS_VIA_PIDFD = 1 << 0;
        /// The agent also serves the legacy v0.2 protocol on a separate SOCK_STREAM listener.
        const LEGACY_LISTENER = 1 << 1;
        /// The agent gets the pidfd atomically with the fork (`clone3(CLONE_PIDFD)`), so there
        /// is no PID-reuse window.
        const CLONE3_PIDFD = 1 << 2;
        /// Gated exec (minor 1+): to a `Start` from a minor-1 orchestrator the agent answers
        /// `Started` (+ pidfd) *before* the process execs, and the process execs only after that
        /// packet was sent; then `Running` or `Error` (stage `exec`) follows. An agent that dies
        /// in between never leaves an unsupervised program running.
        const GATED_EXEC = 1 << 3;
        /// (Minor 2+.) The agent has a notify socket: it honours `StartFlags::NOTIFY` and
        /// forwards the datagrams sent to that socket as `Notify` frames to every connection
        /// whose requests say minor 2 or higher.
        const NOTIFY_FORWARD = 1 << 4;
        /// (Minor 2+.) The agent has a cgroup v2 subtree of its own: it honours
        /// `StartFlags::CGROUP`.
        const CGROUPS = 1 << 5;
        /// (Minor 2+.) The agent honours `StartFlags::EXEC_ENV`: it applies each part of the
        /// `exec` section in the child before `execve`, and a part the kernel refuses fails the
        /// start (`Error` stage `setup`, the kernel's errno, the step in the text).
        const EXEC_ENV = 1 << 6;
    }
}

/// The payload of a `Pong`: the agent's protocol version and capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Pong {
    /// Highest major version the agent speaks.
    pub version_major: u8,
    /// Highest minor version of that major the agent speaks.
    pub version_minor: u8,
    /// What the agent can do.
    #[cfg_attr(feature = "arbitrary", arbitrary(with = arbitrary_capabilities))]
    pub capabilities: Capabilities,
}

impl Pong {
    /// The `Pong` this code would send: our version and the given capabilities.
    pub fn ours(capabilities: Capabilities) -> Pong {
        Pong {
            version_major: super::limits::VERSION_MAJOR,
            version_minor: super::limits::VERSION_MINOR,
            capabilities,
        }
    }
}

#[cfg(feature = "arbitrary")]
fn arbitrary_capabilities(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Capabilities> {
    Ok(Capabilities::from_bits_retain(u.arbitrary()?))
}

/// Arbitrary start flags: mostly known bits, sometimes unknown ones (which encode refuses).
#[cfg(feature = "arbitrary")]
pub(crate) fn arbitrary_start_flags(
    u: &mut arbitrary::Unstructured<'_>,
) -> arbitrary::Result<StartFlags> {
    let bits: u32 = u.arbitrary()?;
    let bits = if bits & 0x8000_0000 != 0 {
        bits
    } else {
        bits & StartFlags::all().bits()
    };
    Ok(StartFlags::from_bits_retain(bits))
}
