//! Creating the io_uring instance: limits, the setup call, feature and opcode probing, and the
//! diagnosis of why it failed.

use io_uring::{opcode, IoUring, Probe};

use crate::{Errno, Limits, SetupError};

/// Opcodes holden needs, with their `IORING_OP_*` names for the error message.
const REQUIRED_OPCODES: [(u8, &str); 8] = [
    (opcode::PollAdd::CODE, "POLL_ADD"),
    (opcode::RecvMsg::CODE, "RECVMSG"),
    (opcode::SendMsg::CODE, "SENDMSG"),
    (opcode::Accept::CODE, "ACCEPT"),
    (opcode::Read::CODE, "READ"),
    (opcode::Timeout::CODE, "TIMEOUT"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    (opcode::TimeoutRemove::CODE, "TIMEOUT_REMOVE"),
];

pub(crate) fn create(limits: &Limits) -> Result<IoUring, SetupError> {
    limits.validate().map_err(SetupError::Limits)?;
    let uring = IoUring::builder()
        .setup_cqsize(limits.cq_entries_effective())
        .build(limits.sq_entries)
        .map_err(|e| diagnose(Errno::from_io(&e)))?;
    let params = uring.params();
    if !params.is_feature_nodrop() {
        return Err(SetupError::MissingFeature("IORING_FEAT_NODROP (Linux 5.5)"));
    }
    if !params.is_feature_ext_arg() {
        return Err(SetupError::MissingFeature(
            "IORING_FEAT_EXT_ARG (Linux 5.11)",
        ));
    }
    if (params.cq_entries() as u64) < limits.cq_entries_needed() {
        return Err(SetupError::Limits(
            "kernel granted a smaller completion queue than needed",
        ));
    }
    let mut probe = Probe::new();
    uring
        .submitter()
        .register_probe(&mut probe)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) => SetupError::MissingFeature("IORING_REGISTER_PROBE (Linux 5.6)"),
            _ => SetupError::Setup(Errno::from_io(&e)),
        })?;
    for (code, name) in REQUIRED_OPCODES {
        if !probe.is_supported(code) {
            return Err(SetupError::MissingOpcode(name));
        }
    }
    Ok(uring)
}

/// Turns the errno of `io_uring_setup` into a cause the operator can act on.
pub(crate) fn diagnose(errno: Errno) -> SetupError {
    match errno.0 {
        libc::EPERM => match read_sysctl("/proc/sys/kernel/io_uring_disabled") {
            Some(value) if value > 0 => SetupError::Disabled {
                sysctl: value as u32,
                group: read_sysctl("/proc/sys/kernel/io_uring_group"),
            },
            _ => SetupError::NotPermitted,
        },
        libc::ENOSYS => SetupError::NotImplemented,
        libc::ENOMEM => SetupError::NoMemory,
        _ => SetupError::Setup(errno),
    }
}

/// Reads one integer sysctl; `None` when it does not exist (older kernels) or is unreadable.
fn read_sysctl(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}
