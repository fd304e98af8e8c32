//! The `STATUS=` line the orchestrator sends to systemd (`systemctl status` shows it): how many
//! services, which have failed, and the agent link. Sent at start-up, when the agent comes or
//! goes, when a service enters or leaves `failed`, and after a reload: never per restart.

use super::services::Services;
use crate::supervise::{State, Supervisor};
use std::fmt;

/// Failed services named in the line; more are counted.
const FAILED_NAMES_MAX: usize = 8;

/// `12 services (3 in QM), 1 failed: radio; agent up`.
pub(crate) struct StatusLine<'a> {
    pub services: &'a Services,
    pub core: &'a Supervisor,
    pub qm: usize,
    pub agent: &'a str,
}

impl fmt::Display for StatusLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let active = || self.services.list.iter().filter(|s| s.active);
        let failed = || {
            active().filter(|s| {
                self.core
                    .status(s.id)
                    .is_some_and(|st| st.state == State::Failed)
            })
        };
        let count = active().count();
        let noun = if count == 1 { "service" } else { "services" };
        write!(f, "{count} {noun} ({} in QM), ", self.qm)?;
        match failed().count() {
            0 => f.write_str("none failed")?,
            n => {
                write!(f, "{n} failed: ")?;
                for (i, service) in failed().take(FAILED_NAMES_MAX).enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(&service.def.name)?;
                }
                if n > FAILED_NAMES_MAX {
                    write!(f, " and {} more", n - FAILED_NAMES_MAX)?;
                }
            }
        }
        write!(f, "; agent {}", self.agent)
    }
}
