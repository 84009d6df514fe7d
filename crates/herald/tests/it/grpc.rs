//! The gRPC server API through a client generated from Herald's own proto
//! (the same names and field numbers as Centrifugo's): every method, the
//! key, the error modes and the message size limit.

use std::time::Duration;

use herald::api::grpc::proto;
use herald::api::grpc::proto::centrifugo_api_client::CentrifugoApiClient;
use serde_json::{json, Value};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};

use herald_testkit::*;

const GRPC_KEY: &str = "grpc-test-key";

async fn start(patch: Value) -> (TestServer, CentrifugoApiClient<Channel>) {
    let mut cfg = json!({"grpc_api": {"enabled": true, "port": 0, "key": GRPC_KEY}});
    merge(&mut cfg, patch);
    let s = TestServer::start(cfg).await;
    let addr = s.grpc.expect("the gRPC API is enabled");
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("gRPC connects");
    (s, CentrifugoApiClient::new(channel))
}

/// A call with the API key (and more metadata when given).
fn call<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let key: MetadataValue<_> = format!("apikey {GRPC_KEY}").parse().unwrap();
    request.metadata_mut().insert("authorization", key);
    request
}

fn json(v: Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

/// The next publication pushed to `ws`, skipping join and leave pushes.
async fn next_pub(ws: &mut Ws) -> Value {
    loop {
        let push = ws.push().await;
        if push.get("pub").is_some() {
            return push;
        }
    }
}

fn parsed(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[tokio::test]
async fn every_method_through_a_generated_client() {
    let (s, mut api) = start(json!({})).await;
    let mut ws = s.client("u").await;
    ws.cmd(json!({"subscribe": {"channel": "roomh:g"}})).await;

    // Publish and broadcast, with tags, into a channel with history.
    let r = api
        .publish(call(proto::PublishRequest {
            channel: "roomh:g".into(),
            data: json(json!({"n": 1})),
            tags: [("k".to_string(), "v".to_string())].into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(r.error.is_none(), "{r:?}");
    let published = r.result.unwrap();
    assert_eq!(published.offset, 1);
    let push = next_pub(&mut ws).await;
    assert_eq!(
        (
            push["pub"]["data"].clone(),
            push["pub"]["tags"]["k"].clone()
        ),
        (json!({"n": 1}), json!("v"))
    );
    let r = api
        .broadcast(call(proto::BroadcastRequest {
            channels: vec!["roomh:g".into(), "nope:x".into()],
            data: json(json!({"n": 2})),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let responses = r.result.unwrap().responses;
    assert_eq!(responses[0].result.as_ref().unwrap().offset, 2);
    assert_eq!(responses[1].error.as_ref().unwrap().code, 102);
    assert_eq!(next_pub(&mut ws).await["pub"]["data"]["n"], 2);

    // History, presence and presence stats.
    let h = api
        .history(call(proto::HistoryRequest {
            channel: "roomh:g".into(),
            limit: -1,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(h.publications.len(), 2);
    assert_eq!(parsed(&h.publications[1].data), json!({"n": 2}));
    assert_eq!((h.offset, h.epoch.is_empty()), (2, false));
    let p = api
        .presence(call(proto::PresenceRequest {
            channel: "roomh:g".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(
        p.presence
            .values()
            .map(|c| c.user.as_str())
            .collect::<Vec<_>>(),
        ["u"]
    );
    let st = api
        .presence_stats(call(proto::PresenceStatsRequest {
            channel: "roomh:g".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!((st.num_clients, st.num_users), (1, 1));

    // Channels and info.
    let c = api
        .channels(call(proto::ChannelsRequest {
            pattern: "roomh:*".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(c.channels["roomh:g"].num_clients, 1);
    let i = api
        .info(call(proto::InfoRequest {}))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!((i.nodes.len(), i.nodes[0].num_clients), (1, 1));

    // Server-side subscribe with data, then unsubscribe.
    let r = api
        .subscribe(call(proto::SubscribeRequest {
            user: "u".into(),
            channel: "news".into(),
            data: json(json!({"welcome": true})),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(r.error.is_none() && r.result.is_some(), "{r:?}");
    let push = ws.push().await;
    assert_eq!(
        (push["channel"].clone(), push["subscribe"]["data"].clone()),
        (json!("news"), json!({"welcome": true}))
    );
    api.unsubscribe(call(proto::UnsubscribeRequest {
        user: "u".into(),
        channel: "news".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let push = ws.push().await;
    assert!(push["unsubscribe"].is_object(), "{push}");

    // History removal keeps the position.
    api.history_remove(call(proto::HistoryRemoveRequest {
        channel: "roomh:g".into(),
    }))
    .await
    .unwrap();
    let h = api
        .history(call(proto::HistoryRequest {
            channel: "roomh:g".into(),
            limit: -1,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!((h.publications.len(), h.offset), (0, 2));

    // A batch: replies in order, each in the field of its kind.
    let b = api
        .batch(call(proto::BatchRequest {
            commands: vec![
                proto::Command {
                    publish: Some(proto::PublishRequest {
                        channel: "roomh:g".into(),
                        data: json(json!({"n": 3})),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                proto::Command {
                    info: Some(proto::InfoRequest {}),
                    ..Default::default()
                },
                proto::Command::default(),
            ],
            parallel: true,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.replies.len(), 3);
    assert_eq!(b.replies[0].publish.as_ref().unwrap().offset, 3);
    assert!(b.replies[1].info.is_some());
    assert_eq!(b.replies[2].error.as_ref().unwrap().code, 107);
    assert_eq!(next_pub(&mut ws).await["pub"]["data"]["n"], 3);

    // Refresh, then disconnect.
    api.refresh(call(proto::RefreshRequest {
        user: "u".into(),
        expire_at: now() + 600,
        ..Default::default()
    }))
    .await
    .unwrap();
    assert!(ws.push().await["refresh"]["ttl"].as_u64().unwrap() > 590);
    api.disconnect(call(proto::DisconnectRequest {
        user: "u".into(),
        disconnect: Some(proto::Disconnect {
            code: 4001,
            reason: "bye".into(),
        }),
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_eq!(ws.closed().await, (4001, "bye".into()));

    // Blocking and revocation, alone and in a batch.
    let mut blocked = s.client("blocked").await;
    let r = api
        .block_user(call(proto::BlockUserRequest {
            user: "blocked".into(),
            expire_at: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(r.error.is_none() && r.result.is_some(), "{r:?}");
    assert_eq!(blocked.closed().await.0, 3503);
    let b = api
        .batch(call(proto::BatchRequest {
            commands: vec![
                proto::Command {
                    unblock_user: Some(proto::UnblockUserRequest {
                        user: "blocked".into(),
                    }),
                    ..Default::default()
                },
                proto::Command {
                    revoke_token: Some(proto::RevokeTokenRequest {
                        uid: "t".into(),
                        expire_at: now() + 60,
                    }),
                    ..Default::default()
                },
                proto::Command {
                    invalidate_user_tokens: Some(proto::InvalidateUserTokensRequest {
                        user: String::new(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ],
            parallel: false,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(b.replies[0].unblock_user.is_some(), "{b:?}");
    assert!(b.replies[1].revoke_token.is_some(), "{b:?}");
    assert_eq!(b.replies[2].error.as_ref().unwrap().code, 107, "{b:?}");
    s.client("blocked").await;
    s.stop().await;
}

#[tokio::test]
async fn a_wrong_or_missing_key_is_unauthenticated() {
    let (s, mut api) = start(json!({})).await;
    let publish = || proto::PublishRequest {
        channel: "news".into(),
        data: json(json!(1)),
        ..Default::default()
    };
    let e = api.publish(Request::new(publish())).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut wrong = Request::new(publish());
    wrong
        .metadata_mut()
        .insert("authorization", "apikey not-the-key".parse().unwrap());
    assert_eq!(
        api.publish(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert!(api.publish(call(publish())).await.is_ok());
    s.stop().await;
}

#[tokio::test]
async fn errors_in_the_reply_or_as_statuses() {
    let (s, mut api) = start(json!({})).await;
    let unknown = || proto::PublishRequest {
        channel: "nope:x".into(),
        data: json(json!(1)),
        ..Default::default()
    };
    let r = api.publish(call(unknown())).await.unwrap().into_inner();
    assert_eq!(r.error.unwrap().code, 102);
    let mut transport = call(unknown());
    transport
        .metadata_mut()
        .insert("x-centrifugo-error-mode", "transport".parse().unwrap());
    let e = api.publish(transport).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // Data that is not JSON is a bad request.
    let r = api
        .publish(call(proto::PublishRequest {
            channel: "news".into(),
            data: b"not json".to_vec(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.error.unwrap().code, 107);
    s.stop().await;

    let (s, mut api) = start(json!({"grpc_api": {"error_mode": "transport"}})).await;
    let e = api.publish(call(unknown())).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    s.stop().await;
}

#[tokio::test]
async fn a_message_over_the_limit_is_refused() {
    const LIMIT: usize = 64 * 1024;
    let (s, mut api) = start(json!({"grpc_api": {"max_receive_message_size": LIMIT}})).await;
    let sized = |len: usize| proto::PublishRequest {
        channel: "news".into(),
        data: json(json!("x".repeat(len))),
        ..Default::default()
    };
    assert!(api.publish(call(sized(LIMIT / 2))).await.is_ok());
    let e = api.publish(call(sized(LIMIT))).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    s.stop().await;
}

/// With `grpc_api.reflection`, tools can list the service and its methods.
#[tokio::test]
async fn reflection_lists_the_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let (s, _) = start(json!({"grpc_api": {"reflection": true}})).await;
    let channel = Channel::from_shared(format!("http://{}", s.grpc.unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures_util::stream::iter([ask]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().expect("an answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names
            .iter()
            .any(|n| n == "centrifugal.centrifugo.api.CentrifugoApi"),
        "{names:?}"
    );
    s.stop().await;
}

/// `grpc_api.tls`: the API over TLS with a certificate made here; a client
/// that trusts it calls, a plaintext one cannot; a missing key file stops
/// the start with an error naming the key.
#[tokio::test]
async fn the_grpc_api_over_tls() {
    use tonic::transport::{Certificate, ClientTlsConfig};

    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let mut cfg = json!({"grpc_api": {"enabled": true, "port": 0, "key": GRPC_KEY,
        "tls": {"enabled": true, "cert_pem": cert, "key_pem": key}}});
    let s = TestServer::start(cfg.clone()).await;
    let addr = s.grpc.unwrap();

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(made.cert.pem()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS connects");
    let mut api = CentrifugoApiClient::new(channel);
    let r = api
        .publish(call(proto::PublishRequest {
            channel: "news".into(),
            data: json(json!({"over": "tls"})),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(r.error.is_none(), "{r:?}");

    // Plaintext gets nowhere.
    let plain = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        let mut api = CentrifugoApiClient::new(plain);
        let e = api.info(call(proto::InfoRequest {})).await.unwrap_err();
        assert_ne!(e.code(), Code::Ok);
    }
    s.stop().await;

    // A key that cannot be read is a configuration error naming it.
    cfg["grpc_api"]["tls"]["key_pem"] = json!(dir.path().join("missing.pem"));
    let file = dir.path().join("config.json");
    std::fs::write(&file, cfg.to_string()).unwrap();
    let loaded = herald::config::load(
        Some(&file),
        &Default::default(),
        &herald::config::Overrides::default(),
    );
    let Err(err) = loaded else {
        panic!("a missing key file was accepted");
    };
    let err = err.to_string();
    assert!(err.contains("grpc_api.tls.key_pem"), "{err}");
}
