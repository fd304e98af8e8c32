//! The progress line: rewritten in place on a terminal, one line every few seconds otherwise
//! (CI logs).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Least time between two updates on a terminal.
const TTY_INTERVAL: Duration = Duration::from_millis(100);
/// Least time between two lines in a log.
const LOG_INTERVAL: Duration = Duration::from_secs(5);

pub struct Progress {
    tty: bool,
    started: Instant,
    last: Option<Instant>,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last: None,
        }
    }

    /// Shows `text` for `phase` unless an update was shown very recently.
    pub fn update(&mut self, phase: &str, text: &str) {
        let interval = if self.tty { TTY_INTERVAL } else { LOG_INTERVAL };
        if self.last.is_some_and(|l| l.elapsed() < interval) {
            return;
        }
        self.last = Some(Instant::now());
        let line = format!(
            "bench {:>5.1}s  {phase}: {text}",
            self.started.elapsed().as_secs_f64()
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Ends a phase with a result line that stays.
    pub fn done(&mut self, phase: &str, text: &str) {
        let line = format!(
            "bench {:>5.1}s  {phase}: {text}",
            self.started.elapsed().as_secs_f64()
        );
        if self.tty {
            eprintln!("\r\x1b[K{line}");
        } else {
            eprintln!("{line}");
        }
        self.last = None;
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}
