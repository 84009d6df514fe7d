//! gRPC proxies: calls of the `CentrifugoProxy` service over one HTTP/2
//! connection per proxy, made on first use and remade when lost.

use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::Channel;

use super::{Answer, Call, ProxyError, Request};
use crate::config::proxy::Proxy;

pub struct Caller {
    channel: Channel,
    /// `grpc.static_metadata`, checked once (the client's headers win).
    fixed: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
    /// The `grpc.credentials_key` entry, sent last: nothing overrides it.
    credentials: Option<(AsciiMetadataKey, AsciiMetadataValue)>,
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
        let entry = |key: &str, value: &str| {
            let k = AsciiMetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes())
                .map_err(|e| format!("metadata key {key}: {e}"))?;
            let v =
                AsciiMetadataValue::try_from(value).map_err(|e| format!("metadata {key}: {e}"))?;
            Ok::<_, String>((k, v))
        };
        let g = &config.grpc;
        let fixed = g
            .static_metadata
            .iter()
            .map(|(k, v)| entry(k, v))
            .collect::<Result<_, _>>()?;
        let credentials = if g.credentials_key.is_empty() {
            None
        } else {
            Some(entry(&g.credentials_key, &g.credentials_value)?)
        };
        Ok(Self {
            channel,
            fixed,
            credentials,
        })
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
        if let Some((k, v)) = &self.credentials {
            metadata.insert(k.clone(), v.clone());
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
