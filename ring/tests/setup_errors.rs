//! Construction failures name the cause. A seccomp filter installed on the test's own thread
//! (not the process: no TSYNC) makes io_uring_setup fail the way a container profile would.

use ring::{Limits, Ring, SetupError};

/// Installs a filter on the calling thread: io_uring_setup returns `-errno`, all else allowed.
fn deny_io_uring_setup_on_this_thread(errno: u32) {
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xC000_00B7;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    let mut program = [
        stmt(load, 4), // seccomp_data.arch
        jeq(AUDIT_ARCH, 1, 0),
        stmt(ret, SECCOMP_RET_ALLOW),
        stmt(load, 0), // seccomp_data.nr
        jeq(libc::SYS_io_uring_setup as u32, 0, 1),
        stmt(ret, SECCOMP_RET_ERRNO | errno),
        stmt(ret, SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: NO_NEW_PRIVS then a filter for this thread only; `fprog` outlives the calls.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const _
            ),
            0,
            "seccomp: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn sysctl_allows_io_uring() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").map_or(true, |v| v.trim() == "0")
}

#[test]
fn eperm_from_seccomp_is_reported_as_not_permitted() {
    let handle = std::thread::spawn(|| {
        deny_io_uring_setup_on_this_thread(libc::EPERM as u32);
        Ring::new(Limits::small()).err()
    });
    let error = handle
        .join()
        .unwrap()
        .expect("io_uring_setup must fail under the filter");
    if sysctl_allows_io_uring() {
        assert_eq!(error, SetupError::NotPermitted);
        assert!(error.to_string().contains("seccomp"), "{error}");
    } else {
        assert!(matches!(error, SetupError::Disabled { .. }), "{error}");
    }
}

#[test]
fn enosys_is_reported_as_not_implemented() {
    let handle = std::thread::spawn(|| {
        deny_io_uring_setup_on_this_thread(libc::ENOSYS as u32);
        Ring::new(Limits::small()).err()
    });
    let error = handle
        .join()
        .unwrap()
        .expect("io_uring_setup must fail under the filter");
    assert_eq!(error, SetupError::NotImplemented);
    assert!(error.to_string().contains("ENOSYS"), "{error}");
}

#[test]
fn invalid_limits_name_the_field() {
    let cases = [
        Limits {
            slots: 0,
            ..Limits::small()
        },
        Limits {
            slots: ring::SLOTS_MAX + 1,
            ..Limits::small()
        },
        Limits {
            fds_per_msg_max: 0,
            ..Limits::small()
        },
        Limits {
            fds_per_msg_max: ring::FDS_PER_MSG_MAX as u32 + 1,
            ..Limits::small()
        },
        Limits {
            recv_len: ring::BUF_LEN_MAX + 1,
            ..Limits::small()
        },
        Limits {
            sq_entries: 0,
            ..Limits::small()
        },
        Limits {
            completions_per_wait_max: 0,
            ..Limits::small()
        },
    ];
    for limits in cases {
        match Ring::new(limits) {
            Err(SetupError::Limits(what)) => assert!(!what.is_empty()),
            Err(other) => panic!("{limits:?}: expected a limits error, got {other}"),
            Ok(_) => panic!("{limits:?}: accepted"),
        }
    }
}

#[test]
fn cq_covers_every_op_and_cancel_in_flight() {
    let limits = Limits {
        slots: 100,
        buffered_slots: 40,
        sq_entries: 8,
        ..Limits::small()
    };
    let ring = Ring::new(limits).unwrap();
    assert!(ring.cq_entries() as u64 >= limits.cq_entries_needed());
    // A buffered slot may run all 6 kinds, a bare one 3; each may also have a cancel in flight.
    assert_eq!(limits.cq_entries_needed(), (40 * 6 + 60 * 3) * 2);
}

#[test]
fn disabled_message_names_the_sysctl_and_the_group() {
    let text = SetupError::Disabled {
        sysctl: 1,
        group: Some(1234),
    }
    .to_string();
    assert!(
        text.contains("kernel.io_uring_disabled=1") && text.contains("1234"),
        "{text}"
    );
    let text = SetupError::Disabled {
        sysctl: 2,
        group: None,
    }
    .to_string();
    assert!(text.contains("io_uring_disabled=0"), "{text}");
}
