//! How herald-bench sorts what a Pusher server sends.

use super::{Kind, Stamp, PENDING};

/// A Pusher message sorted: the server's acknowledgements answer what the
/// client waits for, its pings want a pong, and an application event may
/// carry a stamp inside its string `data`.
pub(super) fn classify(msg: &str) -> Kind {
    let Some(rest) = msg.strip_prefix("{\"event\":\"") else {
        return Kind::Other;
    };
    if rest.starts_with("pusher:connection_established\"")
        || rest.starts_with("pusher_internal:subscription_succeeded\"")
    {
        return Kind::Reply(PENDING);
    }
    if rest.starts_with("pusher:ping\"") {
        return Kind::Ping;
    }
    if rest.starts_with("pusher") {
        return Kind::Other;
    }
    match Stamp::find_escaped(rest) {
        Some(s) => Kind::Stamped(s),
        None => Kind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Ask, Protocol};
    use super::*;
    use tokio_tungstenite::tungstenite::Message;

    #[test]
    fn pusher_messages() {
        let p = Protocol::Pusher;
        assert!(
            p.connect(1, "").is_none(),
            "the server opens a Pusher socket"
        );
        assert_eq!(
            text(p.subscribe(2, "news")),
            r#"{"event":"pusher:subscribe","data":{"channel":"news"}}"#
        );
        assert_eq!(
            text(p.ask(3, "news", Ask::Unsubscribe).unwrap()),
            r#"{"event":"pusher:unsubscribe","data":{"channel":"news"}}"#
        );
        assert!(p.ask(4, "news", Ask::Presence).is_none());
        assert_eq!(
            p.classify(r#"{"event":"pusher:connection_established","data":"{}"}"#),
            Kind::Reply(PENDING)
        );
        assert_eq!(
            p.classify(
                r#"{"event":"pusher_internal:subscription_succeeded","channel":"news","data":"{}"}"#
            ),
            Kind::Reply(PENDING)
        );
        assert_eq!(
            p.classify(r#"{"event":"pusher:ping","data":"{}"}"#),
            Kind::Ping
        );
        let stamped = r#"{"event":"bench","channel":"news","data":"{\"p\":1,\"seq\":2,\"ts_us\":3,\"pad\":\"x\"}"}"#;
        assert_eq!(
            p.classify(stamped),
            Kind::Stamped(Stamp {
                publisher: 1,
                seq: 2,
                ts_us: 3
            })
        );
        assert_eq!(
            p.classify(r#"{"event":"pusher:error","data":"{}"}"#),
            Kind::Other
        );
    }

    fn text(m: Message) -> String {
        m.into_text().unwrap().to_string()
    }
}
