//! The probe's records (layout in `benches/src/lib.rs`; keep both in step) and the restart
//! latencies they give.

use std::path::Path;

pub const RECORD_BYTES: usize = 32;
const RECORD_MAGIC: u32 = 0x484c_4442;
pub const KIND_EXIT: u32 = 1;
pub const KIND_IDLE: u32 = 2;
/// A boot service's readiness: start of `main`, and just before it sent `READY=1`.
pub const KIND_READY: u32 = 3;
/// bench-launch about to exec the orchestrator (both times that instant).
pub const KIND_LAUNCH: u32 = 4;
/// The service id of a launch record.
pub const LAUNCH_SERVICE: u32 = u32::MAX;

/// One probe instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub service: u32,
    pub kind: u32,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// Records in the file so far (its size / 32), without reading it.
pub fn count(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len() / RECORD_BYTES as u64)
}

/// Every record of the file, in file (append) order. A bad record means the probe or the
/// file is broken: an error, not a figure.
pub fn read(path: &Path) -> Result<Vec<Record>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn decode(bytes: &[u8]) -> Result<Vec<Record>, String> {
    let whole = bytes.len() - bytes.len() % RECORD_BYTES;
    let mut out = Vec::with_capacity(whole / RECORD_BYTES);
    for (i, chunk) in bytes[..whole].chunks_exact(RECORD_BYTES).enumerate() {
        let u32_at = |at: usize| u32::from_ne_bytes(chunk[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_ne_bytes(chunk[at..at + 8].try_into().unwrap());
        if u32_at(0) != RECORD_MAGIC {
            return Err(format!("record {i}: bad magic {:#x}", u32_at(0)));
        }
        let r = Record {
            service: u32_at(4),
            kind: u32_at(12),
            start_ns: u64_at(16),
            end_ns: u64_at(24),
        };
        let consistent = match r.kind {
            KIND_EXIT | KIND_READY => r.end_ns >= r.start_ns && r.start_ns > 0,
            KIND_LAUNCH => r.end_ns == r.start_ns && r.start_ns > 0 && r.service == LAUNCH_SERVICE,
            KIND_IDLE => r.end_ns == 0 && r.start_ns > 0,
            _ => false,
        };
        if !consistent {
            return Err(format!("record {i}: inconsistent {r:?}"));
        }
        out.push(r);
    }
    Ok(out)
}

/// Restart latencies: for every exit record of a service, the time from its end stamp to the
/// start stamp of the service's next instance. A latency is kept when the *later* instance's
/// record has a file index in `window` (records appended in that time span).
pub fn latencies(records: &[Record], window: std::ops::Range<usize>) -> Result<Vec<u64>, String> {
    let services = records
        .iter()
        .map(|r| r.service as usize + 1)
        .max()
        .unwrap_or(0);
    let mut by_service: Vec<Vec<(u64, usize)>> = vec![Vec::new(); services];
    for (i, r) in records.iter().enumerate() {
        by_service[r.service as usize].push((r.start_ns, i));
    }
    let mut out = Vec::new();
    for instances in &mut by_service {
        instances.sort_unstable();
        for pair in instances.windows(2) {
            let (prev, next) = (&records[pair[0].1], &records[pair[1].1]);
            if !window.contains(&pair[1].1) {
                continue;
            }
            if prev.kind != KIND_EXIT {
                return Err(format!(
                    "service {}: an idle instance was followed by another one",
                    prev.service
                ));
            }
            if next.start_ns < prev.end_ns {
                return Err(format!(
                    "service {}: an instance started ({} ns) before the previous one ended ({} ns): two at once",
                    prev.service, next.start_ns, prev.end_ns
                ));
            }
            out.push(next.start_ns - prev.end_ns);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(service: u32, kind: u32, start: u64, end: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&RECORD_MAGIC.to_ne_bytes());
        b.extend_from_slice(&service.to_ne_bytes());
        b.extend_from_slice(&1i32.to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&start.to_ne_bytes());
        b.extend_from_slice(&end.to_ne_bytes());
        b
    }

    #[test]
    fn latencies_pair_each_service_in_start_order() {
        let mut file = Vec::new();
        for (s, start, end) in [
            (0, 10, 20),
            (1, 12, 15),
            (0, 25, 30),
            (1, 40, 41),
            (0, 31, 35),
        ] {
            file.extend(bytes(s, KIND_EXIT, start, end));
        }
        file.extend_from_slice(&[0u8; 7]); // a record being written: ignored
        let records = decode(&file).unwrap();
        assert_eq!(records.len(), 5);
        let mut l = latencies(&records, 0..5).unwrap();
        l.sort();
        assert_eq!(l, vec![1, 5, 25]);
        // Only pairs whose later record is in the window.
        assert_eq!(latencies(&records, 3..5).unwrap(), vec![1, 25]);
    }

    #[test]
    fn broken_records_are_errors() {
        let mut bad = bytes(0, KIND_EXIT, 10, 20);
        bad[0] = 0;
        assert!(decode(&bad).is_err());
        assert!(decode(&bytes(0, KIND_EXIT, 30, 20)).is_err());
        assert!(decode(&bytes(0, 9, 1, 2)).is_err());
        assert!(decode(&bytes(0, KIND_READY, 30, 20)).is_err());
        assert!(decode(&bytes(0, KIND_LAUNCH, 30, 30)).is_err());
        assert!(decode(&bytes(LAUNCH_SERVICE, KIND_LAUNCH, 30, 30)).is_ok());
        let mut overlap = bytes(0, KIND_EXIT, 10, 20);
        overlap.extend(bytes(0, KIND_EXIT, 15, 25));
        assert!(latencies(&decode(&overlap).unwrap(), 0..2).is_err());
        let mut idle = bytes(0, KIND_IDLE, 10, 0);
        idle.extend(bytes(0, KIND_EXIT, 15, 25));
        assert!(latencies(&decode(&idle).unwrap(), 0..2).is_err());
    }
}
