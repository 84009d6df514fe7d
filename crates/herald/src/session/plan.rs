//! How one subscription behaves ([`Plan`]): decided from the namespace's
//! options, a token's overrides and what the client asked, for client and
//! server-side subscriptions alike.

use herald_protocol::command::SubscribeRequest;

use super::SubState;
use crate::auth::Overrides;
use crate::config::{ChannelOptions, FOSSIL};

/// How one subscription behaves: the namespace's options, changed by a
/// token's overrides and, for a client's own subscribe, by what it asked.
pub(super) struct Plan {
    pub presence: bool,
    pub join_leave: bool,
    /// Join/leave events are pushed to this client.
    pub push_join_leave: bool,
    pub recoverable: bool,
    pub positioned: bool,
}

impl Plan {
    /// `asked` is the client's subscribe request; `None` for a subscription
    /// the server makes, which only the namespace's `force_*` options (and
    /// the token's overrides) position.
    pub(super) fn new(
        options: &ChannelOptions,
        has_stream: bool,
        overrides: &Overrides,
        asked: Option<&SubscribeRequest>,
    ) -> Self {
        let o = overrides;
        let join_leave = o.join_leave.unwrap_or(options.join_leave);
        let force_push = o
            .force_push_join_leave
            .unwrap_or(options.force_push_join_leave);
        let force_recovery = o.force_recovery.unwrap_or(options.force_recovery);
        let force_positioning = o.force_positioning.unwrap_or(options.force_positioning);
        let (ask_recovery, ask_positioning, ask_join_leave) =
            asked.map_or((false, false, false), |r| {
                (
                    options.allow_recovery && r.recoverable,
                    options.allow_positioning && r.positioned,
                    r.join_leave,
                )
            });
        let recoverable = has_stream && (force_recovery || ask_recovery);
        Self {
            presence: o.presence.unwrap_or(options.presence),
            join_leave,
            push_join_leave: join_leave && (force_push || ask_join_leave),
            recoverable,
            positioned: recoverable || (has_stream && (force_positioning || ask_positioning)),
        }
    }

    /// Whether publications come as deltas, for a client that asked for
    /// `asked` (empty: none): Fossil where the namespace allows it and the
    /// subscription is positioned (a delta needs a place in the stream to
    /// be against). `Err` for a delta type that does not exist.
    pub(super) fn delta(&self, asked: &str, options: &ChannelOptions) -> Result<bool, ()> {
        match asked {
            "" => Ok(false),
            FOSSIL => {
                Ok(self.positioned && options.allowed_delta_types.iter().any(|t| t == FOSSIL))
            }
            _ => Err(()),
        }
    }

    /// Records presence and join/leave on the subscription's state.
    pub(super) fn apply(&self, state: &mut SubState) {
        state.presence = self.presence;
        state.join_leave = self.join_leave;
    }
}
