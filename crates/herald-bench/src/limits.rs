//! The open-file limit (`ulimit -n`, RLIMIT_NOFILE), read from
//! `/proc/self/limits`, and the advice given when a run needs more sockets
//! than it allows. Each connection is one file descriptor here and one in
//! the server.

/// Descriptors the process needs besides its connections (stdio, the
/// runtime's epoll and wakers, the HTTP client, a few spare).
pub const SPARE_FILES: u64 = 32;

/// The soft and hard open-file limits; `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// Reads this process's limit; `None` where `/proc` is unavailable.
pub fn open_files() -> Option<FileLimit> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_limits(&text)
}

/// Parses the `Max open files` row of a `/proc/<pid>/limits` table.
pub fn parse_limits(text: &str) -> Option<FileLimit> {
    let row = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = row["Max open files".len()..].split_whitespace();
    let value = |f: Option<&str>| -> Option<Option<u64>> {
        match f? {
            "unlimited" => Some(None),
            n => n.parse().ok().map(Some),
        }
    };
    Some(FileLimit {
        soft: value(fields.next())?,
        hard: value(fields.next())?,
    })
}

/// Advice when `connections` (plus [`SPARE_FILES`]) exceed the soft limit,
/// `None` when the limit is enough.
pub fn advice(limit: FileLimit, connections: u64) -> Option<String> {
    let needed = connections + SPARE_FILES;
    let soft = limit.soft?;
    if soft >= needed {
        return None;
    }
    let mut text = format!(
        "this run opens {connections} connections and needs about {needed} open files, \
         but `ulimit -n` is {soft}.\n"
    );
    match limit.hard {
        Some(hard) if hard < needed => text.push_str(&format!(
            "The hard limit is {hard}, also too low: raise it as root (`ulimit -Hn {needed}` \
             in a root shell, `LimitNOFILE=` for a systemd unit, or `nofile` in \
             /etc/security/limits.conf), then run `ulimit -n {needed}`.\n"
        )),
        _ => text.push_str(&format!(
            "Raise it in this shell with `ulimit -n {needed}` (the hard limit allows it) \
             and run again.\n"
        )),
    }
    text.push_str(
        "The server needs as many: start it from a shell with the same limit \
         (or set LimitNOFILE= in its unit).",
    );
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str =
        "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max open files            1024                 524288               files     \n";

    #[test]
    fn parses_proc_limits() {
        let l = parse_limits(SAMPLE).unwrap();
        assert_eq!(l.soft, Some(1024));
        assert_eq!(l.hard, Some(524288));
        let unlimited = SAMPLE.replace("1024                 524288", "unlimited unlimited");
        assert_eq!(
            parse_limits(&unlimited).unwrap(),
            FileLimit {
                soft: None,
                hard: None
            }
        );
        assert!(parse_limits("nothing here").is_none());
    }

    #[test]
    fn advice_only_when_needed() {
        let l = parse_limits(SAMPLE).unwrap();
        assert!(advice(l, 100).is_none());
        let a = advice(l, 5000).unwrap();
        assert!(a.contains("ulimit -n 5032"), "{a}");
        assert!(!a.contains("as root"), "{a}");
        let a = advice(l, 600_000).unwrap();
        assert!(a.contains("as root"), "{a}");
    }

    #[test]
    fn reads_own_limits() {
        if std::path::Path::new("/proc/self/limits").exists() {
            assert!(open_files().is_some());
        }
    }
}
