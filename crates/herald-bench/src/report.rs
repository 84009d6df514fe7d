//! How results are shown: a readable table on stdout and one JSON object
//! with every figure as the last line (alone with `--json`), so scripts can
//! take the last line either way.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::stats::{Summary, Usage};

/// A scenario's result.
pub trait Report: Serialize {
    /// Human-readable rows, as [`Table`] builds them.
    fn table(&self) -> String;
    /// Every connection opened and stayed open, and nothing was lost or
    /// failed (what `--strict` asks for).
    fn clean(&self) -> bool;
    /// Why the run measured nothing at all, if it did not.
    fn nothing_done(&self) -> Option<&'static str> {
        None
    }
}

/// Prints `report`: the table then the JSON line, or only the JSON line.
pub fn print(report: &impl Report, json_only: bool) {
    if !json_only {
        println!("{}", report.table());
    }
    match serde_json::to_string(report) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("cannot encode the report as JSON: {e}"),
    }
}

/// Errors counted by kind ("reply 100", "timeout", "closed 3008"), with the
/// first message seen for each.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ErrorCounts {
    pub total: u64,
    pub by_kind: BTreeMap<String, ErrorKind>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorKind {
    pub count: u64,
    pub example: String,
}

impl ErrorCounts {
    pub fn add(&mut self, kind: String, message: impl FnOnce() -> String) {
        self.total += 1;
        self.by_kind
            .entry(kind)
            .or_insert_with(|| ErrorKind {
                count: 0,
                example: message(),
            })
            .count += 1;
    }

    pub fn merge(&mut self, other: ErrorCounts) {
        self.total += other.total;
        for (kind, e) in other.by_kind {
            self.by_kind
                .entry(kind)
                .and_modify(|mine| mine.count += e.count)
                .or_insert(e);
        }
    }
}

/// Two-column text table.
#[derive(Default)]
pub struct Table {
    out: String,
}

impl Table {
    pub fn new(title: &str) -> Self {
        let mut t = Self::default();
        let _ = writeln!(t.out, "{title}");
        let _ = writeln!(t.out, "{}", "-".repeat(title.len().max(40)));
        t
    }

    pub fn row(&mut self, name: &str, value: impl std::fmt::Display) -> &mut Self {
        let _ = writeln!(self.out, "  {name:<30} {value}");
        self
    }

    /// Latency percentiles in milliseconds.
    pub fn latency(&mut self, name: &str, s: &Summary) -> &mut Self {
        let ms = |us: u64| us as f64 / 1000.0;
        self.row(
            name,
            format_args!(
                "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3} ms  (mean {:.3}, n={})",
                ms(s.p50_us),
                ms(s.p90_us),
                ms(s.p99_us),
                ms(s.p999_us),
                ms(s.max_us),
                s.mean_us / 1000.0,
                s.count
            ),
        )
    }

    /// Server and load-generator CPU over the measured window.
    pub fn usage(&mut self, u: &Usage) -> &mut Self {
        match (u.server_cpu_s, u.server_system_s, u.server_cpu_percent) {
            (Some(s), Some(k), Some(p)) => self.row(
                "server CPU",
                format_args!(
                    "{s:.2} s, {k:.2} s of it in the kernel ({p:.0}% of a core) over {:.1} s",
                    u.seconds
                ),
            ),
            _ => self.row("server CPU", "not measured (pass --server-pid)"),
        };
        self.row(
            "load generator CPU",
            format_args!("{:.0}% of a core", u.loadgen_cpu_percent),
        )
    }

    /// The server's CPU-seconds per million `what` and the kernel's share,
    /// when measured.
    pub fn cpu_per_million(
        &mut self,
        what: &str,
        cpu_s: Option<f64>,
        kernel_s: Option<f64>,
    ) -> &mut Self {
        if let (Some(c), Some(k)) = (cpu_s, kernel_s) {
            self.row(
                &format!("server CPU per 1M {what}"),
                format_args!("{c:.2} s ({k:.2} s in the kernel)"),
            );
        }
        self
    }

    /// The server's CPU over the run (with what it came to per operation,
    /// `per`), or why it was not measured, and the load generator's.
    pub fn cpu(
        &mut self,
        server_s: Option<f64>,
        server_percent: Option<f64>,
        per: impl std::fmt::Display,
        loadgen_percent: f64,
    ) -> &mut Self {
        match (server_s, server_percent) {
            (Some(s), Some(p)) => self.row(
                "server CPU",
                format_args!("{s:.2} s ({p:.0}% of a core), {per}"),
            ),
            _ => self.row("server CPU", "not measured (pass --server-pid)"),
        };
        self.row(
            "load generator CPU",
            format_args!("{loadgen_percent:.0}% of a core"),
        )
    }

    pub fn errors(&mut self, e: &ErrorCounts) -> &mut Self {
        self.errors_named("errors", e)
    }

    /// Error counts under their own label.
    pub fn errors_named(&mut self, name: &str, e: &ErrorCounts) -> &mut Self {
        self.row(name, e.total);
        for (kind, k) in &e.by_kind {
            let _ = writeln!(self.out, "    {kind:<28} {}  e.g. {}", k.count, k.example);
        }
        self
    }

    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_counts_merge() {
        let mut a = ErrorCounts::default();
        a.add("reply 100".into(), || "internal".into());
        a.add("reply 100".into(), || unreachable!());
        let mut b = ErrorCounts::default();
        b.add("reply 100".into(), || "other".into());
        b.add("timeout".into(), || "slow".into());
        a.merge(b);
        assert_eq!(a.total, 4);
        assert_eq!(a.by_kind["reply 100"].count, 3);
        assert_eq!(a.by_kind["reply 100"].example, "internal");
        assert_eq!(a.by_kind["timeout"].count, 1);
    }
}
