//! holden wire v1: golden bytes (pinning docs/wire.md), round trips, limits, every error
//! variant, version handling, and never-panics properties over random and mutated packets.

use holden::cgroup::{CgroupLimit, CgroupLimits, CGROUP_LIMIT_KEYS};
use holden::spawn::{
    CpuSet, ExecEnv, Groups, OomScoreAdj, Rlimit, SchedPolicy, CPU_MAX, GROUPS_MAX,
};
use holden::wire::v1::{
    clamp_error_text, decode, decode_header, encode_error, encode_notify, encode_ping, encode_pong,
    encode_running, encode_start, encode_started, header_offset, payload_offset, peek_request_id,
    Body, Capabilities, DecodeError, EncodeError, ErrorStage, FrameKind, OwnedBody, OwnedError,
    OwnedFrame, OwnedStart, Pong, StartFlags, StartRef, ARGV_COUNT_MAX, ENV_COUNT_MAX,
    ERROR_TEXT_LEN_MAX, FRAME_LEN_MAX, HEADER_LEN, MAGIC, NOTIFY_TEXT_LEN_MAX, START_FIXED_LEN,
    STRING_LEN_MAX, VERSION_MAJOR, VERSION_MINOR,
};
use proptest::prelude::*;
use std::collections::BTreeSet;

const NO_STRINGS: &[&[u8]] = &[];

fn buf() -> Vec<u8> {
    vec![0u8; FRAME_LEN_MAX]
}

/// Parses the hex dumps used in the golden tests (whitespace and `|` ignored).
fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn encode_owned(frame: &OwnedFrame) -> Vec<u8> {
    let mut out = buf();
    let len = frame.encode(&mut out).expect("valid frame encodes");
    out.truncate(len);
    out
}

fn roundtrip(frame: &OwnedFrame) -> OwnedFrame {
    decode(&encode_owned(frame))
        .expect("encoded frame decodes")
        .to_owned_frame()
}

fn start_frame(start: OwnedStart) -> OwnedFrame {
    OwnedFrame {
        request_id: 7,
        body: OwnedBody::Start(start),
    }
}

fn simple_start() -> OwnedStart {
    OwnedStart {
        flags: StartFlags::empty(),
        uid: None,
        gid: None,
        cwd: None,
        argv: vec![b"/bin/true".to_vec()],
        env: vec![],
        cgroup: None,
        exec: None,
        cgroup_limits: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Golden bytes, read from the `hex <name>` blocks of docs/wire.md, so the page and the code
// cannot drift: each block must be exactly what the encoder writes.

const WIRE_MD: &str = include_str!("../docs/wire.md");

/// The bytes of the fenced block opened by "```hex <name>" in docs/wire.md; each line holds hex
/// byte pairs, optionally followed by a `//` comment.
fn doc_block(name: &str) -> Vec<u8> {
    let fence = format!("```hex {name}\n");
    let start = WIRE_MD
        .find(&fence)
        .unwrap_or_else(|| panic!("docs/wire.md has no block {fence:?}"))
        + fence.len();
    let len = WIRE_MD[start..].find("```").expect("unterminated block");
    let mut text = String::new();
    for line in WIRE_MD[start..start + len].lines() {
        let bytes = line.split("//").next().unwrap();
        for token in bytes.split_whitespace() {
            assert!(
                token.len() == 2 && token.bytes().all(|b| b.is_ascii_hexdigit()),
                "block {name}: bad token {token:?}"
            );
            text.push_str(token);
        }
    }
    hex(&text)
}

fn golden(name: &str) -> Vec<u8> {
    doc_block(name)
}

/// Sets `flag` in the `Start` packet `bytes` and appends `section` after its last field,
/// fixing the header's payload length: a packet for one rule of a section.
fn append_section(bytes: &mut Vec<u8>, flag: StartFlags, section: &[u8]) {
    let flags = u32::from_le_bytes(bytes[HEADER_LEN..HEADER_LEN + 4].try_into().unwrap());
    bytes[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&(flags | flag.bits()).to_le_bytes());
    bytes.extend_from_slice(section);
    let len = (bytes.len() - HEADER_LEN) as u32;
    bytes[header_offset::PAYLOAD_LEN..header_offset::PAYLOAD_LEN + 4]
        .copy_from_slice(&len.to_le_bytes());
}

/// `start` with `section` appended under `flag`, decoded.
fn decode_with_section(
    start: OwnedStart,
    flag: StartFlags,
    section: &[u8],
) -> Result<OwnedFrame, DecodeError> {
    let mut out = buf();
    let len = start_frame(start).encode(&mut out).unwrap();
    let mut bytes = out[..len].to_vec();
    append_section(&mut bytes, flag, section);
    decode(&bytes).map(|f| f.to_owned_frame())
}

/// `start`, encoded with `request_id`, is the bytes of the docs' `name` block (`len` of them)
/// and decodes back to itself.
fn assert_golden_start<A: AsRef<[u8]>, E: AsRef<[u8]>>(
    name: &str,
    request_id: u64,
    start: &StartRef<'_, A, E>,
    len: usize,
) -> OwnedStart {
    let mut out = buf();
    let encoded = encode_start(&mut out, request_id, start).unwrap();
    assert_eq!(&out[..encoded], &golden(name)[..]);
    assert_eq!(encoded, len);
    let packet = golden(name);
    let Body::Start(decoded) = decode(&packet).unwrap().body else {
        panic!("not a Start")
    };
    decoded.to_owned_start()
}

#[test]
fn golden_start() {
    let argv: &[&[u8]] = &[b"/bin/echo", b"hi"];
    let env: Vec<Vec<u8>> = vec![b"A=1".to_vec()];
    let start = StartRef {
        argv,
        env: &env,
        cwd: Some(b"/tmp"),
        uid: Some(1000),
        gid: None,
        flags: StartFlags::NEW_SESSION,
        cgroup: None,
        exec: None,
        cgroup_limits: None,
    };
    let mut out = buf();
    let len = encode_start(&mut out, 42, &start).unwrap();
    assert_eq!(&out[..len], &golden("start")[..]);
    assert_eq!(len, 68);

    let packet = golden("start");
    let frame = decode(&packet).unwrap();
    assert_eq!(frame.request_id(), 42);
    assert_eq!(frame.header.kind, FrameKind::Start);
    assert_eq!(frame.header.payload_len, 44);
    let Body::Start(start) = frame.body else {
        panic!("not a Start: {frame:?}")
    };
    assert_eq!(start.flags, StartFlags::NEW_SESSION);
    assert_eq!(start.uid, Some(1000));
    assert_eq!(start.gid, None);
    assert_eq!(start.cwd, Some(&b"/tmp"[..]));
    assert_eq!(start.argv.len(), 2);
    assert_eq!(
        start.argv.iter().collect::<Vec<_>>(),
        vec![&b"/bin/echo"[..], &b"hi"[..]]
    );
    assert_eq!(start.env.iter().collect::<Vec<_>>(), vec![&b"A=1"[..]]);
}

/// The `exec` section's worked example (docs/wire.md §5a).
fn example_exec() -> ExecEnv {
    let mut exec = ExecEnv::default();
    exec.rlimits[libc::RLIMIT_NOFILE as usize] = Some(Rlimit {
        soft: 1024,
        hard: 4096,
    });
    exec.nice = Some(-5);
    exec.sched = Some((SchedPolicy::Fifo, 10));
    exec.no_new_privs = true;
    exec
}

#[test]
fn golden_start_with_an_execution_environment() {
    let exec = example_exec();
    let argv: &[&[u8]] = &[b"/usr/bin/can-gw"];
    let start = StartRef {
        argv,
        env: NO_STRINGS,
        cwd: None,
        uid: None,
        gid: None,
        flags: StartFlags::NEW_SESSION | StartFlags::EXEC_ENV,
        cgroup: None,
        exec: Some(&exec),
        cgroup_limits: None,
    };
    let decoded = assert_golden_start("start-exec", 7, &start, 84);
    assert_eq!(decoded.exec.as_deref(), Some(&exec));
    let packet = golden("start-exec");
    // Without the flag the section is trailing bytes; without the section the flag is refused
    // by the encoder.
    let mut no_flag = packet.clone();
    no_flag[HEADER_LEN] = 0x01;
    assert!(matches!(
        decode(&no_flag),
        Err(DecodeError::TrailingBytes { .. })
    ));
}

/// Each rule of the `exec` section (docs/wire.md §5a), broken one at a time after a valid
/// Start: every one is `BadExecEnv`, a cut-off section is `Truncated`.
#[test]
fn every_rule_of_the_exec_section_is_checked() {
    let with_section =
        |section: &[u8]| decode_with_section(simple_start(), StartFlags::EXEC_ENV, section);
    let u64s =
        |values: &[u64]| -> Vec<u8> { values.iter().flat_map(|v| v.to_le_bytes()).collect() };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0, 0, 0, 0], "sets nothing"),
        (vec![0x00, 0x04, 0, 0], "unknown fields bits"),
        (
            [vec![0, 0, 1, 0], u64s(&[5, 4])].concat(),
            "a soft limit above its hard limit",
        ),
        (vec![0x01, 0, 0, 0, 0x00, 0x02], "umask above 0o777"),
        (
            vec![0x02, 0, 0, 0, 0xe9, 0x03],
            "oom_score_adj outside -1000..=1000",
        ),
        (vec![0x04, 0, 0, 0, 20], "nice outside -20..=19"),
        (vec![0x08, 0, 0, 0, 7, 1], "an unknown scheduling policy"),
        (
            vec![0x08, 0, 0, 0, 1, 0],
            "a scheduling priority its policy does not take",
        ),
        (
            vec![0x08, 0, 0, 0, 0, 5],
            "a scheduling priority its policy does not take",
        ),
        (
            vec![0x10, 0, 0, 0, 0],
            "a CPU affinity of 0 or more than 16 words",
        ),
        (
            vec![0x10, 0, 0, 0, 17],
            "a CPU affinity of 0 or more than 16 words",
        ),
        (
            [vec![0x10, 0, 0, 0, 2], u64s(&[1, 0])].concat(),
            "a CPU affinity whose last word is zero",
        ),
        (vec![0x40, 0, 0, 0, 65], "more than 64 supplementary groups"),
    ];
    for (section, what) in cases {
        assert_eq!(
            with_section(&section),
            Err(DecodeError::BadExecEnv { what }),
            "{section:02x?}"
        );
    }
    assert!(matches!(
        with_section(&[0x80, 0, 0, 0, 1, 2, 3]),
        Err(DecodeError::Truncated { .. })
    ));
    // The edges of each range are taken.
    let edges = [
        vec![0x01, 0, 0, 0, 0xff, 0x01],
        vec![0x02, 0, 0, 0, 0x18, 0xfc],
        vec![0x04, 0, 0, 0, 0xec],
        vec![0x08, 0, 0, 0, 2, 99],
        [vec![0x10, 0, 0, 0, 16], u64s(&[0; 15]), u64s(&[1 << 63])].concat(),
        [vec![0x40, 0, 0, 0, 64], vec![0; 256]].concat(),
        // no_new_privs and watchdog_pid: parts without bytes.
        vec![0x20, 0x02, 0, 0],
    ];
    for section in edges {
        assert!(with_section(&section).is_ok(), "{section:02x?}");
    }
}

/// The `cgroup_limits` section's worked example (docs/wire.md §5b): memory_max 32M, pids_max 64.
fn example_limits() -> CgroupLimits {
    let mut limits = CgroupLimits::default();
    for (key, value) in [("memory_max", "33554432"), ("pids_max", "64")] {
        limits.limits.push(CgroupLimit::new(key, value).unwrap());
    }
    limits
}

#[test]
fn golden_start_with_cgroup_limits() {
    let limits = example_limits();
    let argv: &[&[u8]] = &[b"/usr/bin/nav"];
    let start = StartRef {
        argv,
        env: NO_STRINGS,
        cwd: None,
        uid: None,
        gid: None,
        flags: StartFlags::NEW_SESSION | StartFlags::CGROUP | StartFlags::CGROUP_LIMITS,
        cgroup: Some(b"nav"),
        exec: None,
        cgroup_limits: Some(&limits),
    };
    let decoded = assert_golden_start("start-cgroup-limits", 8, &start, 80);
    assert_eq!(decoded.cgroup.as_deref(), Some(&b"nav"[..]));
    assert_eq!(decoded.cgroup_limits.as_deref(), Some(&limits));
}

/// Each rule of the `cgroup_limits` section, broken one at a time after a valid Start with a
/// cgroup: every one is `BadCgroupLimits`.
#[test]
fn every_rule_of_the_cgroup_limits_section_is_checked() {
    let with_cgroup = || OwnedStart {
        flags: StartFlags::CGROUP,
        cgroup: Some(b"nav".to_vec()),
        ..simple_start()
    };
    let with_section =
        |section: &[u8]| decode_with_section(with_cgroup(), StartFlags::CGROUP_LIMITS, section);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0], "0 or more than 6 limits"),
        (vec![7], "0 or more than 6 limits"),
        (vec![1, 6, 1, 0, b'1'], "an unknown limit file"),
        (
            vec![2, 4, 1, 0, b'1', 0, 1, 0, b'1'],
            "limits out of order or twice",
        ),
        (
            vec![2, 4, 1, 0, b'1', 4, 1, 0, b'1'],
            "limits out of order or twice",
        ),
        (
            vec![1, 0, 0, 0],
            "a value that is not 1..=48 bytes of [0-9a-z ]",
        ),
        (
            vec![1, 0, 1, 0, b'M'],
            "a value that is not 1..=48 bytes of [0-9a-z ]",
        ),
        (
            vec![1, 0, 1, 0, b'\n'],
            "a value that is not 1..=48 bytes of [0-9a-z ]",
        ),
        (
            [vec![1, 0, 49, 0], vec![b'1'; 49]].concat(),
            "a value that is not 1..=48 bytes of [0-9a-z ]",
        ),
    ];
    for (section, what) in cases {
        assert_eq!(
            with_section(&section),
            Err(DecodeError::BadCgroupLimits { what }),
            "{section:02x?}"
        );
    }
    assert!(with_section(&[
        1, 3, 12, 0, b'5', b'0', b'0', b'0', b'0', b' ', b'1', b'0', b'0', b'0', b'0', b'0'
    ])
    .is_ok());
    assert!(with_section(
        &[1, 5, 48, 0]
            .iter()
            .copied()
            .chain([b'9'; 48])
            .collect::<Vec<_>>()
    )
    .is_ok());
}

#[test]
fn golden_started() {
    let mut out = buf();
    let len = encode_started(&mut out, 42, 1234).unwrap();
    assert_eq!(&out[..len], &golden("started")[..]);
    let packet = golden("started");
    let frame = decode(&packet).unwrap();
    assert_eq!(frame.request_id(), 42);
    assert_eq!(
        frame.body,
        Body::Started(holden::wire::v1::Started { pid: 1234 })
    );
}

#[test]
fn golden_error() {
    let mut out = buf();
    let len = encode_error(&mut out, 42, libc::ENOENT, ErrorStage::Exec, b"not found").unwrap();
    assert_eq!(&out[..len], &golden("error")[..]);
    let packet = golden("error");
    let frame = decode(&packet).unwrap();
    let Body::Error(error) = frame.body else {
        panic!("not an Error: {frame:?}")
    };
    assert_eq!(error.errno, libc::ENOENT);
    assert_eq!(error.stage, ErrorStage::Exec);
    assert_eq!(error.text, b"not found");
}

#[test]
fn golden_ping() {
    let mut out = buf();
    let len = encode_ping(&mut out, 1).unwrap();
    assert_eq!(&out[..len], &golden("ping")[..]);
    assert_eq!(len, HEADER_LEN);
    assert_eq!(decode(&golden("ping")).unwrap().body, Body::Ping);
}

#[test]
fn golden_pong() {
    let pong = Pong::ours(
        Capabilities::EXIT_STATUS_VIA_PIDFD
            | Capabilities::CLONE3_PIDFD
            | Capabilities::GATED_EXEC
            | Capabilities::NOTIFY_FORWARD,
    );
    let mut out = buf();
    let len = encode_pong(&mut out, 1, pong).unwrap();
    assert_eq!(&out[..len], &golden("pong")[..]);
    assert_eq!(decode(&golden("pong")).unwrap().body, Body::Pong(pong));
}

#[test]
fn golden_running() {
    let mut out = buf();
    let len = encode_running(&mut out, 42).unwrap();
    let packet = golden("running");
    assert_eq!(&out[..len], &packet[..]);
    assert_eq!(len, HEADER_LEN);
    let frame = decode(&packet).unwrap();
    assert_eq!(frame.request_id(), 42);
    assert_eq!(frame.header.kind, FrameKind::Running);
    assert_eq!(frame.body, Body::Running);
}

#[test]
fn golden_notify() {
    let mut out = buf();
    let len = encode_notify(&mut out, 1234, b"READY=1").unwrap();
    let packet = golden("notify");
    assert_eq!(&out[..len], &packet[..]);
    let frame = decode(&packet).unwrap();
    assert_eq!(frame.request_id(), 0);
    let Body::Notify(notify) = frame.body else {
        panic!("{frame:?}");
    };
    assert_eq!((notify.pid, notify.text), (1234, b"READY=1".as_slice()));
}

#[test]
fn notify_refusals() {
    let packet = golden("notify");
    // A request id: it answers no request.
    let mut bytes = packet.clone();
    bytes[header_offset::REQUEST_ID] = 5;
    assert_eq!(decode(&bytes), Err(DecodeError::NotifyRequestId { id: 5 }));
    // pid 0 (a sender the agent could not see) and a negative pid.
    for pid in [0i32, -1] {
        let mut bytes = packet.clone();
        bytes[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&pid.to_le_bytes());
        assert_eq!(decode(&bytes), Err(DecodeError::InvalidPid { pid }));
        assert_eq!(
            encode_notify(&mut buf(), pid, b"x"),
            Err(EncodeError::InvalidPid { pid })
        );
    }
    // The reserved u16.
    let mut bytes = packet.clone();
    bytes[HEADER_LEN + payload_offset::NOTIFY_RESERVED] = 1;
    assert!(matches!(
        decode(&bytes),
        Err(DecodeError::ReservedNotZero { .. })
    ));
    // A NUL in the datagram.
    let mut bytes = packet.clone();
    let last = bytes.len() - 1;
    bytes[last] = 0;
    assert_eq!(decode(&bytes), Err(DecodeError::NulInString));
    assert_eq!(
        encode_notify(&mut buf(), 1, b"READY=1\0"),
        Err(EncodeError::NulInString)
    );
    // The longest datagram fits, one byte more is refused both ways.
    let longest = vec![b'x'; NOTIFY_TEXT_LEN_MAX];
    let len = encode_notify(&mut buf(), 7, &longest).unwrap();
    assert_eq!(len, HEADER_LEN + 8 + NOTIFY_TEXT_LEN_MAX);
    let longer = vec![b'x'; NOTIFY_TEXT_LEN_MAX + 1];
    assert_eq!(
        encode_notify(&mut buf(), 7, &longer),
        Err(EncodeError::NotifyTextTooLong {
            len: NOTIFY_TEXT_LEN_MAX + 1
        })
    );
    let mut bytes = packet.clone();
    let at = HEADER_LEN + payload_offset::NOTIFY_TEXT_LEN;
    bytes[at..at + 2].copy_from_slice(&((NOTIFY_TEXT_LEN_MAX + 1) as u16).to_le_bytes());
    bytes.resize(HEADER_LEN + 8 + NOTIFY_TEXT_LEN_MAX + 1, b'x');
    fix_payload_len(&mut bytes);
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::NotifyTextTooLong {
            len: NOTIFY_TEXT_LEN_MAX + 1
        })
    );
    assert_eq!(
        DecodeError::NotifyTextTooLong { len: 1 }.stage(),
        ErrorStage::Limit
    );
    // An owned Notify with a request id cannot be encoded.
    let owned = OwnedFrame {
        request_id: 3,
        body: OwnedBody::Notify {
            pid: 1,
            text: b"READY=1".to_vec(),
        },
    };
    assert_eq!(
        owned.encode(&mut buf()),
        Err(EncodeError::NotifyRequestId { id: 3 })
    );
}

#[test]
fn running_with_a_payload_is_trailing_bytes() {
    let mut packet = golden("running");
    packet.push(0);
    packet[header_offset::PAYLOAD_LEN] = 1;
    assert!(matches!(
        decode(&packet),
        Err(DecodeError::TrailingBytes {
            kind: FrameKind::Running,
            count: 1
        })
    ));
}

#[test]
fn golden_constants() {
    assert_eq!(MAGIC, *b"HLDN");
    assert_eq!((VERSION_MAJOR, VERSION_MINOR), (1, 2));
    assert_eq!(Capabilities::GATED_EXEC.bits(), 1 << 3);
    assert_eq!(Capabilities::NOTIFY_FORWARD.bits(), 1 << 4);
    assert_eq!(StartFlags::NOTIFY.bits(), 1 << 3);
    assert_eq!(FrameKind::Notify as u8, 7);
    assert_eq!(NOTIFY_TEXT_LEN_MAX, 4096);
    assert_eq!(HEADER_LEN, 24);
    assert_eq!(FRAME_LEN_MAX, 16384);
    assert_eq!(ARGV_COUNT_MAX, 256);
    assert_eq!(ENV_COUNT_MAX, 256);
    assert_eq!(STRING_LEN_MAX, 4095);
    assert_eq!(ERROR_TEXT_LEN_MAX, 256);
    assert_eq!(START_FIXED_LEN, 20);
    let kinds = [
        (FrameKind::Start, 1),
        (FrameKind::Started, 2),
        (FrameKind::Error, 3),
        (FrameKind::Ping, 4),
        (FrameKind::Pong, 5),
        (FrameKind::Running, 6),
    ];
    for (kind, byte) in kinds {
        assert_eq!(kind as u8, byte);
        assert_eq!(FrameKind::from_u8(byte), Some(kind));
    }
    let stages = [
        (ErrorStage::Fork, 1, "fork"),
        (ErrorStage::Exec, 2, "exec"),
        (ErrorStage::Pidfd, 3, "pidfd"),
        (ErrorStage::Permission, 4, "permission"),
        (ErrorStage::Decode, 5, "decode"),
        (ErrorStage::Version, 6, "version"),
        (ErrorStage::Limit, 7, "limit"),
        (ErrorStage::Internal, 8, "internal"),
        (ErrorStage::Setup, 9, "setup"),
    ];
    for (stage, byte, name) in stages {
        assert_eq!(stage as u8, byte);
        assert_eq!(ErrorStage::from_u8(byte), Some(stage));
        assert_eq!(stage.name(), name);
    }
    assert_eq!(ErrorStage::from_u8(0), None);
    assert_eq!(ErrorStage::from_u8(10), None);
    assert_eq!(StartFlags::NEW_SESSION.bits(), 1);
    assert_eq!(StartFlags::STDIO_NULL.bits(), 2);
    assert_eq!(StartFlags::INHERIT_ENV.bits(), 4);
    assert_eq!(Capabilities::EXIT_STATUS_VIA_PIDFD.bits(), 1);
    assert_eq!(Capabilities::LEGACY_LISTENER.bits(), 2);
    assert_eq!(Capabilities::CLONE3_PIDFD.bits(), 4);
    assert_eq!(header_offset::REQUEST_ID, 8);
    assert_eq!(header_offset::PAYLOAD_LEN, 16);
    assert_eq!(payload_offset::START_ARGC, 14);
    assert_eq!(payload_offset::START_ENVC, 16);
    assert_eq!(payload_offset::START_CWD_LEN, 18);
    assert_eq!(payload_offset::ERROR_TEXT_LEN, 6);
}

// ---------------------------------------------------------------------------------------------
// Encoding straight from the orchestrator's owned storage, without building frames.

#[test]
fn encode_start_from_boxed_slices_and_strs() {
    let argv: Box<[Box<[u8]>]> = vec![b"sleep".to_vec().into_boxed_slice()].into_boxed_slice();
    let env = ["PATH=/usr/bin", "LANG=C"];
    let start = StartRef {
        argv: &argv,
        env: &env,
        cwd: None,
        uid: None,
        gid: Some(0),
        flags: StartFlags::STDIO_NULL | StartFlags::INHERIT_ENV,
        cgroup: None,
        exec: None,
        cgroup_limits: None,
    };
    let mut out = [0u8; 256];
    let len = encode_start(&mut out, u64::MAX, &start).unwrap();
    let frame = decode(&out[..len]).unwrap();
    assert_eq!(frame.request_id(), u64::MAX);
    let Body::Start(decoded) = frame.body else {
        panic!("not a Start")
    };
    assert_eq!(decoded.gid, Some(0));
    assert_eq!(decoded.uid, None);
    assert_eq!(
        decoded.env.iter().collect::<Vec<_>>(),
        vec![&b"PATH=/usr/bin"[..], &b"LANG=C"[..]]
    );
    assert_eq!(decoded.argv.iter().len(), 1);
}

#[test]
fn clamp_error_text_cuts_at_nul_and_limit_on_char_boundary() {
    assert_eq!(clamp_error_text(b"abc\0def"), b"abc");
    let long = vec![b'a'; ERROR_TEXT_LEN_MAX + 10];
    assert_eq!(clamp_error_text(&long).len(), ERROR_TEXT_LEN_MAX);
    // 255 ASCII bytes then a 2-byte character straddling the limit: cut before it.
    let mut text = vec![b'a'; ERROR_TEXT_LEN_MAX - 1];
    text.extend_from_slice("é and more".as_bytes());
    let clamped = clamp_error_text(&text);
    assert_eq!(clamped.len(), ERROR_TEXT_LEN_MAX - 1);
    assert!(std::str::from_utf8(clamped).is_ok());
    let mut out = buf();
    assert!(encode_error(&mut out, 1, 5, ErrorStage::Internal, clamped).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Limits, exactly at and one past.

fn start_with(argv: Vec<Vec<u8>>, env: Vec<Vec<u8>>, cwd: Option<Vec<u8>>) -> OwnedFrame {
    start_frame(OwnedStart {
        argv,
        env,
        cwd,
        ..simple_start()
    })
}

fn encode_err(frame: &OwnedFrame) -> EncodeError {
    frame
        .encode(&mut buf())
        .expect_err("frame should be refused")
}

#[test]
fn argv_count_limit() {
    let at = start_with(vec![b"a".to_vec(); ARGV_COUNT_MAX], vec![], None);
    assert_eq!(roundtrip(&at), at);
    let past = start_with(vec![b"a".to_vec(); ARGV_COUNT_MAX + 1], vec![], None);
    assert_eq!(
        encode_err(&past),
        EncodeError::ArgvTooMany {
            count: ARGV_COUNT_MAX + 1
        }
    );
    // Decoder side: patch the count of a frame at the limit and append one more entry.
    let mut bytes = encode_owned(&at);
    patch_u16(&mut bytes, HEADER_LEN + 14, ARGV_COUNT_MAX as u16 + 1);
    bytes.extend_from_slice(&[1, 0, b'a']);
    fix_payload_len(&mut bytes);
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::ArgvTooMany {
            count: ARGV_COUNT_MAX + 1
        })
    );
}

#[test]
fn env_count_limit() {
    let at = start_with(
        vec![b"x".to_vec()],
        vec![b"K=".to_vec(); ENV_COUNT_MAX],
        None,
    );
    assert_eq!(roundtrip(&at), at);
    let past = start_with(
        vec![b"x".to_vec()],
        vec![b"K=".to_vec(); ENV_COUNT_MAX + 1],
        None,
    );
    assert_eq!(
        encode_err(&past),
        EncodeError::EnvTooMany {
            count: ENV_COUNT_MAX + 1
        }
    );
    let mut bytes = encode_owned(&at);
    patch_u16(&mut bytes, HEADER_LEN + 16, ENV_COUNT_MAX as u16 + 1);
    bytes.extend_from_slice(&[2, 0, b'K', b'=']);
    fix_payload_len(&mut bytes);
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::EnvTooMany {
            count: ENV_COUNT_MAX + 1
        })
    );
}

#[test]
fn string_len_limit_in_argv_env_and_cwd() {
    let at = vec![b's'; STRING_LEN_MAX];
    let past = vec![b's'; STRING_LEN_MAX + 1];
    let mut env_at = b"K=".to_vec();
    env_at.resize(STRING_LEN_MAX, b'v');
    let mut env_past = env_at.clone();
    env_past.push(b'v');

    for frame in [
        start_with(vec![at.clone()], vec![], None),
        start_with(vec![b"x".to_vec()], vec![env_at.clone()], None),
        start_with(vec![b"x".to_vec()], vec![], Some(at.clone())),
    ] {
        assert_eq!(roundtrip(&frame), frame);
    }
    for frame in [
        start_with(vec![past.clone()], vec![], None),
        start_with(vec![b"x".to_vec()], vec![env_past], None),
        start_with(vec![b"x".to_vec()], vec![], Some(past.clone())),
    ] {
        assert_eq!(
            encode_err(&frame),
            EncodeError::StringTooLong {
                len: STRING_LEN_MAX + 1
            }
        );
    }

    // Decoder: an argv string of STRING_LEN_MAX + 1 bytes.
    let mut bytes = encode_owned(&start_with(vec![at.clone()], vec![], None));
    let prefix_at = HEADER_LEN + START_FIXED_LEN;
    patch_u16(&mut bytes, prefix_at, STRING_LEN_MAX as u16 + 1);
    bytes.push(b's');
    fix_payload_len(&mut bytes);
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::StringTooLong {
            len: STRING_LEN_MAX + 1
        })
    );
    // Decoder: a cwd of STRING_LEN_MAX + 1 bytes.
    let mut bytes = encode_owned(&start_with(vec![b"x".to_vec()], vec![], Some(at)));
    patch_u16(&mut bytes, HEADER_LEN + 18, STRING_LEN_MAX as u16 + 1);
    fix_payload_len(&mut bytes);
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::StringTooLong {
            len: STRING_LEN_MAX + 1
        })
    );
}

#[test]
fn error_text_limit() {
    let at = OwnedFrame {
        request_id: 3,
        body: OwnedBody::Error(OwnedError {
            errno: 0,
            stage: ErrorStage::Internal,
            text: vec![b't'; ERROR_TEXT_LEN_MAX],
        }),
    };
    assert_eq!(roundtrip(&at), at);
    let mut out = buf();
    assert_eq!(
        encode_error(
            &mut out,
            3,
            0,
            ErrorStage::Internal,
            &vec![b't'; ERROR_TEXT_LEN_MAX + 1]
        ),
        Err(EncodeError::ErrorTextTooLong {
            len: ERROR_TEXT_LEN_MAX + 1
        })
    );
    let mut bytes = encode_owned(&at);
    patch_u16(&mut bytes, HEADER_LEN + 6, ERROR_TEXT_LEN_MAX as u16 + 1);
    bytes.push(b't');
    fix_payload_len(&mut bytes);
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::ErrorTextTooLong {
            len: ERROR_TEXT_LEN_MAX + 1
        })
    );
}

/// A Start of exactly `frame_len` bytes: argv of one long entry plus filler entries.
fn start_of_len(frame_len: usize) -> OwnedFrame {
    let mut left = frame_len - HEADER_LEN - START_FIXED_LEN;
    let mut argv = Vec::new();
    while left > 0 {
        let len = (left - 2).min(STRING_LEN_MAX);
        argv.push(vec![b'f'; len]);
        left -= 2 + len;
        // Avoid leaving 1 byte, which no entry can fill.
        if left == 1 {
            argv.last_mut().unwrap().pop();
            left += 1;
        }
    }
    start_with(argv, vec![], None)
}

#[test]
fn frame_len_limit() {
    let at = start_of_len(FRAME_LEN_MAX);
    let bytes = encode_owned(&at);
    assert_eq!(bytes.len(), FRAME_LEN_MAX);
    assert_eq!(decode(&bytes).unwrap().to_owned_frame(), at);

    let past = start_of_len(FRAME_LEN_MAX + 1);
    assert_eq!(
        encode_err(&past),
        EncodeError::FrameTooLarge {
            len: FRAME_LEN_MAX + 1
        }
    );
    let mut long = bytes.clone();
    long.push(0);
    assert_eq!(
        decode(&long),
        Err(DecodeError::TooLong {
            len: FRAME_LEN_MAX + 1
        })
    );
}

#[test]
fn buffer_exactly_large_enough_and_one_short() {
    let frame = start_with(vec![b"/bin/true".to_vec()], vec![b"A=B".to_vec()], None);
    let len = encode_owned(&frame).len();
    let mut exact = vec![0u8; len];
    assert_eq!(frame.encode(&mut exact), Ok(len));
    let mut short = vec![0u8; len - 1];
    assert_eq!(
        frame.encode(&mut short),
        Err(EncodeError::BufferTooSmall {
            needed: len,
            available: len - 1
        })
    );
    let mut tiny = [0u8; HEADER_LEN - 1];
    assert_eq!(
        encode_ping(&mut tiny, 1),
        Err(EncodeError::BufferTooSmall {
            needed: HEADER_LEN,
            available: HEADER_LEN - 1
        })
    );
}

fn patch_u16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn patch_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn fix_payload_len(bytes: &mut [u8]) {
    let len = (bytes.len() - HEADER_LEN) as u32;
    patch_u32(bytes, header_offset::PAYLOAD_LEN, len);
}

// ---------------------------------------------------------------------------------------------
// Version handling.

#[test]
fn higher_major_is_unsupported_version_with_request_id() {
    let mut bytes = golden("start");
    bytes[header_offset::VERSION_MAJOR] = VERSION_MAJOR + 1;
    bytes[header_offset::VERSION_MINOR] = 3;
    let err = decode(&bytes).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnsupportedVersion {
            major: 2,
            minor: 3,
            request_id: 42
        }
    );
    assert_eq!(err.stage(), ErrorStage::Version);
    assert_eq!(err.errno(), libc::EPROTONOSUPPORT);
    assert_eq!(peek_request_id(&bytes), Some(42));

    // Only the frozen 16-byte prefix is needed to tell (a v2 header could be shorter).
    let prefix = &bytes[..16];
    assert!(matches!(
        decode(prefix),
        Err(DecodeError::UnsupportedVersion { request_id: 42, .. })
    ));
    // The reply the receiver sends back decodes on the other side.
    let mut out = buf();
    let id = peek_request_id(&bytes).unwrap();
    let len = encode_error(&mut out, id, err.errno(), err.stage(), b"version 2.3").unwrap();
    let reply = decode(&out[..len]).unwrap();
    assert_eq!(reply.request_id(), 42);
    assert!(matches!(reply.body, Body::Error(e) if e.stage == ErrorStage::Version));

    bytes[header_offset::VERSION_MAJOR] = 0;
    assert!(matches!(
        decode(&bytes),
        Err(DecodeError::UnsupportedVersion { major: 0, .. })
    ));
}

#[test]
fn newer_minor_may_append_fields_but_ours_may_not() {
    for name in ["start", "started", "error", "ping", "pong", "notify"] {
        let original = decode(&golden(name)).unwrap().to_owned_frame();
        let mut bytes = golden(name);
        bytes.extend_from_slice(&[0xAB, 0xCD]);
        fix_payload_len(&mut bytes);
        let kind = decode_header(&bytes).unwrap().kind;
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::TrailingBytes { kind, count: 2 })
        );
        bytes[header_offset::VERSION_MINOR] = VERSION_MINOR + 1;
        let frame = decode(&bytes).unwrap();
        assert_eq!(frame.header.version_minor, VERSION_MINOR + 1);
        assert_eq!(frame.to_owned_frame(), original);
    }
}

#[test]
fn unknown_capability_bits_are_kept() {
    let pong = Pong {
        version_major: 1,
        version_minor: 7,
        capabilities: Capabilities::from_bits_retain(0x8000_0001),
    };
    let mut out = buf();
    let len = encode_pong(&mut out, 9, pong).unwrap();
    assert_eq!(decode(&out[..len]).unwrap().body, Body::Pong(pong));
}

// ---------------------------------------------------------------------------------------------
// Every error variant is reachable.

fn decode_error_name(err: &DecodeError) -> &'static str {
    // Exhaustive on purpose: a new variant must be added to this test.
    match err {
        DecodeError::TooShort { .. } => "TooShort",
        DecodeError::TooLong { .. } => "TooLong",
        DecodeError::BadMagic { .. } => "BadMagic",
        DecodeError::UnsupportedVersion { .. } => "UnsupportedVersion",
        DecodeError::ReservedNotZero { .. } => "ReservedNotZero",
        DecodeError::PayloadLenMismatch { .. } => "PayloadLenMismatch",
        DecodeError::UnknownKind { .. } => "UnknownKind",
        DecodeError::Truncated { .. } => "Truncated",
        DecodeError::TrailingBytes { .. } => "TrailingBytes",
        DecodeError::ArgvEmpty => "ArgvEmpty",
        DecodeError::ArgvTooMany { .. } => "ArgvTooMany",
        DecodeError::EnvTooMany { .. } => "EnvTooMany",
        DecodeError::StringTooLong { .. } => "StringTooLong",
        DecodeError::NulInString => "NulInString",
        DecodeError::EnvEntryWithoutEquals => "EnvEntryWithoutEquals",
        DecodeError::UnknownStartFlags { .. } => "UnknownStartFlags",
        DecodeError::UnknownPresenceBits { .. } => "UnknownPresenceBits",
        DecodeError::InvalidPid { .. } => "InvalidPid",
        DecodeError::UnknownStage { .. } => "UnknownStage",
        DecodeError::NegativeErrno { .. } => "NegativeErrno",
        DecodeError::ErrorTextTooLong { .. } => "ErrorTextTooLong",
        DecodeError::NotifyTextTooLong { .. } => "NotifyTextTooLong",
        DecodeError::NotifyRequestId { .. } => "NotifyRequestId",
        DecodeError::BadCgroupName => "BadCgroupName",
        DecodeError::BadExecEnv { .. } => "BadExecEnv",
        DecodeError::BadCgroupLimits { .. } => "BadCgroupLimits",
    }
}

const DECODE_ERROR_COUNT: usize = 26;

/// Packets that each break one rule, with the error they must yield.
fn broken_packets() -> Vec<(Vec<u8>, DecodeError)> {
    let start = golden("start");
    let started = golden("started");
    let error = golden("error");
    let pong = golden("pong");
    let notify = golden("notify");
    let with = |base: &Vec<u8>, edit: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = base.clone();
        edit(&mut bytes);
        bytes
    };
    let p = HEADER_LEN;
    vec![
        (start[..10].to_vec(), DecodeError::TooShort { len: 10 }),
        (start[..20].to_vec(), DecodeError::TooShort { len: 20 }),
        (
            vec![0; FRAME_LEN_MAX + 1],
            DecodeError::TooLong {
                len: FRAME_LEN_MAX + 1,
            },
        ),
        (
            with(&start, &|b| b[0] = b'X'),
            DecodeError::BadMagic { magic: *b"XLDN" },
        ),
        (
            with(&start, &|b| b[4] = 9),
            DecodeError::UnsupportedVersion {
                major: 9,
                minor: VERSION_MINOR,
                request_id: 42,
            },
        ),
        (
            with(&start, &|b| b[7] = 1),
            DecodeError::ReservedNotZero { offset: 7 },
        ),
        (
            with(&start, &|b| b[22] = 1),
            DecodeError::ReservedNotZero { offset: 20 },
        ),
        (
            with(&start, &|b| b[p + 13] = 1),
            DecodeError::ReservedNotZero { offset: p + 13 },
        ),
        (
            with(&start, &|b| b[p + 8] = 1),
            DecodeError::ReservedNotZero { offset: p + 8 },
        ),
        (
            with(&error, &|b| b[p + 5] = 1),
            DecodeError::ReservedNotZero { offset: p + 5 },
        ),
        (
            with(&pong, &|b| b[p + 3] = 1),
            DecodeError::ReservedNotZero { offset: p + 2 },
        ),
        (
            with(&start, &|b| b.truncate(b.len() - 1)),
            DecodeError::PayloadLenMismatch {
                declared: 44,
                actual: 43,
            },
        ),
        (
            with(&start, &|b| b[6] = 200),
            DecodeError::UnknownKind { kind: 200 },
        ),
        (
            with(&started, &|b| {
                b.truncate(b.len() - 1);
                fix_payload_len(b)
            }),
            DecodeError::Truncated {
                kind: FrameKind::Started,
            },
        ),
        (
            // argv count says 3 but only 2 strings follow (the env string is read as argv).
            with(&start, &|b| patch_u16(b, p + 14, 3)),
            DecodeError::Truncated {
                kind: FrameKind::Start,
            },
        ),
        (
            with(&started, &|b| {
                b.push(0);
                fix_payload_len(b)
            }),
            DecodeError::TrailingBytes {
                kind: FrameKind::Started,
                count: 1,
            },
        ),
        (
            with(&start, &|b| patch_u16(b, p + 14, 0)),
            DecodeError::ArgvEmpty,
        ),
        (
            with(&start, &|b| patch_u16(b, p + 14, 300)),
            DecodeError::ArgvTooMany { count: 300 },
        ),
        (
            with(&start, &|b| patch_u16(b, p + 16, 257)),
            DecodeError::EnvTooMany { count: 257 },
        ),
        (
            with(&start, &|b| patch_u16(b, p + 18, 5000)),
            DecodeError::StringTooLong { len: 5000 },
        ),
        (with(&start, &|b| b[p + 20] = 0), DecodeError::NulInString),
        (
            with(&start, &|b| b[p + 20 + 4 + 2] = 0),
            DecodeError::NulInString,
        ),
        (with(&error, &|b| b[p + 8] = 0), DecodeError::NulInString),
        (
            // "A=1" becomes "A:1".
            with(&start, &|b| {
                let at = b.len() - 2;
                b[at] = b':'
            }),
            DecodeError::EnvEntryWithoutEquals,
        ),
        (
            // "A=1" becomes "==1": empty key.
            with(&start, &|b| {
                let at = b.len() - 3;
                b[at] = b'='
            }),
            DecodeError::EnvEntryWithoutEquals,
        ),
        (
            with(&start, &|b| b[p + 3] = 0x80),
            DecodeError::UnknownStartFlags { bits: 0x8000_0001 },
        ),
        (
            with(&start, &|b| b[p + 12] = 0x05),
            DecodeError::UnknownPresenceBits { bits: 0x05 },
        ),
        (
            with(&started, &|b| patch_u32(b, p, 0)),
            DecodeError::InvalidPid { pid: 0 },
        ),
        (
            with(&started, &|b| patch_u32(b, p, u32::MAX)),
            DecodeError::InvalidPid { pid: -1 },
        ),
        (
            with(&error, &|b| b[p + 4] = 0),
            DecodeError::UnknownStage { stage: 0 },
        ),
        (
            with(&error, &|b| patch_u32(b, p, 0xFFFF_FFFE)),
            DecodeError::NegativeErrno { errno: -2 },
        ),
        (
            with(&error, &|b| patch_u16(b, p + 6, 300)),
            DecodeError::ErrorTextTooLong { len: 300 },
        ),
        (
            with(&notify, &|b| patch_u16(b, p + 6, 5000)),
            DecodeError::NotifyTextTooLong { len: 5000 },
        ),
        (
            with(&notify, &|b| b[header_offset::REQUEST_ID] = 9),
            DecodeError::NotifyRequestId { id: 9 },
        ),
        (
            // CGROUP set, and the cgroup that follows the environment is "..".
            with(&start, &|b| {
                append_section(b, StartFlags::CGROUP, &[2, 0, b'.', b'.'])
            }),
            DecodeError::BadCgroupName,
        ),
        (
            // EXEC_ENV set, and the section that follows the environment sets nothing.
            with(&start, &|b| {
                append_section(b, StartFlags::EXEC_ENV, &[0, 0, 0, 0])
            }),
            DecodeError::BadExecEnv {
                what: "sets nothing",
            },
        ),
        (
            // CGROUP_LIMITS without CGROUP.
            with(&start, &|b| {
                append_section(b, StartFlags::CGROUP_LIMITS, &[1, 0, 1, 0, b'1'])
            }),
            DecodeError::BadCgroupLimits {
                what: "CGROUP_LIMITS without CGROUP",
            },
        ),
    ]
}

#[test]
fn every_decode_error_variant_is_reachable() {
    let mut seen = BTreeSet::new();
    for (bytes, expected) in broken_packets() {
        assert_eq!(decode(&bytes), Err(expected), "packet {bytes:02x?}");
        seen.insert(decode_error_name(&expected));
        // Messages are non-empty and stages are consistent.
        assert!(!expected.to_string().is_empty());
        assert!(expected.errno() > 0);
    }
    assert_eq!(seen.len(), DECODE_ERROR_COUNT, "reached: {seen:?}");
}

#[test]
fn limit_errors_map_to_stage_limit() {
    assert_eq!(
        DecodeError::ArgvTooMany { count: 300 }.stage(),
        ErrorStage::Limit
    );
    assert_eq!(DecodeError::NulInString.stage(), ErrorStage::Decode);
    assert_eq!(DecodeError::TooLong { len: 1 }.stage(), ErrorStage::Limit);
}

fn encode_error_name(err: &EncodeError) -> &'static str {
    match err {
        EncodeError::BufferTooSmall { .. } => "BufferTooSmall",
        EncodeError::FrameTooLarge { .. } => "FrameTooLarge",
        EncodeError::ArgvEmpty => "ArgvEmpty",
        EncodeError::ArgvTooMany { .. } => "ArgvTooMany",
        EncodeError::EnvTooMany { .. } => "EnvTooMany",
        EncodeError::StringTooLong { .. } => "StringTooLong",
        EncodeError::NulInString => "NulInString",
        EncodeError::EnvEntryWithoutEquals => "EnvEntryWithoutEquals",
        EncodeError::EmptyCwd => "EmptyCwd",
        EncodeError::UnknownStartFlags { .. } => "UnknownStartFlags",
        EncodeError::InvalidPid { .. } => "InvalidPid",
        EncodeError::NegativeErrno { .. } => "NegativeErrno",
        EncodeError::ErrorTextTooLong { .. } => "ErrorTextTooLong",
        EncodeError::NotifyTextTooLong { .. } => "NotifyTextTooLong",
        EncodeError::NotifyRequestId { .. } => "NotifyRequestId",
        EncodeError::BadCgroupName => "BadCgroupName",
        EncodeError::BadExecEnv { .. } => "BadExecEnv",
        EncodeError::BadCgroupLimits { .. } => "BadCgroupLimits",
    }
}

const ENCODE_ERROR_COUNT: usize = 18;

#[test]
fn every_encode_error_variant_is_reachable() {
    let mut small = [0u8; 30];
    let mut out = buf();
    let argv1: &[&[u8]] = &[b"x"];
    let start = |argv: &[&[u8]], env: &[&[u8]], cwd: Option<&[u8]>, flags: StartFlags| {
        encode_start(
            &mut buf(),
            1,
            &StartRef {
                argv,
                env,
                cwd,
                uid: None,
                gid: None,
                flags,
                cgroup: None,
                exec: None,
                cgroup_limits: None,
            },
        )
    };
    let many: Vec<&[u8]> = vec![b"x"; 300];
    let long = vec![b'l'; STRING_LEN_MAX + 1];
    let cases: Vec<(Result<usize, EncodeError>, EncodeError)> = vec![
        (
            encode_start(
                &mut small,
                1,
                &StartRef {
                    argv: argv1,
                    env: NO_STRINGS,
                    cwd: Some(b"/some/dir"),
                    uid: None,
                    gid: None,
                    flags: StartFlags::empty(),
                    cgroup: None,
                    exec: None,
                    cgroup_limits: None,
                },
            ),
            EncodeError::BufferTooSmall {
                needed: HEADER_LEN + START_FIXED_LEN + 9 + 3,
                available: 30,
            },
        ),
        (
            start_of_len(FRAME_LEN_MAX + 5).encode(&mut out),
            EncodeError::FrameTooLarge {
                len: FRAME_LEN_MAX + 5,
            },
        ),
        (
            start(NO_STRINGS, NO_STRINGS, None, StartFlags::empty()),
            EncodeError::ArgvEmpty,
        ),
        (
            start(&many, NO_STRINGS, None, StartFlags::empty()),
            EncodeError::ArgvTooMany { count: 300 },
        ),
        (
            start(argv1, &many, None, StartFlags::empty()),
            EncodeError::EnvTooMany { count: 300 },
        ),
        (
            start(&[&long], NO_STRINGS, None, StartFlags::empty()),
            EncodeError::StringTooLong {
                len: STRING_LEN_MAX + 1,
            },
        ),
        (
            start(&[b"a\0b"], NO_STRINGS, None, StartFlags::empty()),
            EncodeError::NulInString,
        ),
        (
            start(argv1, &[b"A=\0"], None, StartFlags::empty()),
            EncodeError::NulInString,
        ),
        (
            start(argv1, NO_STRINGS, Some(b"/\0"), StartFlags::empty()),
            EncodeError::NulInString,
        ),
        (
            start(argv1, &[b"NOEQUALS"], None, StartFlags::empty()),
            EncodeError::EnvEntryWithoutEquals,
        ),
        (
            start(argv1, &[b"=value"], None, StartFlags::empty()),
            EncodeError::EnvEntryWithoutEquals,
        ),
        (
            start(argv1, NO_STRINGS, Some(b""), StartFlags::empty()),
            EncodeError::EmptyCwd,
        ),
        (
            start(
                argv1,
                NO_STRINGS,
                None,
                StartFlags::from_bits_retain(1 << 20),
            ),
            EncodeError::UnknownStartFlags { bits: 1 << 20 },
        ),
        (
            encode_started(&mut out, 1, 0),
            EncodeError::InvalidPid { pid: 0 },
        ),
        (
            encode_started(&mut out, 1, -5),
            EncodeError::InvalidPid { pid: -5 },
        ),
        (
            encode_error(&mut out, 1, -1, ErrorStage::Fork, b""),
            EncodeError::NegativeErrno { errno: -1 },
        ),
        (
            encode_error(&mut out, 1, 1, ErrorStage::Fork, b"a\0"),
            EncodeError::NulInString,
        ),
        (
            encode_error(&mut out, 1, 1, ErrorStage::Fork, &[b'e'; 300]),
            EncodeError::ErrorTextTooLong { len: 300 },
        ),
        (
            encode_notify(&mut out, 1, &[b'n'; NOTIFY_TEXT_LEN_MAX + 1]),
            EncodeError::NotifyTextTooLong {
                len: NOTIFY_TEXT_LEN_MAX + 1,
            },
        ),
        (
            OwnedFrame {
                request_id: 2,
                body: OwnedBody::Notify {
                    pid: 1,
                    text: Vec::new(),
                },
            }
            .encode(&mut out),
            EncodeError::NotifyRequestId { id: 2 },
        ),
        (
            start_frame(OwnedStart {
                flags: StartFlags::CGROUP,
                ..simple_start()
            })
            .encode(&mut out),
            EncodeError::BadCgroupName,
        ),
        (
            start_frame(OwnedStart {
                flags: StartFlags::EXEC_ENV,
                ..simple_start()
            })
            .encode(&mut out),
            EncodeError::BadExecEnv {
                what: "EXEC_ENV and the section go together",
            },
        ),
        (
            start_frame(OwnedStart {
                flags: StartFlags::EXEC_ENV,
                exec: Some(Box::new(ExecEnv {
                    nice: Some(20),
                    ..ExecEnv::default()
                })),
                ..simple_start()
            })
            .encode(&mut out),
            EncodeError::BadExecEnv {
                what: "nice outside -20..=19",
            },
        ),
        (
            start_frame(OwnedStart {
                flags: StartFlags::CGROUP_LIMITS,
                cgroup_limits: Some(Box::new(example_limits())),
                ..simple_start()
            })
            .encode(&mut out),
            EncodeError::BadCgroupLimits {
                what: "CGROUP_LIMITS without CGROUP",
            },
        ),
        (
            encode_pong(&mut small[..10], 1, Pong::ours(Capabilities::empty())),
            EncodeError::BufferTooSmall {
                needed: 32,
                available: 10,
            },
        ),
    ];
    let mut seen = BTreeSet::new();
    for (result, expected) in cases {
        assert_eq!(result, Err(expected));
        assert!(!expected.to_string().is_empty());
        seen.insert(encode_error_name(&expected));
    }
    assert_eq!(seen.len(), ENCODE_ERROR_COUNT, "reached: {seen:?}");
}

// ---------------------------------------------------------------------------------------------
// Properties.

fn non_nul_bytes(len_max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(1u8..=255, 0..=len_max)
}

fn env_entry() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec((1u8..=255).prop_filter("no =", |b| *b != b'='), 1..16),
        non_nul_bytes(40),
    )
        .prop_map(|(mut key, value)| {
            key.push(b'=');
            key.extend(value);
            key
        })
}

fn stage() -> impl Strategy<Value = ErrorStage> {
    (1u8..=9).prop_map(|b| ErrorStage::from_u8(b).unwrap())
}

/// A valid `exec` section: every part within its range, at least one part set.
fn valid_exec() -> impl Strategy<Value = ExecEnv> {
    (
        prop::collection::vec(prop::option::of((any::<u64>(), any::<u64>())), 16),
        prop::option::of(0u32..=0o777),
        prop::option::of(-1000i32..=1000),
        prop::option::of(-20i8..=19),
        prop::option::of(prop_oneof![
            Just((SchedPolicy::Other, 0u8)),
            (1u8..=99).prop_map(|p| (SchedPolicy::Fifo, p)),
            (1u8..=99).prop_map(|p| (SchedPolicy::Rr, p)),
        ]),
        prop::option::of(prop::collection::vec(0usize..=CPU_MAX, 1..8)),
        any::<bool>(),
        prop::option::of(prop::collection::vec(any::<u32>(), 0..=GROUPS_MAX)),
        any::<Option<u64>>(),
        any::<Option<u64>>(),
        any::<bool>(),
    )
        .prop_map(
            |(limits, umask, oom, nice, sched, cpus, nnp, groups, bounding, ambient, wd)| {
                let mut exec = ExecEnv::default();
                for (slot, limit) in exec.rlimits.iter_mut().zip(limits) {
                    *slot = limit.map(|(a, b)| Rlimit {
                        soft: a.min(b),
                        hard: a.max(b),
                    });
                }
                exec.umask = umask;
                exec.oom_score_adj = oom.and_then(OomScoreAdj::new);
                exec.nice = nice;
                exec.sched = sched;
                exec.cpu_affinity = cpus.map(|cpus| {
                    let mut set = CpuSet::default();
                    for cpu in cpus {
                        set.add(cpu);
                    }
                    set
                });
                exec.no_new_privs = nnp;
                exec.groups = groups.and_then(|g| Groups::new(&g));
                exec.cap_bounding = bounding;
                exec.cap_ambient = ambient;
                exec.watchdog_pid = wd;
                if exec == ExecEnv::default() {
                    exec.no_new_privs = true;
                }
                exec
            },
        )
}

fn valid_start() -> impl Strategy<Value = OwnedStart> {
    (
        any::<u32>(),
        any::<Option<u32>>(),
        any::<Option<u32>>(),
        prop::option::of(prop::collection::vec(1u8..=255, 1..80)),
        prop::collection::vec(non_nul_bytes(60), 1..12),
        prop::collection::vec(env_entry(), 0..12),
        "[a-z0-9_.@-]{0,20}",
        valid_exec(),
        valid_cgroup_limits(),
    )
        .prop_map(|(flags, uid, gid, cwd, argv, env, name, exec, limits)| {
            let mut flags = StartFlags::from_bits_truncate(flags);
            // Limits only into a cgroup of its own.
            if !flags.contains(StartFlags::CGROUP) {
                flags.remove(StartFlags::CGROUP_LIMITS);
            }
            // The name exactly with the flag, and a valid one.
            let name = format!("s{name}").into_bytes();
            OwnedStart {
                flags,
                uid,
                gid,
                cwd,
                argv,
                env,
                cgroup: flags.contains(StartFlags::CGROUP).then_some(name),
                exec: flags.contains(StartFlags::EXEC_ENV).then(|| Box::new(exec)),
                cgroup_limits: flags
                    .contains(StartFlags::CGROUP_LIMITS)
                    .then(|| Box::new(limits)),
            }
        })
}

/// Valid cgroup limits: 1..=6 of the files, each once, in the table's order.
fn valid_cgroup_limits() -> impl Strategy<Value = CgroupLimits> {
    (
        prop::collection::vec(prop::option::of("[0-9a-z ]{1,48}"), CGROUP_LIMIT_KEYS.len()),
        0..CGROUP_LIMIT_KEYS.len(),
    )
        .prop_map(|(values, fallback)| {
            let mut limits = CgroupLimits::default();
            for ((key, _, _), value) in CGROUP_LIMIT_KEYS.into_iter().zip(values) {
                if let Some(value) = value {
                    limits.limits.push(CgroupLimit::new(key, &value).unwrap());
                }
            }
            if limits.limits.is_empty() {
                let key = CGROUP_LIMIT_KEYS[fallback].0;
                limits.limits.push(CgroupLimit::new(key, "max").unwrap());
            }
            limits
        })
}

fn valid_body() -> impl Strategy<Value = OwnedBody> {
    prop_oneof![
        valid_start().prop_map(OwnedBody::Start),
        (1..=i32::MAX).prop_map(|pid| OwnedBody::Started { pid }),
        (0..=i32::MAX, stage(), non_nul_bytes(ERROR_TEXT_LEN_MAX))
            .prop_map(|(errno, stage, text)| OwnedBody::Error(OwnedError { errno, stage, text })),
        Just(OwnedBody::Ping),
        Just(OwnedBody::Running),
        (1..=i32::MAX, non_nul_bytes(NOTIFY_TEXT_LEN_MAX))
            .prop_map(|(pid, text)| OwnedBody::Notify { pid, text }),
        (any::<u8>(), any::<u8>(), any::<u32>()).prop_map(|(major, minor, caps)| {
            OwnedBody::Pong(Pong {
                version_major: major,
                version_minor: minor,
                capabilities: Capabilities::from_bits_retain(caps),
            })
        }),
    ]
}

fn valid_frame() -> impl Strategy<Value = OwnedFrame> {
    (any::<u64>(), valid_body()).prop_map(|(request_id, body)| {
        // A Notify answers no request: its id is always 0.
        let request_id = match body {
            OwnedBody::Notify { .. } => 0,
            _ => request_id,
        };
        OwnedFrame { request_id, body }
    })
}

/// A decoded packet of our own minor version re-encodes to exactly the same bytes: there is
/// one encoding per frame (reserved bytes zero, absent ids zero, no slack).
fn assert_canonical(bytes: &[u8]) {
    if let Ok(frame) = decode(bytes) {
        if frame.header.version_minor == VERSION_MINOR {
            assert_eq!(encode_owned(&frame.to_owned_frame()), bytes);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn roundtrip_valid_frames(frame in valid_frame()) {
        let bytes = encode_owned(&frame);
        prop_assert!(bytes.len() <= FRAME_LEN_MAX);
        let decoded = decode(&bytes).unwrap();
        prop_assert_eq!(decoded.header.payload_len as usize, bytes.len() - HEADER_LEN);
        prop_assert_eq!(decoded.to_owned_frame(), frame);
    }

    #[test]
    fn decode_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(&bytes);
        let _ = peek_request_id(&bytes);
        assert_canonical(&bytes);
    }

    #[test]
    fn decode_never_panics_on_random_bytes_behind_a_valid_header(
        kind in 0u8..8,
        minor in 0u8..3,
        payload in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut bytes = Vec::from(&MAGIC[..]);
        bytes.extend_from_slice(&[VERSION_MAJOR, minor, kind, 0]);
        bytes.extend_from_slice(&5u64.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&payload);
        let _ = decode(&bytes);
        assert_canonical(&bytes);
    }

    #[test]
    fn decode_never_panics_on_mutated_valid_frames(
        frame in valid_frame(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let mut bytes = encode_owned(&frame);
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if do_cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        let _ = decode(&bytes);
        assert_canonical(&bytes);
    }

    #[test]
    fn encode_never_panics_and_refuses_invalid_frames(
        request_id in any::<u64>(),
        flags in any::<u32>(),
        argv in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..8), 0..4),
        env in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..8), 0..4),
        cwd in prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
        buf_len in 0usize..200,
    ) {
        let frame = start_frame(OwnedStart {
            flags: StartFlags::from_bits_retain(flags),
            uid: None,
            gid: None,
            cwd,
            argv,
            env,
            cgroup: None,
            exec: None,
            cgroup_limits: None,
        });
        let frame = OwnedFrame { request_id, ..frame };
        let mut out = vec![0u8; buf_len];
        if let Ok(len) = frame.encode(&mut out) {
            // Whatever encodes must decode back to itself.
            prop_assert_eq!(decode(&out[..len]).unwrap().to_owned_frame(), frame);
        }
    }
}
