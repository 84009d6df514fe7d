//! Processes a test starts and owns: a `herald serve` ([`Served`]), its
//! address read from its log, and private Redis or NATS servers
//! ([`OwnServer`]) that a test can stop and restart. Each is killed when
//! dropped.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{required, WAIT};

pub struct Served {
    pub child: Child,
    pub addr: String,
    /// stderr lines up to the `listening` line, which is the last.
    pub head: Vec<String>,
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
    /// The lines the server logs up to (and with) the first that contains
    /// `text`, which it must log in time.
    pub fn lines_until(&self, text: &str) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line with {text:?} in time: {seen:?}"));
            let done = line.contains(text);
            seen.push(line);
            if done {
                return seen;
            }
        }
    }

    /// Waits until the server logs a line containing `text`.
    pub fn logged(&self, text: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line with {text:?} in time"));
            if line.contains(text) {
                return;
            }
        }
    }

    /// Sends the process a signal (`"TERM"`, `"KILL"`, …).
    pub fn signal(&self, name: &str) {
        signal(&self.child, name);
    }

    /// Waits (bounded) for the process to exit, killing it on timeout.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("process status") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("herald did not exit in time");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

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
            head: Vec::new(),
            lines: rx,
        };
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match served.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => panic!(
                    "no `listening` line on stderr in time ({e}); it said:\n{}",
                    served.head.join("\n")
                ),
            };
            served.head.push(line.clone());
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

/// A port no one listens on right now, found by binding port 0. Another
/// process may take it before it is used: [`OwnServer`] then tries another.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A broker server of the test's own (`redis-server`, `nats-server`) on a
/// port of its own, killed on drop.
pub struct OwnServer {
    child: Option<Child>,
    pub port: u16,
    program: &'static str,
    args: Vec<String>,
}

/// Ports tried before a server that cannot start is given up.
const START_ATTEMPTS: usize = 5;

impl OwnServer {
    /// Starts `program` with `args(port)` on a free port, trying another
    /// port when the chosen one was taken meanwhile. `None` (said on
    /// stderr) when the program cannot run here; a failure instead when
    /// `HERALD_TEST_REQUIRE_SERVICES` is set.
    pub fn start(program: &'static str, args: impl Fn(u16) -> Vec<String>) -> Option<OwnServer> {
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let mut server = OwnServer {
                child: None,
                port,
                program,
                args: args(port),
            };
            match server.launch() {
                Launch::Up => return Some(server),
                Launch::Exited => continue,
                Launch::Missing => {
                    assert!(!required(), "{program} cannot be started");
                    eprintln!("skipped: {program} cannot be started");
                    return None;
                }
            }
        }
        panic!("{program} did not start on any of {START_ATTEMPTS} ports");
    }

    /// Starts the server again on the same port (its clients are
    /// configured with it).
    pub fn restart(&mut self) {
        for _ in 0..START_ATTEMPTS {
            if let Launch::Up = self.launch() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{} did not restart on port {}", self.program, self.port);
    }

    /// Sends the running server a signal (`"STOP"`, `"CONT"`, …).
    pub fn signal(&self, name: &str) {
        signal(self.child.as_ref().expect("server running"), name);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Spawns the program and waits until its port answers or it exits.
    fn launch(&mut self) -> Launch {
        let Ok(mut child) = Command::new(self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            return Launch::Missing;
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if child.try_wait().ok().flatten().is_some() {
                return Launch::Exited;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return Launch::Up;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{} did not start in time", self.program);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sends `child` the signal `name`.
fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} failed");
}

enum Launch {
    Up,
    /// It exited at once, most likely because the port was taken.
    Exited,
    Missing,
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.stop();
    }
}
