//! The agent's own environment, captured once at start-up, for `Start`
//! requests with `INHERIT_ENV` and for v0.2 starts (v0.2 children inherited
//! the agent's environment).
//!
//! Variables that only concern the agent itself (systemd's socket activation
//! and notification variables) are left out. The capture is bounded; what
//! does not fit is dropped and reported once at start-up.

use std::os::unix::ffi::OsStrExt;

use crate::limits::{INHERITED_ENV_BYTES_MAX, INHERITED_ENV_COUNT_MAX};

/// Variables never passed on to children.
const PRIVATE: [&[u8]; 5] = [
    b"LISTEN_PID",
    b"LISTEN_FDS",
    b"LISTEN_FDNAMES",
    b"NOTIFY_SOCKET",
    b"WATCHDOG_USEC",
];

/// `NAME=VALUE` entries of the agent's environment.
#[derive(Debug, Default)]
pub struct InheritedEnv {
    entries: Vec<Vec<u8>>,
    bytes: usize,
    /// Entries that did not fit the limits (reported at start-up).
    pub dropped: usize,
}

impl InheritedEnv {
    /// Captures the current environment.
    pub fn capture() -> InheritedEnv {
        Self::from_pairs(
            std::env::vars_os().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())),
        )
    }

    pub fn from_pairs<I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>>(pairs: I) -> InheritedEnv {
        let mut env = InheritedEnv::default();
        for (name, value) in pairs {
            if name.is_empty() || PRIVATE.contains(&name.as_slice()) {
                continue;
            }
            let entry_len = name.len() + 1 + value.len();
            if env.entries.len() >= INHERITED_ENV_COUNT_MAX
                || env.bytes + entry_len + 1 > INHERITED_ENV_BYTES_MAX
            {
                env.dropped += 1;
                continue;
            }
            let mut entry = name;
            entry.push(b'=');
            entry.extend_from_slice(&value);
            env.bytes += entry.len() + 1;
            env.entries.push(entry);
        }
        env
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes the entries take with their NULs.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.entries.iter().map(Vec::as_slice)
    }
}

/// The name part of a `NAME=VALUE` entry.
pub fn entry_name(entry: &[u8]) -> &[u8] {
    match entry.iter().position(|&b| b == b'=') {
        Some(eq) => &entry[..eq],
        None => entry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_variables_are_left_out_and_limits_hold() {
        let pairs = vec![
            (b"PATH".to_vec(), b"/bin".to_vec()),
            (b"NOTIFY_SOCKET".to_vec(), b"/run/x".to_vec()),
            (b"LISTEN_FDS".to_vec(), b"1".to_vec()),
        ];
        let env = InheritedEnv::from_pairs(pairs);
        assert_eq!(
            env.iter().collect::<Vec<_>>(),
            vec![b"PATH=/bin".as_slice()]
        );
        let many = (0..INHERITED_ENV_COUNT_MAX + 5).map(|i| (format!("V{i}").into_bytes(), vec![]));
        let env = InheritedEnv::from_pairs(many);
        assert_eq!(env.len(), INHERITED_ENV_COUNT_MAX);
        assert_eq!(env.dropped, 5);
        assert_eq!(entry_name(b"A=b=c"), b"A");
    }
}
