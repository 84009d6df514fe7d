//! Durations as the configuration writes them: strings like `"25s"`,
//! `"500ms"` or `"720h"`; a bare number is taken as nanoseconds, as in
//! Centrifugo's files.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Parses `"25s"`, `"1m30s"`, `"500ms"`; `"0"` and `""` are zero.
pub fn parse(s: &str) -> Result<Dur, String> {
    let s = s.trim();
    if s.is_empty() || s == "0" {
        return Ok(Dur::default());
    }
    humantime::parse_duration(s).map(Dur).map_err(|e| {
        format!("invalid duration {s:?} ({e}); use forms like \"25s\", \"500ms\", \"1h\"")
    })
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(
            &humantime::format_duration(self.0)
                .to_string()
                .replace(' ', ""),
        )
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"25s\" or a number of nanoseconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Ok(Dur(Duration::from_nanos(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v)
                    .map(|n| Dur(Duration::from_nanos(n)))
                    .map_err(|_| E::custom("negative duration"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!(parse("25s").unwrap(), Dur::secs(25));
        assert_eq!(parse("500ms").unwrap(), Dur::millis(500));
        assert_eq!(parse("1m30s").unwrap(), Dur::secs(90));
        assert_eq!(parse("").unwrap(), Dur::default());
        assert!(parse("soon").is_err());
        let d: Dur = serde_json::from_str("1000000000").unwrap();
        assert_eq!(d, Dur::secs(1));
        assert_eq!(serde_json::to_string(&Dur::secs(90)).unwrap(), "\"1m30s\"");
    }
}
