//! Driving a holden v0.2 agent (SOCK_STREAM, legacy codec, one connection per request).

use super::event_loop::Orchestrator;
use super::log::Priority;
use crate::supervise::{Event, ServiceId, SpawnError, SpawnStage};

impl Orchestrator {
    /// v0.2 holds no connection: the agent counts as up and each request connects itself.
    pub(crate) fn agent_legacy_up(&mut self) {
        self.log.line(
            Priority::Notice,
            format_args!("event=agent-up protocol=v0.2"),
        );
        self.push_event(Event::AgentUp);
    }

    /// Not implemented yet: fails the request.
    pub(crate) fn legacy_request(&mut self, service: ServiceId) {
        self.push_event(Event::SpawnFailed {
            service,
            error: SpawnError {
                errno: libc::ENOSYS,
                stage: SpawnStage::Agent,
            },
        });
    }
}
