//! Subscriptions the server makes: from the connection token's `subs` or
//! `channels` claim at connect, and through the server API's `subscribe`.
//! They follow the namespace's `force_recovery` and `force_positioning` (and
//! a token's overrides): a positioned one is entered before the connect
//! reply with its publications held back, the reply carries its stream
//! position, and a reconnect whose connect command names it in `subs`
//! recovers exactly what was missed. A client cannot resubscribe to a
//! server-side subscription, so when its state becomes insufficient the
//! connection is closed with 3010 and the SDK reconnects with recovery.

use std::collections::HashMap;

use herald_protocol::command::SubscribeRequest;
use herald_protocol::reply::{Push, SubscribeResult};
use herald_protocol::ProtocolError;

use super::plan::Plan;
use super::{Session, SubState};
use crate::auth::SubOptions;
use crate::hub::ServerSubscribe;

/// What is left to do for server-side subscriptions once the connect reply
/// is queued, in order.
#[derive(Default)]
pub(super) struct AfterReply {
    steps: Vec<Step>,
}

enum Step {
    /// Release the held publications newer than the reply's offset.
    Release { channel: String, top: u64 },
    /// Join an unpositioned channel (after the reply, so no publication
    /// overtakes it).
    Join {
        channel: String,
        state: SubState,
        push_join_leave: bool,
    },
}

impl Session {
    /// Enters the connection token's server-side subscriptions, recovering
    /// what the connect command's `subs` asks for; returns the reply's
    /// `subs` and what to do after the reply. A channel that does not
    /// resolve is skipped (logged). On an error every subscription entered
    /// so far is left again.
    pub(super) async fn enter_server_side(
        &mut self,
        subs: Vec<(String, SubOptions)>,
        mut asked: HashMap<String, SubscribeRequest>,
    ) -> Result<(Vec<(String, SubscribeResult)>, AfterReply), ProtocolError> {
        let mut results = Vec::with_capacity(subs.len());
        let mut after = AfterReply::default();
        for (channel, token) in subs {
            let options = match self.node.rules.resolve(&channel) {
                Ok(r) => r.options.clone(),
                Err(e) => {
                    tracing::warn!(%channel, code = e.code, "server-side subscription skipped");
                    continue;
                }
            };
            if results.len() >= self.node.config.client.channel_limit {
                tracing::warn!(client = %self.client_id, %channel, "server-side subscription over the channel limit skipped");
                continue;
            }
            let has_stream = self.node.stream_options(&options).is_some();
            let plan = Plan::new(&options, has_stream, &token.overrides, None);
            let mut state = SubState {
                chan_info: token.info,
                server_side: true,
                ..Default::default()
            };
            plan.apply(&mut state);
            let mut result = SubscribeResult {
                recoverable: plan.recoverable,
                positioned: plan.positioned,
                data: token.data,
                ..Default::default()
            };
            if plan.positioned {
                let req = asked.remove(&channel).unwrap_or_default();
                let entered = self
                    .enter_positioned(&channel, state, &plan, &req, &options, &mut result)
                    .await;
                match entered {
                    Ok(top) => after.steps.push(Step::Release {
                        channel: channel.clone(),
                        top,
                    }),
                    Err(e) => {
                        self.leave_entered(after).await;
                        return Err(e);
                    }
                }
            } else {
                after.steps.push(Step::Join {
                    channel: channel.clone(),
                    state,
                    push_join_leave: plan.push_join_leave,
                });
            }
            results.push((channel, result));
        }
        Ok((results, after))
    }

    /// Once the connect reply is queued: releases the positioned
    /// subscriptions and joins the others.
    pub(super) async fn finish_server_side(&mut self, after: AfterReply) {
        for step in after.steps {
            match step {
                Step::Release { channel, top } => self.release(&channel, top).await,
                Step::Join {
                    channel,
                    state,
                    push_join_leave,
                } => self.join_channel(&channel, state, push_join_leave).await,
            }
        }
    }

    /// Leaves the positioned subscriptions entered before an error.
    async fn leave_entered(&mut self, after: AfterReply) {
        for step in after.steps {
            if let Step::Release { channel, .. } = step {
                self.unsubscribe(&channel).await;
            }
        }
    }

    /// A subscription the server API asked for, announced with a subscribe
    /// push that carries its stream position when it is positioned (and
    /// what it recovered, when asked to recover from a position).
    pub(super) async fn server_subscribe_push(&mut self, sub: ServerSubscribe) {
        let ServerSubscribe {
            channel,
            info,
            data,
            expire_at,
            overrides,
            recover_since,
        } = sub;
        if self.conn.is_none() || self.subs.contains_key(&channel) {
            return;
        }
        if self.subs.len() >= self.node.config.client.channel_limit {
            tracing::warn!(client = %self.client_id, %channel, "server-side subscribe over the channel limit skipped");
            return;
        }
        let Ok(resolved) = self.node.rules.resolve(&channel) else {
            return;
        };
        let options = resolved.options.clone();
        let has_stream = self.node.stream_options(&options).is_some();
        let plan = Plan::new(&options, has_stream, &overrides, None);
        let mut state = SubState {
            expires_at: expire_at,
            chan_info: info,
            server_side: true,
            ..Default::default()
        };
        plan.apply(&mut state);
        let mut result = SubscribeResult {
            recoverable: plan.recoverable,
            positioned: plan.positioned,
            data,
            ..Default::default()
        };
        if !plan.positioned {
            self.push_subscribed(&channel, result);
            self.join_channel(&channel, state, plan.push_join_leave)
                .await;
            return;
        }
        let req = match recover_since {
            Some(since) => SubscribeRequest {
                recover: true,
                offset: since.offset,
                epoch: since.epoch,
                ..Default::default()
            },
            None => SubscribeRequest::default(),
        };
        let entered = self
            .enter_positioned(&channel, state, &plan, &req, &options, &mut result)
            .await;
        match entered {
            Ok(top) => {
                // A subscribe push carries no publications: what was
                // recovered follows it as publication pushes, from the
                // position the push names.
                let recovered = std::mem::take(&mut result.publications);
                if result.recovered && !recovered.is_empty() {
                    result.offset = req.offset;
                }
                self.push_subscribed(&channel, result);
                for frame in recovered
                    .iter()
                    .filter_map(|p| self.encoding.publication(p))
                {
                    self.outbox.push_frame(frame);
                }
                self.release(&channel, top).await;
            }
            Err(e) => {
                tracing::warn!(client = %self.client_id, %channel, code = e.code, "server-side subscribe failed");
            }
        }
    }

    fn push_subscribed(&self, channel: &str, result: SubscribeResult) {
        self.push(&Push::Subscribe {
            channel: channel.to_string(),
            result,
        });
    }
}
