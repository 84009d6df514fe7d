//! What the kernel says about a process, from `/proc`: CPU time used
//! (`/proc/PID/stat` utime and stime) and resident memory (`VmRSS` in
//! `/proc/PID/status`). Used to charge the server (given by `--server-pid`)
//! and the load generator itself for a run.

use std::time::Duration;

/// Clock ticks per second in `/proc/PID/stat`: `USER_HZ`, which Linux
/// fixes at 100 in its user-space ABI on every common architecture.
pub const TICKS_PER_SECOND: u64 = 100;

/// A process to read, by PID, or this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    Pid(u32),
    Me,
}

impl Process {
    fn path(self, file: &str) -> String {
        match self {
            Process::Pid(pid) => format!("/proc/{pid}/{file}"),
            Process::Me => format!("/proc/self/{file}"),
        }
    }

    /// CPU time used so far; `None` when unreadable (no such process, no
    /// `/proc`).
    pub fn cpu(self) -> Option<CpuTime> {
        let text = std::fs::read_to_string(self.path("stat")).ok()?;
        parse_cpu(&text)
    }

    /// Resident memory in bytes.
    pub fn rss(self) -> Option<u64> {
        let text = std::fs::read_to_string(self.path("status")).ok()?;
        parse_rss(&text)
    }
}

/// CPU time of a process: in its own code (user) and in the kernel on its
/// behalf (system: system calls, and on loopback much of the network
/// stack of both ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    pub fn total(&self) -> Duration {
        self.user + self.system
    }
}

/// utime and stime of a `/proc/PID/stat` line. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_cpu(stat: &str) -> Option<CpuTime> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After the name: state is field 3, utime 14 and stime 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = |n: u64| Duration::from_millis(n * 1000 / TICKS_PER_SECOND);
    Some(CpuTime {
        user: ticks(utime),
        system: ticks(stime),
    })
}

/// `VmRSS` of a `/proc/PID/status` text, in bytes.
pub fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// CPU used by a process between two readings.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    process: Process,
    start: Option<CpuTime>,
    at: std::time::Instant,
}

/// What [`CpuMark::since`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuUse {
    /// CPU-seconds, user and system together.
    pub seconds: f64,
    /// Of those, CPU-seconds in the kernel.
    pub system_seconds: f64,
    /// `seconds` as a share of one core over the wall-clock time.
    pub share: f64,
}

impl CpuUse {
    /// Several processes' use together (each share of a core added up);
    /// `None` when any is unknown or there are none.
    pub fn sum(uses: impl IntoIterator<Item = Option<CpuUse>>) -> Option<CpuUse> {
        let mut total: Option<CpuUse> = None;
        for u in uses {
            let u = u?;
            total = Some(match total {
                None => u,
                Some(t) => CpuUse {
                    seconds: t.seconds + u.seconds,
                    system_seconds: t.system_seconds + u.system_seconds,
                    share: t.share + u.share,
                },
            });
        }
        total
    }
}

impl CpuMark {
    pub fn start(process: Process) -> Self {
        Self {
            process,
            start: process.cpu(),
            at: std::time::Instant::now(),
        }
    }

    /// CPU used since the mark.
    pub fn since(&self) -> Option<CpuUse> {
        let (now, start) = (self.process.cpu()?, self.start?);
        let used = now.total().checked_sub(start.total())?.as_secs_f64();
        let system = now.system.checked_sub(start.system)?.as_secs_f64();
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        Some(CpuUse {
            seconds: used,
            system_seconds: system,
            share: used / wall,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_status() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 4 0 100 1000000 300";
        let cpu = parse_cpu(stat).unwrap();
        assert_eq!(cpu.user, Duration::from_millis(2500));
        assert_eq!(cpu.system, Duration::from_millis(750));
        assert_eq!(cpu.total(), Duration::from_millis(3250));
        assert_eq!(parse_cpu("garbage"), None);
        let status = "Name:\tx\nVmPeak:\t 100 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(parse_rss(status), Some(2048 * 1024));
        assert_eq!(parse_rss("Name: x"), None);
    }

    #[test]
    fn uses_add_up_and_an_unknown_one_is_unknown() {
        let u = |s: f64| CpuUse {
            seconds: s,
            system_seconds: s / 2.0,
            share: s / 10.0,
        };
        let both = CpuUse::sum([Some(u(1.0)), Some(u(3.0))]).unwrap();
        assert_eq!(both, u(4.0));
        assert_eq!(CpuUse::sum([Some(u(1.0)), None]), None);
        assert_eq!(CpuUse::sum([]), None);
    }

    #[test]
    fn reads_this_process() {
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(Process::Me.cpu().is_some());
            assert!(Process::Me.rss().unwrap() > 0);
            assert!(CpuMark::start(Process::Me).since().is_some());
        }
    }
}
