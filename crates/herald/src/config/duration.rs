//! Durations as the configuration writes them: strings like `"25s"`,
//! `"500ms"` or `"720h"`. A bare number other than 0 is refused: older
//! Centrifugo files meant seconds by it, Go's parser nanoseconds, so any
//! reading of it would surprise someone.

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
                f.write_str("a duration such as \"25s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                if v == 0 {
                    return Ok(Dur::default());
                }
                Err(E::custom(format!(
                    "{v} has no unit: write a duration such as \"{v}s\" or \"{v}ms\""
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                match u64::try_from(v) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom("a duration cannot be negative")),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "{v} has no unit: write a duration such as \"{v}s\""
                )))
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
        let d: Dur = serde_json::from_str("0").unwrap();
        assert_eq!(d, Dur::default());
        let e = serde_json::from_str::<Dur>("25").unwrap_err().to_string();
        assert!(e.contains("\"25s\""), "{e}");
        assert!(serde_json::from_str::<Dur>("-1").is_err());
        assert!(serde_json::from_str::<Dur>("2.5").is_err());
        assert_eq!(serde_json::to_string(&Dur::secs(90)).unwrap(), "\"1m30s\"");
    }
}
