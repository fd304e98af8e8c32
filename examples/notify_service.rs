//! A service that speaks sd_notify through holden's own libsystemd-free client
//! (`holden::sd_notify::Notifier`), for the tests of `type = "notify"`:
//!
//!     notify_service [ready-after MS] [status TEXT] [ping-every MS] [pings N] [main-pid PID]
//!     notify_service flood
//!     notify_service say TEXT to SOCKET
//!
//! It sends `READY=1` (with `STATUS=TEXT`, and `MAINPID=PID` if asked) after MS ms (never
//! without `ready-after`), then `WATCHDOG=1` every `ping-every` ms, `pings` times (for ever
//! without it), then sleeps until it is ended. `flood` sends notifications as fast as it can
//! for ever: readiness, status, pings, a `MAINPID=` lie and junk, in turn. `say` sends TEXT
//! once to SOCKET (not `NOTIFY_SOCKET`: for a service that was given none), then sleeps.

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |key: &str| {
        args.iter()
            .position(|a| a == key)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let ms = |key: &str| value(key).and_then(|v| v.parse::<u64>().ok());
    if let (Some(text), Some(socket)) = (value("say"), value("to")) {
        let to = holden::sd_notify::Notifier::to(Some(std::ffi::OsStr::new(&socket)));
        match to.map(|n| n.send(text.as_bytes())) {
            Ok(Ok(())) => println!("said"),
            Ok(Err(e)) => eprintln!("notify_service: send: {e}"),
            Err(e) => eprintln!("notify_service: {socket}: {e}"),
        }
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let notifier = match holden::sd_notify::Notifier::from_env() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("notify_service: NOTIFY_SOCKET: {e}");
            std::process::exit(2);
        }
    };
    if !notifier.enabled() {
        eprintln!("notify_service: no NOTIFY_SOCKET");
    }
    if args.iter().any(|a| a == "flood") {
        let messages: [&[u8]; 5] = [
            b"READY=1\nSTATUS=flooding",
            b"WATCHDOG=1",
            b"MAINPID=1",
            b"STATUS=\xff\xfe not UTF-8",
            b"X=1\nY\n\n\nEXTEND_TIMEOUT_USEC=99999999999999999999",
        ];
        for i in 0u64.. {
            // A full socket means the orchestrator reads no faster: wait a little rather than
            // spin a CPU away from it (the flood is what it must contain, not CPU starvation).
            if notifier.send(messages[(i % 5) as usize]).is_err() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
    if let Some(after) = ms("ready-after") {
        std::thread::sleep(Duration::from_millis(after));
        let mut message = String::from("READY=1");
        if let Some(text) = value("status") {
            message += &format!("\nSTATUS={text}");
        }
        if let Some(pid) = value("main-pid") {
            message += &format!("\nMAINPID={pid}");
        }
        if let Err(e) = notifier.send(message.as_bytes()) {
            eprintln!("notify_service: send: {e}");
        }
        println!("ready sent");
        if let Some(every) = ms("ping-every") {
            let pings = ms("pings").unwrap_or(u64::MAX);
            for _ in 0..pings {
                std::thread::sleep(Duration::from_millis(every));
                let _ = notifier.send(b"WATCHDOG=1");
            }
            println!("pings stopped");
        }
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
