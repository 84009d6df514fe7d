//! gRPC proxies: calls of the `CentrifugoProxy` service over one HTTP/2
//! connection per proxy, made on first use and remade when lost.

use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::Channel;

use super::{Answer, Call, ProxyError, Request};
use crate::config::proxy::Proxy;

pub struct Caller {
    channel: Channel,
    /// `grpc.static_metadata` and the credentials entry, checked once.
    fixed: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
}

impl Caller {
    pub fn open(config: &Proxy) -> Result<Self, String> {
        let address = config
            .endpoint
            .strip_prefix("grpc://")
            .ok_or("a gRPC endpoint starts with grpc://")?;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect_lazy();
        let mut fixed = Vec::new();
        let g = &config.grpc;
        let mut entries: Vec<(&String, &String)> = g.static_metadata.iter().collect();
        if !g.credentials_key.is_empty() {
            entries.push((&g.credentials_key, &g.credentials_value));
        }
        for (key, value) in entries {
            let k = AsciiMetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes())
                .map_err(|e| format!("metadata key {key}: {e}"))?;
            let v = AsciiMetadataValue::try_from(value.as_str())
                .map_err(|e| format!("metadata {key}: {e}"))?;
            fixed.push((k, v));
        }
        Ok(Self { channel, fixed })
    }

    pub async fn call<Req: Request, Resp: Answer>(
        &self,
        config: &Proxy,
        call: Call,
        request: Req,
        headers: &[(String, String)],
    ) -> Result<Resp, ProxyError> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone())
            .max_decoding_message_size(config.max_response_size);
        grpc.ready()
            .await
            .map_err(|e| ProxyError::Unreachable(crate::report::Chain(&e).to_string()))?;
        let mut request = tonic::Request::new(request);
        let metadata = request.metadata_mut();
        for (key, value) in &self.fixed {
            metadata.insert(key.clone(), value.clone());
        }
        for (name, value) in headers {
            // A client's header that cannot be metadata is not passed on.
            if let (Ok(k), Ok(v)) = (
                AsciiMetadataKey::from_bytes(name.as_bytes()),
                AsciiMetadataValue::try_from(value.as_str()),
            ) {
                metadata.insert(k, v);
            }
        }
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        grpc.unary(request, PathAndQuery::from_static(call.grpc_path()), codec)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| match status.code() {
                tonic::Code::Unavailable => ProxyError::Unreachable(status.message().to_string()),
                code => ProxyError::Grpc(format!("{code:?}: {}", status.message())),
            })
    }
}
