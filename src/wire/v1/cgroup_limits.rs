//! The `cgroup_limits` section of a `Start` (`StartFlags::CGROUP_LIMITS`, minor 2+): the
//! limits the agent writes into the child's own cgroup before it starts the child
//! (`docs/wire.md` §5b). It carries [`CgroupLimits`], the configuration's own type.

use super::cursor::{Reader, Writer};
use super::error::{DecodeError, EncodeError};
use crate::cgroup::{CgroupLimit, CgroupLimits, CGROUP_LIMIT_KEYS, CGROUP_VALUE_LEN_MAX};

/// A decoded `cgroup_limits` section: its bytes, every rule already checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLimitsSection<'a>(&'a [u8]);

impl CgroupLimitsSection<'_> {
    /// The limits it holds.
    pub fn get(&self) -> CgroupLimits {
        // Checked when the frame was decoded, so this read cannot fail.
        read(&mut Reader::new(self.0, super::types::FrameKind::Start)).unwrap_or_default()
    }
}

/// Reads and checks the section, keeping its bytes.
pub(crate) fn section<'a>(r: &mut Reader<'a>) -> Result<CgroupLimitsSection<'a>, DecodeError> {
    let start = r.pos();
    read(r)?;
    Ok(CgroupLimitsSection(r.span(start, r.pos() - start)))
}

/// Whether `value` can be written to a limit file: 1..=48 bytes of `[0-9a-z ]`.
fn value_ok(value: &[u8]) -> bool {
    (1..=CGROUP_VALUE_LEN_MAX).contains(&value.len())
        && value
            .iter()
            .all(|&b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b' ')
}

/// The number of a limit's file on the wire (its place in [`CGROUP_LIMIT_KEYS`]).
fn number_of(limit: &CgroupLimit) -> Option<u8> {
    CGROUP_LIMIT_KEYS
        .iter()
        .position(|(_, _, file)| *file == limit.file)
        .map(|i| i as u8)
}

/// The section's length after checking it: 1..=6 limits, each a known file once, in the
/// table's order, with a value the decoder takes.
pub(crate) fn len(limits: &CgroupLimits) -> Result<usize, EncodeError> {
    let bad = |what| Err(EncodeError::BadCgroupLimits { what });
    if limits.limits.is_empty() {
        return bad("no limit");
    }
    let mut last = None;
    let mut len = 1;
    for limit in &limits.limits {
        let Some(number) = number_of(limit) else {
            return bad("an unknown limit file");
        };
        if last.is_some_and(|l| l >= number) {
            return bad("limits out of order or twice");
        }
        last = Some(number);
        if !value_ok(limit.value.as_bytes()) {
            return bad("a value that is not 1..=48 bytes of [0-9a-z ]");
        }
        len += 1 + 2 + limit.value.len();
    }
    Ok(len)
}

/// Writes the section (checked by [`len`] first).
pub(crate) fn put(w: &mut Writer<'_>, limits: &CgroupLimits) -> Result<(), EncodeError> {
    w.u8(limits.limits.len() as u8)?;
    for limit in &limits.limits {
        let number = number_of(limit).ok_or(EncodeError::BadCgroupLimits {
            what: "an unknown limit file",
        })?;
        w.u8(number)?;
        w.u16(limit.value.len() as u16)?;
        w.put(limit.value.as_bytes())?;
    }
    Ok(())
}

fn read(r: &mut Reader<'_>) -> Result<CgroupLimits, DecodeError> {
    let bad = |what| DecodeError::BadCgroupLimits { what };
    let count = usize::from(r.u8()?);
    if count == 0 || count > CGROUP_LIMIT_KEYS.len() {
        return Err(bad("0 or more than 6 limits"));
    }
    let mut limits = CgroupLimits::default();
    let mut last = None;
    for _ in 0..count {
        let number = r.u8()?;
        let (key, controller, file) = *CGROUP_LIMIT_KEYS
            .get(usize::from(number))
            .ok_or(bad("an unknown limit file"))?;
        if last.is_some_and(|l| l >= number) {
            return Err(bad("limits out of order or twice"));
        }
        last = Some(number);
        let len = usize::from(r.u16()?);
        let value = r.bytes(len)?;
        if !value_ok(value) {
            return Err(bad("a value that is not 1..=48 bytes of [0-9a-z ]"));
        }
        // value_ok: ASCII, at most the capacity.
        let value = std::str::from_utf8(value)
            .ok()
            .and_then(|v| arrayvec::ArrayString::from(v).ok())
            .ok_or(bad("a value that is not 1..=48 bytes of [0-9a-z ]"))?;
        limits.limits.push(CgroupLimit {
            key,
            controller,
            file,
            value,
        });
    }
    Ok(limits)
}

/// Arbitrary limits for the fuzzer: known files, sometimes out of order, twice, or with a
/// value the encoder must refuse.
#[cfg(feature = "arbitrary")]
pub(crate) fn arbitrary(
    u: &mut arbitrary::Unstructured<'_>,
) -> arbitrary::Result<Option<Box<CgroupLimits>>> {
    if !u.arbitrary::<bool>()? {
        return Ok(None);
    }
    let mut limits = CgroupLimits::default();
    let count = u.int_in_range(0..=CGROUP_LIMIT_KEYS.len())?;
    for _ in 0..count {
        let (key, controller, file) = *u.choose(&CGROUP_LIMIT_KEYS)?;
        let text: String = u.arbitrary()?;
        let Ok(value) = arrayvec::ArrayString::from(&text) else {
            continue;
        };
        limits.limits.push(CgroupLimit {
            key,
            controller,
            file,
            value,
        });
    }
    Ok(Some(Box::new(limits)))
}
