//! The stamp every load-generator publication opens with, and how a
//! scanner finds it in a message without parsing the message.

/// The stamp the load generator puts at the start of every publication's
/// data: `{"p":<publisher>,"seq":<n>,"ts_us":<send time>,…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Which publisher task sent it; sequence numbers are per publisher.
    pub publisher: u32,
    pub seq: u64,
    /// Send time, microseconds since the Unix epoch (see
    /// `scenario::publisher::Clock`).
    pub ts_us: u64,
}

impl Stamp {
    /// The JSON members of the stamp, without braces, to open a payload.
    pub fn members(&self) -> String {
        format!(
            "\"p\":{},\"seq\":{},\"ts_us\":{}",
            self.publisher, self.seq, self.ts_us
        )
    }

    /// Finds a stamp in `text` (a whole protocol message): the first
    /// `{"p":` followed by the three members in order.
    pub fn find(text: &str) -> Option<Stamp> {
        Self::find_quoted(text, "\"")
    }

    /// [`Stamp::find`] in JSON text that is itself inside a JSON string
    /// (Pusher's `data`), its quotes written `\"`.
    pub fn find_escaped(text: &str) -> Option<Stamp> {
        Self::find_quoted(text, "\\\"")
    }

    fn find_quoted(text: &str, q: &str) -> Option<Stamp> {
        let open = format!("{{{q}p{q}:");
        let at = text.find(&open)?;
        let rest = &text[at + open.len()..];
        let (publisher, rest) = number(rest)?;
        let rest = rest.strip_prefix(&format!(",{q}seq{q}:"))?;
        let (seq, rest) = number(rest)?;
        let rest = rest.strip_prefix(&format!(",{q}ts_us{q}:"))?;
        let (ts_us, _) = number(rest)?;
        Some(Stamp {
            publisher: u32::try_from(publisher).ok()?,
            seq,
            ts_us,
        })
    }
}

/// A leading decimal number and what follows it.
pub(super) fn number(s: &str) -> Option<(u64, &str)> {
    let end = s.bytes().take_while(u8::is_ascii_digit).count();
    let n = s[..end].parse().ok()?;
    Some((n, &s[end..]))
}

#[cfg(test)]
mod tests {
    use super::fixture::{data, STAMP};
    use super::*;

    #[test]
    fn stamps_need_all_members_in_order() {
        assert_eq!(Stamp::find(&data()), Some(STAMP));
        assert_eq!(Stamp::find(r#"{"p":1,"ts_us":2,"seq":3}"#), None);
        assert_eq!(Stamp::find(r#"{"p":x}"#), None);
        assert_eq!(Stamp::find("{}"), None);
    }
}

/// A stamp and a payload opening with it, for the protocol's tests.
#[cfg(test)]
pub(crate) mod fixture {
    use super::Stamp;

    pub const STAMP: Stamp = Stamp {
        publisher: 2,
        seq: 17,
        ts_us: 123456,
    };

    pub fn data() -> String {
        format!("{{{},\"pad\":\"xx\"}}", STAMP.members())
    }
}
