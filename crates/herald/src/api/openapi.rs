//! The HTTP server API described as OpenAPI 3, from the same request and
//! result types the methods use ([`super::types`]), served with Swagger UI
//! (its assets are built into the binary) when `swagger.enabled`.

use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, ObjectBuilder, OneOfBuilder, OpenApi, PathsBuilder, Ref, RefOr, Schema,
};
use utoipa::OpenApi as _;

use super::types::*;

/// Every method: its name, request and result schemas, and what it does.
const METHODS: &[(&str, &str, &str, &str)] = &[
    ("publish", "PublishRequest", "PublishResult", "Publish into a channel."),
    ("broadcast", "PublishRequest", "BroadcastResult", "Publish the same data into several channels (`channels`)."),
    ("subscribe", "SubscribeRequest", "Empty", "Subscribe a user's (or one client's, or one session's) connections to a channel, on every node."),
    ("unsubscribe", "UnsubscribeRequest", "Empty", "Unsubscribe connections from a channel."),
    ("disconnect", "DisconnectRequest", "Empty", "Disconnect connections, with a code and reason."),
    ("refresh", "RefreshRequest", "Empty", "Move connections' expiry, replace their info, or expire them."),
    ("presence", "ChannelRequest", "PresenceResult", "Who is in a channel."),
    ("presence_stats", "ChannelRequest", "PresenceStatsResult", "How many clients and users are in a channel."),
    ("history", "HistoryRequest", "HistoryResult", "Read a channel's stream."),
    ("history_remove", "ChannelRequest", "Empty", "Remove a channel's publications, keeping its position."),
    ("channels", "ChannelsRequest", "ChannelsResult", "Channels with subscribers anywhere in the cluster, and how many, optionally matching a pattern."),
    ("info", "InfoRequest", "InfoResult", "The nodes of the cluster."),
    ("block_user", "BlockUserRequest", "Empty", "Block a user: its connections close and new ones are refused until unblocked or `expire_at`."),
    ("unblock_user", "UnblockUserRequest", "Empty", "Lift a user's block."),
    ("revoke_token", "RevokeTokenRequest", "Empty", "Revoke tokens by id (`jti`): their connections close, their subscriptions end."),
    ("invalidate_user_tokens", "InvalidateUserTokensRequest", "Empty", "Revoke a user's connection tokens (or one channel's subscription tokens) issued before a time."),
    ("webhook_dead_letters", "WebhookDeadLettersRequest", "WebhookDeadLettersResult", "Herald: events a webhook gave up on after its last attempt, oldest first (108 without webhooks)."),
    ("webhook_redrive", "WebhookRedriveRequest", "WebhookRedriveResult", "Herald: send dead letters again (by id, or all of a webhook), their attempts reset."),
    ("batch", "BatchRequest", "BatchResult", "Several methods in one request, in order or at once (`parallel`)."),
];

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Herald server API",
        description = "Centrifugo's server HTTP API: `POST <http_api.handler_prefix>/<method>` with a JSON body. Replies are `{\"result\": …}` or `{\"error\": {\"code\", \"message\"}}` (HTTP 200), or, in the transport error mode, an HTTP status with `{\"code\", \"message\"}`."
    ),
    components(schemas(
        PublishRequest,
        BlockUserRequest,
        UnblockUserRequest,
        RevokeTokenRequest,
        InvalidateUserTokensRequest,
        WebhookDeadLettersRequest,
        WebhookRedriveRequest,
        DeadLetterDoc,
        WebhookDeadLettersResult,
        WebhookRedriveResult,
        SubscribeRequest,
        UnsubscribeRequest,
        DisconnectRequest,
        DisconnectCode,
        RefreshRequest,
        ChannelRequest,
        HistoryRequest,
        ChannelsRequest,
        InfoRequest,
        BatchRequest,
        Position,
        BoolValue,
        SubscribeOptionOverride,
        PublishResult,
        BroadcastResult,
        PublishReply,
        ErrorDoc,
        ClientInfoDoc,
        PublicationDoc,
        PresenceResult,
        PresenceStatsResult,
        HistoryResult,
        ChannelInfo,
        ChannelsResult,
        InfoResult,
        NodeDoc,
        BatchResult,
        Empty
    ))
)]
struct Components;

fn schema(name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(name))
}

/// The document, with the methods under `prefix` (`http_api.handler_prefix`).
pub fn document(prefix: &str) -> OpenApi {
    let mut doc = Components::openapi();
    let prefix = prefix.trim_end_matches('/');
    let mut paths = PathsBuilder::new();
    for (method, request, result, summary) in METHODS {
        // A batch answers with its replies themselves; the others wrap the
        // result, or give an error.
        let reply: RefOr<Schema> = if *method == "batch" {
            schema(result)
        } else {
            let ok = ObjectBuilder::new()
                .property("result", schema(result))
                .required("result");
            let failed = ObjectBuilder::new()
                .property("error", schema("Error"))
                .required("error");
            OneOfBuilder::new().item(ok).item(failed).into()
        };
        let operation = OperationBuilder::new()
            .operation_id(Some(*method))
            .summary(Some(*summary))
            .request_body(Some(
                RequestBodyBuilder::new()
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(schema(request))).build(),
                    )
                    .required(Some(utoipa::openapi::Required::True))
                    .build(),
            ))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("The method's reply")
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(reply)).build(),
                    ),
            )
            .response(
                "400",
                ResponseBuilder::new()
                    .description("A malformed request (the field at fault named)"),
            )
            .response(
                "401",
                ResponseBuilder::new().description("No valid API key"),
            )
            .response(
                "413",
                ResponseBuilder::new().description("A body over http_api.max_request_body_size"),
            )
            .security(SecurityRequirement::new("apikey", Vec::<String>::new()))
            .build();
        paths = paths.path(
            format!("{prefix}/{method}"),
            PathItem::new(HttpMethod::Post, operation),
        );
    }
    doc.paths = paths.build();
    if let Some(components) = doc.components.as_mut() {
        components.add_security_scheme(
            "apikey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "http_api.key (or `Authorization: apikey <key>`)",
            ))),
        );
    }
    doc
}
