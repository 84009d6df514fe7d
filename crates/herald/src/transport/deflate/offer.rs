//! Negotiating permessage-deflate (RFC 7692 §5, §7.1): the client lists
//! offers in `Sec-WebSocket-Extensions`, the server takes the first one it
//! can honour and answers with the parameters it will keep.

/// What the handshake agreed. Both directions always without context
/// takeover (the server says so in its answer, which binds the client too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The LZ77 window the server compresses with: 15 unless the client
    /// asked for less with `server_max_window_bits`.
    pub server_window_bits: u8,
    /// The client named `server_max_window_bits`, so the answer must too.
    echo_server_window: bool,
}

impl Default for Agreed {
    /// A full window, as a client compresses when the server's answer
    /// does not limit it.
    fn default() -> Self {
        Self {
            server_window_bits: 15,
            echo_server_window: false,
        }
    }
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` value of the answer.
    pub fn answer(&self) -> String {
        let mut answer = String::from(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        );
        if self.echo_server_window {
            answer.push_str("; server_max_window_bits=");
            answer.push_str(&self.server_window_bits.to_string());
        }
        answer
    }
}

/// The first permessage-deflate offer among `Sec-WebSocket-Extensions`
/// values that this server can take; `None` when there is none (the
/// connection then goes uncompressed).
pub fn agree<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Agreed> {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .find_map(offer)
}

/// One offer, `permessage-deflate; param[=value]; …`, if it is ours and we
/// can honour it. Unknown or repeated parameters, or values out of range,
/// decline the offer (RFC 7692 §5.1) rather than fail the handshake.
fn offer(text: &str) -> Option<Agreed> {
    let mut parts = text.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut agreed = Agreed::default();
    for part in parts {
        let (name, value) = match part.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (part, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(v)) => {
                let bits = window_bits(v)?;
                // zlib cannot write raw DEFLATE with a 256-byte window.
                if bits < 9 {
                    return None;
                }
                agreed.server_window_bits = bits;
                agreed.echo_server_window = true;
            }
            // Any window the client keeps is one a full window reads.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(v)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    Some(agreed)
}

/// A parameter value, which may be a quoted string (RFC 7692 §5.1 allows
/// either form); `None` when a quote is not closed.
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(value),
    }
}

/// A window size in bits: 8 to 15, written without leading zeros.
fn window_bits(v: &str) -> Option<u8> {
    if v.starts_with('0') || v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|bits| (8..=15).contains(bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed(values: &[&str]) -> Option<String> {
        agree(values.iter().copied()).map(|a| a.answer())
    }

    const PLAIN: &str =
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    #[test]
    fn what_browsers_and_node_offer_is_taken() {
        assert_eq!(
            agreed(&["permessage-deflate; client_max_window_bits"]).as_deref(),
            Some(PLAIN)
        );
        assert_eq!(agreed(&["permessage-deflate"]).as_deref(), Some(PLAIN));
        assert_eq!(
            agreed(&["Permessage-Deflate; Client_No_Context_Takeover; client_max_window_bits=10"])
                .as_deref(),
            Some(PLAIN)
        );
    }

    #[test]
    fn a_smaller_server_window_is_kept_and_named() {
        let a = agree(["permessage-deflate; server_max_window_bits=10"]).unwrap();
        assert_eq!(a.server_window_bits, 10);
        assert_eq!(a.answer(), format!("{PLAIN}; server_max_window_bits=10"));
        let quoted = agree(["permessage-deflate; server_max_window_bits=\"12\""]).unwrap();
        assert_eq!(quoted.server_window_bits, 12);
    }

    #[test]
    fn offers_we_cannot_honour_are_declined_and_the_next_one_taken() {
        for bad in [
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=\"12",
            "permessage-deflate; client_max_window_bits=99999999999999999999",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(agreed(&[bad]), None, "{bad}");
        }
        assert_eq!(
            agreed(&["permessage-deflate; server_max_window_bits=7, permessage-deflate",])
                .as_deref(),
            Some(PLAIN)
        );
        assert_eq!(
            agreed(&["foo", "permessage-deflate; client_max_window_bits"]).as_deref(),
            Some(PLAIN)
        );
    }
}
