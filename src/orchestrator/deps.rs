//! Dependencies between services (`after`, `requires`): the graph, by service index, and
//! which started services wait for theirs. The configuration has refused unknown names and
//! cycles; what happens on each transition is the loop's (`Orchestrator::deps_on_transition`).
//!
//! - `after = [...]`: a start waits until each of those that is on its way (starting,
//!   waiting itself, restarting) is ready: `running` (for `notify`, after `READY=1`), or for a
//!   `oneshot` done (`stopped` after exit 0). One that is not going to start (stopped, failed)
//!   does not hold it back, as in systemd.
//! - `requires = [...]`: those are started with it; when one of them fails or stops, it is
//!   stopped (a waiting start is dropped).
//! - `wants = [...]`: those are started with it; what becomes of them later changes nothing.

use super::services::Services;

/// Where a dependency stands, for a start that waits for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Ready (or done).
    Ready,
    /// On its way: wait.
    Coming,
    /// Not going to be ready (stopped, failed): nothing to wait for.
    Absent,
}

/// The graph and the waiting starts.
pub(crate) struct Deps {
    after: Vec<Vec<usize>>,
    requires: Vec<Vec<usize>>,
    wants: Vec<Vec<usize>>,
    /// The services that come after, or need, each one (for a shutdown in reverse order).
    dependents: Vec<Vec<usize>>,
    /// A start asked for (at boot or by an operator) that waits for an `after` dependency.
    pub(crate) waiting: Vec<bool>,
}

impl Deps {
    /// The graph of the services as they are now (start-up and after a reload; allocates),
    /// for up to `capacity` services.
    pub(crate) fn build(services: &Services, capacity: usize) -> Deps {
        let resolve = |names: &[String]| -> Vec<usize> {
            names.iter().filter_map(|n| services.by_name(n)).collect()
        };
        let mut after = vec![Vec::new(); capacity];
        let mut requires = vec![Vec::new(); capacity];
        let mut wants = vec![Vec::new(); capacity];
        for (i, s) in services.list.iter().enumerate().filter(|(_, s)| s.active) {
            after[i] = resolve(&s.def.after);
            requires[i] = resolve(&s.def.requires);
            wants[i] = resolve(&s.def.wants);
        }
        let mut dependents = vec![Vec::new(); capacity];
        for (d, deps) in after.iter().zip(&requires).enumerate() {
            for &i in deps.0.iter().chain(deps.1) {
                if !dependents[i].contains(&d) {
                    dependents[i].push(d);
                }
            }
        }
        Deps {
            after,
            requires,
            wants,
            dependents,
            waiting: vec![false; capacity],
        }
    }

    /// What `index` starts only once they are ready.
    pub(crate) fn after(&self, index: usize) -> &[usize] {
        self.after.get(index).map_or(&[], Vec::as_slice)
    }

    /// What `index` needs.
    pub(crate) fn requires(&self, index: usize) -> &[usize] {
        self.requires.get(index).map_or(&[], Vec::as_slice)
    }

    /// What `index` wants started with it.
    pub(crate) fn wants(&self, index: usize) -> &[usize] {
        self.wants.get(index).map_or(&[], Vec::as_slice)
    }

    /// What comes after, or needs, `index`.
    pub(crate) fn dependents(&self, index: usize) -> &[usize] {
        self.dependents.get(index).map_or(&[], Vec::as_slice)
    }

    /// Whether any service has a dependency.
    pub(crate) fn any_dependency(&self) -> bool {
        self.after
            .iter()
            .chain(&self.requires)
            .any(|d| !d.is_empty())
    }

    /// Whether any start waits.
    pub(crate) fn any_waiting(&self) -> bool {
        self.waiting.iter().any(|&w| w)
    }

    /// Whether `index`'s start must wait, given each dependency's standing.
    pub(crate) fn blocked(&self, index: usize, standing: impl Fn(usize) -> Standing) -> bool {
        self.after(index)
            .iter()
            .any(|&d| standing(d) == Standing::Coming)
    }
}
