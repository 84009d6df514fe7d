//! A running `herald serve` process for tests that need the binary itself:
//! started from a prepared command, its stderr read line by line, its
//! address taken from the `listening` line; killed on drop if still alive.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Served {
    pub child: Child,
    pub addr: String,
    /// stderr lines read after the `listening` line.
    pub lines: mpsc::Receiver<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Served {
    /// Spawns `cmd` (a `herald serve` on 127.0.0.1) and waits up to `wait`
    /// for it to listen. With `HERALD_TEST_SHOW_LOGS` set, its log is
    /// echoed to the test's stderr.
    pub fn spawn(mut cmd: Command, wait: Duration) -> Served {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        let show = std::env::var_os("HERALD_TEST_SHOW_LOGS").is_some();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if show {
                    eprintln!("{line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Owned (and so killed on drop) before anything can fail.
        let mut served = Served {
            child,
            addr: String::new(),
            lines: rx,
        };
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = served
                .lines
                .recv_timeout(left)
                .expect("a `listening` line on stderr in time");
            if !line.contains("listening") {
                continue;
            }
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .unwrap_or_else(|| panic!("no addr= in {line:?}"));
            assert!(addr.starts_with("127.0.0.1:"), "{line}");
            assert_ne!(addr, "127.0.0.1:0", "{line}");
            served.addr = addr.to_string();
            return served;
        }
    }
}
