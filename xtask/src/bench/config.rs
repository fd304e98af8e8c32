//! holden-orchestrator configurations for the benchmark: probe services that restart at once.

use std::path::Path;

/// One probe service of a configuration.
#[derive(Clone, Copy, Debug)]
pub struct Service {
    /// Probe service id (also in the name, `s<id>`).
    pub id: u32,
    /// Spawned through holden-agent instead of locally.
    pub qm: bool,
    /// Stays up (`idle`) instead of exiting at once (`exit`).
    pub idle: bool,
    /// stdout and stderr inherited from the orchestrator instead of captured (the default).
    pub inherit_output: bool,
}

/// `count` services with ids from 0, the first `crashing` of which exit at once and the rest
/// stay idle.
pub fn services(count: usize, crashing: usize, qm: bool) -> Vec<Service> {
    (0..count)
        .map(|i| Service {
            id: i as u32,
            qm,
            idle: i >= crashing,
            inherit_output: false,
        })
        .collect()
}

/// A configuration with `slots` slots: restart always, restart delay 0, no start limit, log
/// level `warn` (a restart after a clean exit logs nothing at that level: the figures are the
/// supervision's, not the log writer's), sockets in the run directory.
pub fn orchestrator(
    dir: &Path,
    slots: usize,
    probe: &Path,
    records: &Path,
    services: &[Service],
) -> String {
    let mut out = String::with_capacity(256 + services.len() * 256);
    out.push_str(&format!("slots = {slots}\nlog_level = \"warn\"\n\n"));
    out.push_str(&format!(
        "[agent]\nsocket = {}\nprotocol = \"v1\"\nreconnect_initial = \"10ms\"\nreconnect_max = \"200ms\"\n\n",
        quoted(&dir.join("agent.sock"))
    ));
    out.push_str("[shutdown]\nstop_services = true\ntimeout = \"20s\"\n\n");
    out.push_str(&format!(
        "[control]\nsocket = {}\n\n",
        quoted(&dir.join("control.sock"))
    ));
    for s in services {
        out.push_str(&format!(
            "[[service]]\nname = \"s{id}\"\npartition = \"{part}\"\nargv = [{probe}, {records}, \"{id}\", \"{mode}\"]\n\
             restart = \"always\"\nrestart_delay = \"0\"\nstart_limit = {{ burst = 0, interval = \"0\" }}\n{output}\n",
            output = if s.inherit_output {
                "stdout = \"inherit\"\nstderr = \"inherit\"\n"
            } else {
                ""
            },
            id = s.id,
            part = if s.qm { "qm" } else { "local" },
            probe = quoted(probe),
            records = quoted(records),
            mode = if s.idle { "idle" } else { "exit" },
        ));
    }
    out
}

/// The boot benchmark's configuration: one `type = "notify"` bench-boot-service per service
/// of `dag` (`b<index>`, its delay as argument, `after` and `requires` as drawn), slots = the
/// number of services, `restart = "never"` (a boot service that fails is a broken run, not a
/// figure), log level `info` (the default: the bench reads the `reason=ready` lines) on
/// stderr, sockets in the run directory.
pub fn boot(
    dir: &Path,
    service: &Path,
    records: &Path,
    dag: &super::boot::Dag,
    inherit_output: bool,
) -> String {
    let names = |list: &[usize]| -> String {
        list.iter()
            .map(|i| format!("\"b{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::with_capacity(256 + dag.len() * 256);
    out.push_str(&format!(
        "slots = {}\nlog_level = \"info\"\n\n[log]\njournal = \"never\"\n\n",
        dag.len().max(1)
    ));
    out.push_str(&format!(
        "[agent]\nsocket = {}\n\n[shutdown]\nstop_services = true\ntimeout = \"20s\"\n\n",
        quoted(&dir.join("agent.sock"))
    ));
    out.push_str(&format!(
        "[control]\nsocket = {}\n\n",
        quoted(&dir.join("control.sock"))
    ));
    for i in 0..dag.len() {
        out.push_str(&format!(
            "[[service]]\nname = \"b{i}\"\npartition = \"local\"\nargv = [{service}, {records}, \"{i}\", \"{delay}\"]\n\
             type = \"notify\"\nrestart = \"never\"\nstart_timeout = \"30s\"\n\
             after = [{after}]\nrequires = [{requires}]\n{output}\n",
            service = quoted(service),
            records = quoted(records),
            delay = dag.delay_ms[i],
            after = names(&dag.after[i]),
            requires = names(&dag.requires[i]),
            output = if inherit_output {
                "stdout = \"inherit\"\nstderr = \"inherit\"\n"
            } else {
                ""
            },
        ));
    }
    out
}

/// A TOML basic string.
fn quoted(path: &Path) -> String {
    let text = path.to_string_lossy();
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_and_quoting() {
        let s = services(5, 2, true);
        assert_eq!(s.len(), 5);
        assert!(!s[1].idle && s[2].idle && s[4].qm);
        assert_eq!(quoted(Path::new("/a\"b\\c")), "\"/a\\\"b\\\\c\"");
        let text = orchestrator(Path::new("/d"), 8, Path::new("/p"), Path::new("/r"), &s);
        assert_eq!(text.matches("[[service]]").count(), 5);
        assert!(text.contains("argv = [\"/p\", \"/r\", \"4\", \"idle\"]"));
        assert!(text.contains("partition = \"qm\""));
    }

    #[test]
    fn boot_services() {
        let dag = crate::bench::boot::Dag {
            after: vec![vec![], vec![0], vec![0, 1]],
            requires: vec![vec![], vec![], vec![1]],
            delay_ms: vec![20; 3],
        };
        let text = boot(
            Path::new("/d"),
            Path::new("/s"),
            Path::new("/r"),
            &dag,
            false,
        );
        assert_eq!(text.matches("type = \"notify\"").count(), 3);
        assert!(text.contains("slots = 3\n"));
        assert!(text.contains("argv = [\"/s\", \"/r\", \"2\", \"20\"]"));
        assert!(text.contains("after = [\"b0\", \"b1\"]\nrequires = [\"b1\"]"));
    }
}
