//! The unidirectional gRPC transport (`uni_grpc`): Centrifugo's
//! `CentrifugoUniStream.Consume` on a port of its own. The call's request is
//! the connect request; the response stream carries a `connect` push, then
//! the connection's pushes (a ping is an empty push) until either side ends
//! it — the server with a last `disconnect` push. The session speaks
//! [`Encoding::UniProtobuf`]; each of its frames is turned into the push
//! the stream sends.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use herald_protocol::protobuf::pb;
use herald_protocol::Disconnect;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::stream::{pump, settle, Refusal, Sink};
use crate::config::TlsFiles;
use crate::frame::{Encoding, Frame};
use crate::metrics::Counters;
use crate::node::Node;
use crate::session::{self, Session};

/// The service generated from `proto/unistream.proto`.
pub mod proto {
    tonic::include_proto!("centrifugal.centrifugo.unistream");
}

use proto::centrifugo_uni_stream_server::{CentrifugoUniStream, CentrifugoUniStreamServer};

/// Pushes waiting for the gRPC stream; the session's queue holds the rest.
const PUSHES: usize = 16;

/// Serves the transport on `listener` (over TLS with `tls`) until `stop`.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    tls: Option<TlsFiles>,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let max = crate::api::grpc::max_message(node.config.uni_grpc.max_receive_message_size);
    let service = CentrifugoUniStreamServer::new(Service { node })
        .max_decoding_message_size(max)
        .max_encoding_message_size(usize::MAX);
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    crate::api::grpc::builder(tls)?
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
}

struct Service {
    node: Arc<Node>,
}

type Pushes = Pin<Box<dyn Stream<Item = Result<pb::Push, Status>> + Send>>;

#[tonic::async_trait]
impl CentrifugoUniStream for Service {
    type ConsumeStream = Pushes;

    async fn consume(&self, call: Request<pb::ConnectRequest>) -> Result<Response<Pushes>, Status> {
        let node = self.node.clone();
        admit(&node, call.remote_addr())?;
        let headers = call.metadata().clone().into_headers();
        let command = pb::Command {
            id: 1,
            connect: Some(call.into_inner()),
            ..Default::default()
        };
        let request = command.encode_length_delimited_to_vec();
        Counters::incr(&node.counters.connections_accepted);
        Counters::incr(&node.counters.messages_in);
        Counters::add(&node.counters.bytes_in, request.len() as u64);
        let peer = session::Peer::new(&node, "uni_grpc", &headers);
        let mut session = Session::new(node.clone(), Encoding::UniProtobuf, peer);
        let connected = Box::pin(session.handle_frame(&request)).await;
        let (tx, rx) = mpsc::channel::<Result<pb::Push, Status>>(PUSHES);
        match settle(session, connected).await {
            Ok(session) => {
                node.tracker().clone().spawn(pump(node, session, tx, Grpc));
            }
            // Refused (a bad token, say): the stream's only push says why.
            Err(Refusal { ended, .. }) => {
                let d = ended.unwrap_or_else(Disconnect::bad_request);
                let _ = tx.try_send(Ok(disconnect(d)));
            }
        }
        let mut rx = rx;
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The node's and the address's connection rates, and shutdown, as every
/// transport asks.
fn admit(node: &Node, peer: Option<SocketAddr>) -> Result<(), Status> {
    let limits = &node.connect_limits;
    let per_ip = peer.is_none_or(|p| limits.per_ip.allow(p.ip()));
    if !limits.node.allow() || !per_ip {
        Counters::incr(&node.counters.connections_refused_by_rate);
        return Err(Status::resource_exhausted("too many new connections"));
    }
    if node.shutdown().is_cancelled() {
        return Err(Status::unavailable("shutting down"));
    }
    Ok(())
}

/// The gRPC stream's sink: each frame (a length-prefixed reply) as the push
/// it carries — the connect reply as a `connect` push, a ping as an empty
/// one.
struct Grpc;

impl Sink for Grpc {
    type Item = Result<pb::Push, Status>;

    fn item(&self, frame: &Frame) -> Option<Self::Item> {
        let mut bytes = frame.as_bytes();
        let reply = pb::Reply::decode_length_delimited(&mut bytes).ok()?;
        if let Some(push) = reply.push {
            return Some(Ok(push));
        }
        let push = match reply.connect {
            Some(r) => pb::Push {
                connect: Some(connect(r)),
                ..Default::default()
            },
            None => pb::Push::default(),
        };
        Some(Ok(push))
    }

    fn last(&self, d: Disconnect) -> Option<Self::Item> {
        Some(Ok(disconnect(d)))
    }
}

fn disconnect(d: Disconnect) -> pb::Push {
    pb::Push {
        disconnect: Some(pb::Disconnect {
            code: d.code.into(),
            reconnect: d.reconnect(),
            reason: d.reason,
        }),
        ..Default::default()
    }
}

/// The connect reply's result as a `connect` push.
fn connect(r: pb::ConnectResult) -> pb::Connect {
    pb::Connect {
        client: r.client,
        version: r.version,
        data: r.data,
        subs: r
            .subs
            .into_iter()
            .filter_map(|e| Some((e.key, e.value?)))
            .collect(),
        expires: r.expires,
        ttl: r.ttl,
        ping: r.ping,
        pong: r.pong,
        session: r.session,
        node: r.node,
        time: r.time,
    }
}
