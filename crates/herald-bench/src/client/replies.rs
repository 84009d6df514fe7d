//! What the client reads from the server in full (replies and pushes
//! without a stamp), in either JSON protocol or from Protobuf.

use serde::Deserialize;

/// A reply, either protocol: v2 puts results under the method's name, v1
/// under `result`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Reply {
    pub error: Option<ErrorBody>,
    pub connect: Option<ConnectBody>,
    pub result: Option<ConnectBody>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ErrorBody {
    pub code: u32,
    pub message: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ConnectBody {
    pub client: String,
    pub pong: bool,
    /// Where emulation requests find the connection (emulated transports).
    pub session: String,
    pub node: String,
}

/// A push without a stamp: v2 `{"push":{…}}`, v1 `{"result":{…}}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct PushEnvelope {
    pub push: Option<PushBody>,
    pub result: Option<PushBody>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct PushBody {
    #[serde(rename = "pub")]
    pub publication: Option<serde::de::IgnoredAny>,
    /// v1: the publication is `data` of a push without `type`.
    pub data: Option<serde::de::IgnoredAny>,
    #[serde(rename = "type")]
    pub kind: u32,
    pub disconnect: Option<DisconnectBody>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct DisconnectBody {
    pub code: u16,
    pub reason: String,
}

impl From<herald_protocol::protobuf::pb::Reply> for Reply {
    fn from(r: herald_protocol::protobuf::pb::Reply) -> Self {
        Self {
            error: r.error.map(|e| ErrorBody {
                code: e.code,
                message: e.message,
            }),
            connect: r.connect.map(|c| ConnectBody {
                client: c.client,
                pong: c.pong,
                session: c.session,
                node: c.node,
            }),
            result: None,
        }
    }
}
