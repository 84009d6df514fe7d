//! What limits the size of a run on this machine, and the advice given when
//! a run asks for more: the open-file limit (`ulimit -n`, RLIMIT_NOFILE,
//! read from `/proc/self/limits`; each connection is one file descriptor
//! here and one in the server) and ephemeral ports (one per connection per
//! source address, from `/proc/sys/net/ipv4/ip_local_port_range`), which
//! large runs spread over several loopback source addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

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

/// Ephemeral ports of a default Linux (32768–60999), used when the range
/// cannot be read.
pub const DEFAULT_EPHEMERAL_PORTS: u64 = 28_232;

/// Share of the ephemeral range a run plans to use per source address;
/// the rest stays for the system (and sockets still in TIME_WAIT).
const PORT_SHARE: f64 = 0.9;

/// Most loopback source addresses a run spreads over (127.0.0.1 … .250).
pub const MAX_SOURCES: usize = 250;

/// Ports in the ephemeral range of this machine.
pub fn ephemeral_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| parse_port_range(&t))
        .unwrap_or(DEFAULT_EPHEMERAL_PORTS)
}

/// `low high` → the number of ports.
pub fn parse_port_range(text: &str) -> Option<u64> {
    let mut it = text.split_whitespace().map(|n| n.parse::<u64>());
    let (low, high) = (it.next()?.ok()?, it.next()?.ok()?);
    (high >= low).then(|| high - low + 1)
}

/// The source addresses `connections` to `target` should bind, round
/// robin: none (the kernel picks) when one address has ports enough and
/// none were asked for; else 127.0.0.1, 127.0.0.2, … — `requested` of them,
/// or as many as the ports need. Fails with advice when that cannot work.
pub fn source_addresses(
    connections: usize,
    requested: Option<usize>,
    target: SocketAddr,
    ports: u64,
) -> Result<Vec<IpAddr>, String> {
    let per_source = ((ports as f64 * PORT_SHARE) as usize).max(1);
    let needed = connections.div_ceil(per_source);
    let count = match requested {
        Some(0) | None if needed <= 1 => return Ok(Vec::new()),
        Some(0) | None => needed,
        Some(k) => k,
    };
    if !target.ip().is_ipv4() {
        return Err(format!(
            "{connections} connections need about {needed} source addresses \
             ({per_source} ephemeral ports each), which herald-bench only spreads over \
             IPv4 loopback: target 127.0.0.1 instead of {}",
            target.ip()
        ));
    }
    if count < needed || count > MAX_SOURCES {
        return Err(format!(
            "{connections} connections need at least {needed} source addresses \
             (about {per_source} ephemeral ports each on this machine), at most \
             {MAX_SOURCES}: pass --source-ips {needed}, or widen the range with \
             `sysctl net.ipv4.ip_local_port_range`"
        ));
    }
    Ok((0..count)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i as u8)))
        .collect())
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
    fn source_addresses_when_ports_run_out() {
        let v4: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let v6: SocketAddr = "[::1]:8000".parse().unwrap();
        assert_eq!(parse_port_range("32768\t60999\n"), Some(28_232));
        assert!(source_addresses(1000, None, v4, 28_232).unwrap().is_empty());
        let s = source_addresses(60_000, None, v4, 28_232).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[2], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        assert_eq!(source_addresses(10, Some(4), v4, 28_232).unwrap().len(), 4);
        let e = source_addresses(60_000, Some(1), v4, 28_232).unwrap_err();
        assert!(e.contains("--source-ips 3"), "{e}");
        assert!(source_addresses(60_000, None, v6, 28_232).is_err());
    }

    #[test]
    fn reads_own_limits() {
        if std::path::Path::new("/proc/self/limits").exists() {
            assert!(open_files().is_some());
        }
    }
}
