//! Legacy v0.2 codec: golden layout, stream decoding (need-more vs frame), length rules,
//! limits, every error variant, round trips and never-panics properties.

use holden::wire::v02::{
    decode, decode_pidfd_marker, encode_error, encode_pidfd_marker, encode_ping, encode_pong,
    encode_raw, encode_start, encode_started, encode_unknown_type_error, DecodeError, Decoded,
    EncodeError, Frame, MessageType, OwnedFrame, StringField, ARGV_COUNT_MAX, ARG_COUNT_OFFSET,
    ARG_LEN, ERROR_PAYLOAD_LEN, ERROR_TEXT_LEN_MAX, FRAME_LEN_MAX, HEADER_LEN, NAME_LEN,
    PAYLOAD_LEN_MAX, PIDFD_MARKER, STARTED_PAYLOAD_LEN, START_PAYLOAD_LEN, STRING_LEN_MAX,
};
use proptest::prelude::*;
use std::collections::BTreeSet;

fn buf() -> Vec<u8> {
    vec![0u8; FRAME_LEN_MAX]
}

fn header(msg_type: u32, length: u32) -> Vec<u8> {
    let mut bytes = msg_type.to_ne_bytes().to_vec();
    bytes.extend_from_slice(&length.to_ne_bytes());
    bytes
}

fn encoded(frame: &OwnedFrame) -> Vec<u8> {
    let mut out = buf();
    let len = frame.encode(&mut out).expect("valid frame encodes");
    out.truncate(len);
    out
}

/// Decodes one complete frame that must use every byte of `bytes`.
fn decode_whole(bytes: &[u8]) -> Result<Frame<'_>, DecodeError> {
    match decode(bytes)? {
        Decoded::Done { value, consumed } => {
            assert_eq!(consumed, bytes.len());
            Ok(value)
        }
        Decoded::NeedMore { bytes: n } => panic!("unexpected NeedMore({n})"),
    }
}

/// The v0.2 C layout, built field by field as the C struct would lay it out.
fn c_start(name: &[u8], args: &[&[u8]], arg_count: i32) -> Vec<u8> {
    let mut payload = vec![0u8; START_PAYLOAD_LEN];
    payload[..name.len()].copy_from_slice(name);
    for (i, arg) in args.iter().enumerate() {
        let at = NAME_LEN + i * ARG_LEN;
        payload[at..at + arg.len()].copy_from_slice(arg);
    }
    payload[ARG_COUNT_OFFSET..].copy_from_slice(&arg_count.to_ne_bytes());
    let mut bytes = header(1, START_PAYLOAD_LEN as u32);
    bytes.extend_from_slice(&payload);
    bytes
}

#[test]
fn constants_match_the_v02_structs() {
    assert_eq!(HEADER_LEN, 8);
    assert_eq!(START_PAYLOAD_LEN, 8452);
    assert_eq!(ARG_COUNT_OFFSET, 256 + 32 * 256);
    assert_eq!(STARTED_PAYLOAD_LEN, 8);
    assert_eq!(ERROR_PAYLOAD_LEN, 512);
    // The v0.2 message union (sizeof(message_t) 16,912 less the header): PROCESS_LIST is its
    // largest member.
    assert_eq!(PAYLOAD_LEN_MAX, 16_904);
    assert_eq!(FRAME_LEN_MAX, 16_912);
    assert_eq!(ARGV_COUNT_MAX, 33);
    assert_eq!(STRING_LEN_MAX, 255);
    assert_eq!(PIDFD_MARKER, b'x');
    for value in 1..=12u32 {
        assert_eq!(MessageType::from_u32(value).unwrap() as u32, value);
    }
    assert_eq!(MessageType::from_u32(0), None);
    assert_eq!(MessageType::from_u32(13), None);
}

#[test]
fn golden_start() {
    let argv: &[&[u8]] = &[b"/usr/bin/sleep", b"sleep", b"10"];
    let mut out = buf();
    let len = encode_start(&mut out, argv).unwrap();
    assert_eq!(len, HEADER_LEN + 8452);
    let expected = c_start(b"/usr/bin/sleep", &[b"sleep", b"10"], 2);
    assert_eq!(&out[..len], &expected[..]);

    let Frame::Start(start) = decode_whole(&expected).unwrap() else {
        panic!("not a start")
    };
    assert_eq!(start.name(), b"/usr/bin/sleep");
    assert_eq!(start.arg_count(), 2);
    assert_eq!(start.argv().len(), 3);
    assert_eq!(start.argv().collect::<Vec<_>>(), argv.to_vec());
}

#[test]
fn golden_small_frames() {
    let mut out = buf();
    let len = encode_started(&mut out, 4321, 17).unwrap();
    let mut expected = header(2, 8);
    expected.extend_from_slice(&4321i32.to_ne_bytes());
    expected.extend_from_slice(&17i32.to_ne_bytes());
    assert_eq!(&out[..len], &expected[..]);
    assert_eq!(
        decode_whole(&expected).unwrap(),
        Frame::Started {
            host_pid: 4321,
            container_pid: 17
        }
    );

    let len = encode_error(&mut out, b"fork failed").unwrap();
    let mut expected = header(3, 512);
    let mut text = b"fork failed".to_vec();
    text.resize(512, 0);
    expected.extend_from_slice(&text);
    assert_eq!(&out[..len], &expected[..]);
    assert_eq!(
        decode_whole(&expected).unwrap(),
        Frame::Error {
            text: b"fork failed"
        }
    );

    let len = encode_ping(&mut out).unwrap();
    assert_eq!(&out[..len], &header(11, 0)[..]);
    assert_eq!(decode_whole(&header(11, 0)).unwrap(), Frame::Ping);
    let len = encode_pong(&mut out).unwrap();
    assert_eq!(&out[..len], &header(12, 0)[..]);
    assert_eq!(decode_whole(&header(12, 0)).unwrap(), Frame::Pong);

    let len = encode_pidfd_marker(&mut out).unwrap();
    assert_eq!(&out[..len], b"x");
}

/// The bytes of the fenced block opened by "```hex <name>" in docs/wire.md (hex pairs, then an
/// optional `//` comment per line).
fn doc_block(name: &str) -> Vec<u8> {
    const WIRE_MD: &str = include_str!("../docs/wire.md");
    let fence = format!("```hex {name}\n");
    let start = WIRE_MD.find(&fence).expect("block in docs/wire.md") + fence.len();
    let len = WIRE_MD[start..].find("```").expect("unterminated block");
    WIRE_MD[start..start + len]
        .lines()
        .flat_map(|line| line.split("//").next().unwrap().split_whitespace())
        .map(|pair| u8::from_str_radix(pair, 16).expect("hex byte"))
        .collect()
}

#[test]
#[cfg(target_endian = "little")]
fn golden_bytes_match_docs() {
    let mut out = buf();
    let len = encode_started(&mut out, 4321, 17).unwrap();
    assert_eq!(&out[..len], &doc_block("legacy-started")[..]);
    let len = encode_pidfd_marker(&mut out).unwrap();
    assert_eq!(&out[..len], &doc_block("legacy-pidfd-marker")[..]);
}

#[test]
fn unknown_type_gets_the_v02_error_text() {
    let mut frame = header(99, 3);
    frame.extend_from_slice(b"abc");
    assert_eq!(
        decode_whole(&frame).unwrap(),
        Frame::Unknown {
            msg_type: 99,
            payload: b"abc"
        }
    );
    let mut out = buf();
    let len = encode_unknown_type_error(&mut out, 99).unwrap();
    assert_eq!(
        decode_whole(&out[..len]).unwrap(),
        Frame::Error {
            text: b"Unknown message type: 99"
        }
    );
    let len = encode_unknown_type_error(&mut out, u32::MAX).unwrap();
    assert_eq!(
        decode_whole(&out[..len]).unwrap(),
        Frame::Error {
            text: b"Unknown message type: 4294967295"
        }
    );
}

#[test]
fn uninterpreted_known_types_keep_their_payload() {
    let mut frame = header(MessageType::Ack as u32, 4);
    frame.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(
        decode_whole(&frame).unwrap(),
        Frame::Other {
            msg_type: MessageType::Ack,
            payload: &[1, 2, 3, 4]
        }
    );
}

#[test]
fn stream_decoding_needs_more_then_consumes_exactly_one_frame() {
    let mut stream = c_start(b"/bin/true", &[], 0);
    let first_len = stream.len();
    stream.extend_from_slice(&header(11, 0));
    for cut in 0..first_len {
        let expected = if cut < HEADER_LEN {
            HEADER_LEN - cut
        } else {
            first_len - cut
        };
        assert_eq!(
            decode(&stream[..cut]).unwrap(),
            Decoded::NeedMore { bytes: expected },
            "cut at {cut}"
        );
    }
    let Decoded::Done { value, consumed } = decode(&stream).unwrap() else {
        panic!("expected a frame")
    };
    assert!(matches!(value, Frame::Start(_)));
    assert_eq!(consumed, first_len);
    assert_eq!(
        decode(&stream[consumed..]).unwrap(),
        Decoded::Done {
            value: Frame::Ping,
            consumed: HEADER_LEN
        }
    );
    assert_eq!(
        decode_pidfd_marker(b"").unwrap(),
        Decoded::NeedMore { bytes: 1 }
    );
    assert_eq!(
        decode_pidfd_marker(b"xyz").unwrap(),
        Decoded::Done {
            value: (),
            consumed: 1
        }
    );
}

#[test]
fn length_must_match_the_type_and_never_exceeds_the_union() {
    // The v0.2 receiver read past its buffer here; this decoder refuses from the header alone,
    // before any payload arrived.
    for (msg_type, fixed) in [(1u32, 8452usize), (2, 8), (3, 512), (11, 0), (12, 0)] {
        let wrong = header(msg_type, fixed as u32 + 1);
        assert_eq!(
            decode(&wrong),
            Err(DecodeError::LengthMismatch {
                msg_type: MessageType::from_u32(msg_type).unwrap(),
                length: fixed as u32 + 1,
                expected: fixed,
            })
        );
    }
    // Types without a fixed layout: at PAYLOAD_LEN_MAX fine, one past refused.
    for msg_type in [4u32, 10, 0, 13, u32::MAX] {
        assert_eq!(
            decode(&header(msg_type, PAYLOAD_LEN_MAX as u32)).unwrap(),
            Decoded::NeedMore {
                bytes: PAYLOAD_LEN_MAX
            }
        );
        assert_eq!(
            decode(&header(msg_type, PAYLOAD_LEN_MAX as u32 + 1)),
            Err(DecodeError::LengthTooLarge {
                msg_type,
                length: PAYLOAD_LEN_MAX as u32 + 1
            })
        );
        assert!(matches!(
            decode(&header(msg_type, u32::MAX)),
            Err(DecodeError::LengthTooLarge { .. })
        ));
    }
}

#[test]
fn argv_and_string_limits() {
    let mut out = buf();
    let at: Vec<Vec<u8>> = vec![vec![b'a'; STRING_LEN_MAX]; ARGV_COUNT_MAX];
    let len = encode_start(&mut out, &at).unwrap();
    let Frame::Start(start) = decode_whole(&out[..len]).unwrap() else {
        panic!("not a start")
    };
    assert_eq!(start.arg_count(), 32);
    assert_eq!(start.argv().collect::<Vec<_>>(), at);

    let mut past_count = at.clone();
    past_count.push(b"b".to_vec());
    assert_eq!(
        encode_start(&mut out, &past_count),
        Err(EncodeError::ArgvTooMany { count: 34 })
    );
    let mut past_len = at.clone();
    past_len[5].push(b'a');
    assert_eq!(
        encode_start(&mut out, &past_len),
        Err(EncodeError::StringTooLong { len: 256 })
    );

    // arg_count: 0 and 32 are fine, -1 and 33 are not.
    assert!(decode_whole(&c_start(b"n", &[], 0)).is_ok());
    let full: Vec<&[u8]> = vec![b"a"; 32];
    assert!(decode_whole(&c_start(b"n", &full, 32)).is_ok());
    for bad in [-1, 33, i32::MIN, i32::MAX] {
        assert_eq!(
            decode_whole(&c_start(b"n", &full, bad)),
            Err(DecodeError::ArgCountOutOfRange { arg_count: bad })
        );
    }

    // A name or arg filling its 256 bytes without NUL.
    let name = vec![b'n'; NAME_LEN];
    assert_eq!(
        decode_whole(&c_start(&name, &[], 0)),
        Err(DecodeError::Unterminated {
            field: StringField::Name
        })
    );
    let arg = vec![b'a'; ARG_LEN];
    assert_eq!(
        decode_whole(&c_start(b"n", &[b"ok", &arg], 2)),
        Err(DecodeError::Unterminated {
            field: StringField::Arg(1)
        })
    );
    // Unused slots are not inspected (v0.2 senders may leave garbage there).
    assert!(decode_whole(&c_start(b"n", &[b"ok", &arg], 1)).is_ok());

    let text = vec![b'e'; ERROR_TEXT_LEN_MAX];
    let len = encode_error(&mut out, &text).unwrap();
    assert_eq!(
        decode_whole(&out[..len]).unwrap(),
        Frame::Error { text: &text }
    );
    assert_eq!(
        encode_error(&mut out, &[b'e'; ERROR_TEXT_LEN_MAX + 1]),
        Err(EncodeError::ErrorTextTooLong { len: 512 })
    );
    let mut unterminated = header(3, 512);
    unterminated.extend_from_slice(&[b'e'; 512]);
    assert_eq!(
        decode_whole(&unterminated),
        Err(DecodeError::Unterminated {
            field: StringField::ErrorText
        })
    );
}

fn decode_error_name(err: &DecodeError) -> &'static str {
    match err {
        DecodeError::LengthMismatch { .. } => "LengthMismatch",
        DecodeError::LengthTooLarge { .. } => "LengthTooLarge",
        DecodeError::ArgCountOutOfRange { .. } => "ArgCountOutOfRange",
        DecodeError::Unterminated { .. } => "Unterminated",
        DecodeError::EmptyName => "EmptyName",
        DecodeError::BadPidfdMarker { .. } => "BadPidfdMarker",
    }
}

#[test]
fn every_decode_error_variant_is_reachable() {
    let cases: Vec<(Result<(), DecodeError>, DecodeError)> = vec![
        (
            decode(&header(2, 9)).map(drop),
            DecodeError::LengthMismatch {
                msg_type: MessageType::ProcessStarted,
                length: 9,
                expected: 8,
            },
        ),
        (
            decode(&header(77, 100_000)).map(drop),
            DecodeError::LengthTooLarge {
                msg_type: 77,
                length: 100_000,
            },
        ),
        (
            decode(&c_start(b"n", &[], 40)).map(drop),
            DecodeError::ArgCountOutOfRange { arg_count: 40 },
        ),
        (
            decode(&c_start(&[b'n'; 256], &[], 0)).map(drop),
            DecodeError::Unterminated {
                field: StringField::Name,
            },
        ),
        (
            decode(&c_start(b"", &[b"arg"], 1)).map(drop),
            DecodeError::EmptyName,
        ),
        (
            decode_pidfd_marker(b"y").map(drop),
            DecodeError::BadPidfdMarker { byte: b'y' },
        ),
    ];
    let mut seen = BTreeSet::new();
    for (result, expected) in cases {
        assert_eq!(result, Err(expected));
        assert!(!expected.to_string().is_empty());
        seen.insert(decode_error_name(&expected));
    }
    assert_eq!(seen.len(), 6);
}

fn encode_error_name(err: &EncodeError) -> &'static str {
    match err {
        EncodeError::BufferTooSmall { .. } => "BufferTooSmall",
        EncodeError::ArgvEmpty => "ArgvEmpty",
        EncodeError::ArgvTooMany { .. } => "ArgvTooMany",
        EncodeError::EmptyName => "EmptyName",
        EncodeError::StringTooLong { .. } => "StringTooLong",
        EncodeError::ErrorTextTooLong { .. } => "ErrorTextTooLong",
        EncodeError::NulInString => "NulInString",
        EncodeError::PayloadTooLarge { .. } => "PayloadTooLarge",
    }
}

#[test]
fn every_encode_error_variant_is_reachable() {
    let mut out = buf();
    let mut small = [0u8; 100];
    let no_args: &[&[u8]] = &[];
    let cases: Vec<(Result<usize, EncodeError>, EncodeError)> = vec![
        (
            encode_start(&mut small, &[b"/bin/true"]),
            EncodeError::BufferTooSmall {
                needed: 8460,
                available: 100,
            },
        ),
        (
            encode_started(&mut small[..15], 1, 1),
            EncodeError::BufferTooSmall {
                needed: 16,
                available: 15,
            },
        ),
        (
            encode_pidfd_marker(&mut []),
            EncodeError::BufferTooSmall {
                needed: 1,
                available: 0,
            },
        ),
        (encode_start(&mut out, no_args), EncodeError::ArgvEmpty),
        (
            encode_start(&mut out, &vec![b"a"; 40]),
            EncodeError::ArgvTooMany { count: 40 },
        ),
        (
            encode_start(&mut out, &[&b""[..], b"x"]),
            EncodeError::EmptyName,
        ),
        (
            encode_start(&mut out, &[vec![b'a'; 300]]),
            EncodeError::StringTooLong { len: 300 },
        ),
        (
            encode_error(&mut out, &[b'e'; 600]),
            EncodeError::ErrorTextTooLong { len: 600 },
        ),
        (
            encode_start(&mut out, &[&b"a\0b"[..]]),
            EncodeError::NulInString,
        ),
        (encode_error(&mut out, b"\0"), EncodeError::NulInString),
        (
            encode_raw(&mut out, 4, &vec![0; PAYLOAD_LEN_MAX + 1]),
            EncodeError::PayloadTooLarge {
                len: PAYLOAD_LEN_MAX + 1,
            },
        ),
    ];
    let mut seen = BTreeSet::new();
    for (result, expected) in cases {
        assert_eq!(result, Err(expected));
        assert!(!expected.to_string().is_empty());
        seen.insert(encode_error_name(&expected));
    }
    assert_eq!(seen.len(), 8);
}

fn string_of(len_max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(1u8..=255, 0..=len_max)
}

fn valid_frame() -> impl Strategy<Value = OwnedFrame> {
    let uninterpreted = prop::sample::select(vec![
        MessageType::Ack,
        MessageType::ListProcesses,
        MessageType::ProcessList,
        MessageType::StopProcess,
        MessageType::ProcessStopped,
        MessageType::ApplyConstraints,
        MessageType::ConstraintsApplied,
    ]);
    prop_oneof![
        (
            prop::collection::vec(1u8..=255, 1..=STRING_LEN_MAX),
            prop::collection::vec(string_of(STRING_LEN_MAX), 0..=32)
        )
            .prop_map(|(name, args)| {
                let mut argv = vec![name];
                argv.extend(args);
                OwnedFrame::Start { argv }
            }),
        (any::<i32>(), any::<i32>()).prop_map(|(host_pid, container_pid)| {
            OwnedFrame::Started {
                host_pid,
                container_pid,
            }
        }),
        string_of(ERROR_TEXT_LEN_MAX).prop_map(|text| OwnedFrame::Error { text }),
        Just(OwnedFrame::Ping),
        Just(OwnedFrame::Pong),
        (
            uninterpreted,
            prop::collection::vec(any::<u8>(), 0..PAYLOAD_LEN_MAX)
        )
            .prop_map(|(msg_type, payload)| OwnedFrame::Other { msg_type, payload }),
        (
            any::<u32>().prop_filter("unknown", |t| MessageType::from_u32(*t).is_none()),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(msg_type, payload)| OwnedFrame::Unknown { msg_type, payload }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn roundtrip_valid_frames(frame in valid_frame()) {
        let bytes = encoded(&frame);
        prop_assert!(bytes.len() <= FRAME_LEN_MAX);
        prop_assert_eq!(decode_whole(&bytes).unwrap().to_owned_frame(), frame);
    }

    #[test]
    fn decode_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        check_decode(&bytes);
        let _ = decode_pidfd_marker(&bytes);
    }

    #[test]
    fn decode_never_panics_behind_plausible_headers(
        msg_type in 0u32..15,
        length in prop_oneof![0u32..600, Just(8452u32), any::<u32>()],
        body in prop::collection::vec(any::<u8>(), 0..700),
    ) {
        let mut bytes = header(msg_type, length);
        bytes.extend_from_slice(&body);
        check_decode(&bytes);
    }

    #[test]
    fn decode_never_panics_on_mutated_valid_frames(
        frame in valid_frame(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encoded(&frame);
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let end = cut.index(bytes.len() + 1);
        check_decode(&bytes[..end]);
        check_decode(&bytes);
    }
}

/// Decoding never panics; a need-more answer is consistent with the buffer, a frame's
/// `consumed` is within it, and a decoded frame re-encodes to something that decodes equal.
fn check_decode(bytes: &[u8]) {
    match decode(bytes) {
        Err(_) => {}
        Ok(Decoded::NeedMore { bytes: n }) => {
            assert!(n > 0);
            assert!(bytes.len() + n <= FRAME_LEN_MAX);
        }
        Ok(Decoded::Done { value, consumed }) => {
            assert!(consumed <= bytes.len());
            let owned = value.to_owned_frame();
            let again = encoded(&owned);
            assert_eq!(decode_whole(&again).unwrap().to_owned_frame(), owned);
        }
    }
}
