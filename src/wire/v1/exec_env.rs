//! The `exec` section of a `Start` (`StartFlags::EXEC_ENV`, minor 2+): a process's execution
//! environment (resource limits, umask, OOM score, nice, scheduling, CPU affinity,
//! `no_new_privs`, supplementary groups, capabilities) in the layout of `docs/wire.md` §5a.
//! It carries [`ExecEnv`], the spawner's own type, so the agent applies exactly what was
//! decoded.

use super::cursor::{Reader, Writer};
use super::error::{DecodeError, EncodeError};
use crate::spawn::{
    CpuSet, ExecEnv, Groups, OomScoreAdj, Rlimit, SchedPolicy, CPU_SET_WORDS, GROUPS_MAX,
    RLIMIT_COUNT,
};

/// A decoded `exec` section: its bytes, every rule already checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecSection<'a>(&'a [u8]);

impl ExecSection<'_> {
    /// The execution environment it holds.
    pub fn get(&self) -> ExecEnv {
        // Checked when the frame was decoded, so this read cannot fail.
        read(&mut Reader::new(self.0, super::types::FrameKind::Start)).unwrap_or_default()
    }
}

/// Reads and checks the section, keeping its bytes.
pub(crate) fn section<'a>(r: &mut Reader<'a>) -> Result<ExecSection<'a>, DecodeError> {
    let start = r.pos();
    read(r)?;
    Ok(ExecSection(r.span(start, r.pos() - start)))
}

/// Bits of the section's `fields`: which parts follow, in this order.
pub mod field {
    pub const UMASK: u16 = 1 << 0;
    pub const OOM_SCORE_ADJ: u16 = 1 << 1;
    pub const NICE: u16 = 1 << 2;
    pub const SCHED: u16 = 1 << 3;
    pub const CPU_AFFINITY: u16 = 1 << 4;
    pub const NO_NEW_PRIVS: u16 = 1 << 5;
    pub const GROUPS: u16 = 1 << 6;
    pub const CAP_BOUNDING: u16 = 1 << 7;
    pub const CAP_AMBIENT: u16 = 1 << 8;
    pub const WATCHDOG_PID: u16 = 1 << 9;
    /// Every bit this version knows.
    pub const ALL: u16 = (1 << 10) - 1;
}

/// The kernel's policy numbers, as the wire carries them.
fn policy_number(policy: SchedPolicy) -> u8 {
    match policy {
        SchedPolicy::Other => 0,
        SchedPolicy::Fifo => 1,
        SchedPolicy::Rr => 2,
    }
}

fn policy_of(number: u8) -> Option<SchedPolicy> {
    match number {
        0 => Some(SchedPolicy::Other),
        1 => Some(SchedPolicy::Fifo),
        2 => Some(SchedPolicy::Rr),
        _ => None,
    }
}

/// Whether a policy and priority go together: 0 for `SCHED_OTHER`, 1..=99 otherwise.
fn sched_valid(policy: SchedPolicy, priority: u8) -> bool {
    match policy {
        SchedPolicy::Other => priority == 0,
        SchedPolicy::Fifo | SchedPolicy::Rr => (1..=99).contains(&priority),
    }
}

/// The words of an affinity up to its last non-zero one (none for an empty set).
fn affinity_words(cpus: &CpuSet) -> &[u64] {
    let words = cpus.words();
    let used = words
        .iter()
        .rposition(|&w| w != 0)
        .map_or(0, |last| last + 1);
    words.get(..used).unwrap_or(&[])
}

/// The `fields` and `rlimits` masks of `exec`.
fn masks(exec: &ExecEnv) -> (u16, u16) {
    let mut fields = 0;
    let mut set = |on: bool, bit: u16| {
        if on {
            fields |= bit;
        }
    };
    set(exec.umask.is_some(), field::UMASK);
    set(exec.oom_score_adj.is_some(), field::OOM_SCORE_ADJ);
    set(exec.nice.is_some(), field::NICE);
    set(exec.sched.is_some(), field::SCHED);
    set(exec.cpu_affinity.is_some(), field::CPU_AFFINITY);
    set(exec.no_new_privs, field::NO_NEW_PRIVS);
    set(exec.groups.is_some(), field::GROUPS);
    set(exec.cap_bounding.is_some(), field::CAP_BOUNDING);
    set(exec.cap_ambient.is_some(), field::CAP_AMBIENT);
    set(exec.watchdog_pid, field::WATCHDOG_PID);
    let rlimits = exec
        .rlimits
        .iter()
        .enumerate()
        .filter(|(_, limit)| limit.is_some())
        .fold(0u16, |mask, (resource, _)| mask | (1 << resource));
    (fields, rlimits)
}

/// The section's length after checking that it can be sent: it sets something, and every
/// value is one the decoder takes.
pub(crate) fn len(exec: &ExecEnv) -> Result<usize, EncodeError> {
    let bad = |what| Err(EncodeError::BadExecEnv { what });
    let (fields, rlimits) = masks(exec);
    if fields == 0 && rlimits == 0 {
        return bad("sets nothing");
    }
    let mut len = 4;
    for limit in exec.rlimits.iter().flatten() {
        if limit.soft > limit.hard {
            return bad("a soft limit above its hard limit");
        }
        len += 16;
    }
    if exec.umask.is_some_and(|m| m > 0o777) {
        return bad("umask above 0o777");
    }
    if exec.nice.is_some_and(|n| !(-20..=19).contains(&n)) {
        return bad("nice outside -20..=19");
    }
    if let Some((policy, priority)) = exec.sched {
        if !sched_valid(policy, priority) {
            return bad("a scheduling priority its policy does not take");
        }
    }
    if let Some(cpus) = &exec.cpu_affinity {
        let words = affinity_words(cpus).len();
        if words == 0 {
            return bad("an empty CPU affinity");
        }
        len += 1 + 8 * words;
    }
    len += [
        (exec.umask.is_some(), 2),
        (exec.oom_score_adj.is_some(), 2),
        (exec.nice.is_some(), 1),
        (exec.sched.is_some(), 2),
        (exec.cap_bounding.is_some(), 8),
        (exec.cap_ambient.is_some(), 8),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| n)
    .sum::<usize>();
    if let Some(groups) = &exec.groups {
        len += 1 + 4 * groups.as_slice().len();
    }
    Ok(len)
}

/// Writes the section (checked by [`len`] first).
pub(crate) fn put(w: &mut Writer<'_>, exec: &ExecEnv) -> Result<(), EncodeError> {
    let (fields, rlimits) = masks(exec);
    w.u16(fields)?;
    w.u16(rlimits)?;
    for limit in exec.rlimits.iter().flatten() {
        w.u64(limit.soft)?;
        w.u64(limit.hard)?;
    }
    if let Some(umask) = exec.umask {
        w.u16(umask as u16)?;
    }
    if let Some(oom) = exec.oom_score_adj {
        w.u16(oom.value() as i16 as u16)?;
    }
    if let Some(nice) = exec.nice {
        w.u8(nice as u8)?;
    }
    if let Some((policy, priority)) = exec.sched {
        w.u8(policy_number(policy))?;
        w.u8(priority)?;
    }
    if let Some(cpus) = &exec.cpu_affinity {
        let words = affinity_words(cpus);
        w.u8(words.len() as u8)?;
        for &word in words {
            w.u64(word)?;
        }
    }
    if let Some(groups) = &exec.groups {
        w.u8(groups.as_slice().len() as u8)?;
        for &gid in groups.as_slice() {
            w.u32(gid)?;
        }
    }
    if let Some(mask) = exec.cap_bounding {
        w.u64(mask)?;
    }
    if let Some(mask) = exec.cap_ambient {
        w.u64(mask)?;
    }
    Ok(())
}

/// Reads the section; every value is checked, so what comes out can be given to the spawner
/// as it is.
pub(crate) fn read(r: &mut Reader<'_>) -> Result<ExecEnv, DecodeError> {
    let bad = |what| DecodeError::BadExecEnv { what };
    let fields = r.u16()?;
    let rlimits = r.u16()?;
    if fields & !field::ALL != 0 {
        return Err(bad("unknown fields bits"));
    }
    if fields == 0 && rlimits == 0 {
        return Err(bad("sets nothing"));
    }
    let mut exec = ExecEnv::default();
    for (resource, limit) in exec.rlimits.iter_mut().enumerate().take(RLIMIT_COUNT) {
        if rlimits & (1 << resource) != 0 {
            let (soft, hard) = (r.u64()?, r.u64()?);
            if soft > hard {
                return Err(bad("a soft limit above its hard limit"));
            }
            *limit = Some(Rlimit { soft, hard });
        }
    }
    let has = |bit| fields & bit != 0;
    if has(field::UMASK) {
        let umask = r.u16()?;
        if umask > 0o777 {
            return Err(bad("umask above 0o777"));
        }
        exec.umask = Some(u32::from(umask));
    }
    if has(field::OOM_SCORE_ADJ) {
        let value = i32::from(r.u16()? as i16);
        exec.oom_score_adj =
            Some(OomScoreAdj::new(value).ok_or(bad("oom_score_adj outside -1000..=1000"))?);
    }
    if has(field::NICE) {
        let nice = r.u8()? as i8;
        if !(-20..=19).contains(&nice) {
            return Err(bad("nice outside -20..=19"));
        }
        exec.nice = Some(nice);
    }
    if has(field::SCHED) {
        let policy = policy_of(r.u8()?).ok_or(bad("an unknown scheduling policy"))?;
        let priority = r.u8()?;
        if !sched_valid(policy, priority) {
            return Err(bad("a scheduling priority its policy does not take"));
        }
        exec.sched = Some((policy, priority));
    }
    if has(field::CPU_AFFINITY) {
        let count = usize::from(r.u8()?);
        if count == 0 || count > CPU_SET_WORDS {
            return Err(bad("a CPU affinity of 0 or more than 16 words"));
        }
        let mut cpus = CpuSet::default();
        let mut last = 0;
        for index in 0..count {
            last = r.u64()?;
            for bit in (0..64).filter(|bit| last & (1 << bit) != 0) {
                cpus.add(index * 64 + bit);
            }
        }
        if last == 0 {
            return Err(bad("a CPU affinity whose last word is zero"));
        }
        exec.cpu_affinity = Some(cpus);
    }
    exec.no_new_privs = has(field::NO_NEW_PRIVS);
    if has(field::GROUPS) {
        let count = usize::from(r.u8()?);
        if count > GROUPS_MAX {
            return Err(bad("more than 64 supplementary groups"));
        }
        let mut gids = [0u32; GROUPS_MAX];
        for gid in gids.iter_mut().take(count) {
            *gid = r.u32()?;
        }
        exec.groups = Groups::new(gids.get(..count).unwrap_or(&[]));
    }
    if has(field::CAP_BOUNDING) {
        exec.cap_bounding = Some(r.u64()?);
    }
    if has(field::CAP_AMBIENT) {
        exec.cap_ambient = Some(r.u64()?);
    }
    exec.watchdog_pid = has(field::WATCHDOG_PID);
    Ok(exec)
}

/// An arbitrary execution environment for the fuzzer: mostly valid values, sometimes values
/// the encoder must refuse (a soft limit above its hard one, a umask above 0o777, a nice or a
/// priority out of range, an empty affinity).
#[cfg(feature = "arbitrary")]
pub(crate) fn arbitrary(
    u: &mut arbitrary::Unstructured<'_>,
) -> arbitrary::Result<Option<Box<ExecEnv>>> {
    if !u.arbitrary::<bool>()? {
        return Ok(None);
    }
    let mut exec = ExecEnv::default();
    for limit in exec.rlimits.iter_mut() {
        if u.ratio(1, 4)? {
            *limit = Some(Rlimit {
                soft: u.arbitrary()?,
                hard: u.arbitrary()?,
            });
        }
    }
    exec.umask = u.arbitrary::<Option<u16>>()?.map(|m| u32::from(m) & 0o1777);
    exec.oom_score_adj = u
        .arbitrary::<Option<i16>>()?
        .and_then(|v| OomScoreAdj::new(i32::from(v) % 1001));
    exec.nice = u.arbitrary::<Option<i8>>()?.map(|n| n % 24);
    if let Some((policy, priority)) = u.arbitrary::<Option<(u8, u8)>>()? {
        exec.sched = policy_of(policy % 3).map(|p| (p, priority % 101));
    }
    if let Some(cpus) = u.arbitrary::<Option<Vec<u16>>>()? {
        let mut set = CpuSet::default();
        for cpu in cpus {
            set.add(usize::from(cpu) % (crate::spawn::CPU_MAX + 1));
        }
        exec.cpu_affinity = Some(set);
    }
    exec.no_new_privs = u.arbitrary()?;
    if let Some(gids) = u.arbitrary::<Option<Vec<u32>>>()? {
        exec.groups = Groups::new(gids.get(..gids.len().min(GROUPS_MAX)).unwrap_or(&[]));
    }
    exec.cap_bounding = u.arbitrary()?;
    exec.cap_ambient = u.arbitrary()?;
    exec.watchdog_pid = u.arbitrary()?;
    Ok(Some(Box::new(exec)))
}
