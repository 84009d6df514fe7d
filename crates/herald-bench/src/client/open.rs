//! Opening a client's WebSocket: TCP from a chosen source address, the
//! handshake with the protocol's subprotocol and, when asked,
//! permessage-deflate.

use std::net::{IpAddr, SocketAddr};

use herald::transport::deflate::{self, Wire};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{ClientError, Socket, READ_BUFFER};
use crate::target::Target;

/// Opens the WebSocket (from `source` when given).
pub(super) async fn open_websocket(
    target: &Target,
    source: Option<IpAddr>,
) -> Result<Socket, ClientError> {
    let tcp = dial(target.addr, source)
        .await
        .map_err(|e| ClientError::Open(e.to_string()))?;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0);
    let mut request = target
        .ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::Open(e.to_string()))?;
    if let Some(sub) = target.protocol.subprotocol() {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static(sub),
        );
    }
    if target.compression {
        request.headers_mut().insert(
            "Sec-WebSocket-Extensions",
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static(
                "permessage-deflate; client_max_window_bits",
            ),
        );
    }
    let wire = if target.compression {
        Wire::client(tcp, deflate::Settings::client())
    } else {
        Wire::plain(tcp)
    };
    let (socket, _) = tokio_tungstenite::client_async_with_config(request, wire, Some(config))
        .await
        .map_err(|e| ClientError::Open(e.to_string()))?;
    if target.compression && !socket.get_ref().is_compressed() {
        return Err(ClientError::Open(
            "the server did not agree to permessage-deflate (websocket.compression)".into(),
        ));
    }
    Ok(socket)
}

/// Opens a TCP connection to `addr`, bound to `source` when given.
async fn dial(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
