//! Commands from the client and from the server API: dispatch and the simple ones (publish,
//! history, presence, refresh), and the token expiry timer.

use herald_proto::codec::HistoryOut;
use herald_proto::envelope::{ChannelOnly, ClientInfo, History, MAX_HISTORY_LIMIT, Subscribe};
use herald_proto::{CloseCode, Command, ErrorCode, Id, Request};
use serde::Serialize;

use crate::auth::Identity;
use crate::auth::{TokenKind, permissions};
use crate::broker::HistoryQuery;
use crate::config::NamespaceOptions;
use crate::error::EngineError;
use crate::journal::EventKind;

use super::backend::backend_failed;
use super::*;

impl Session {
    /// When [`Session::on_auth_timer`] must run next (token refresh request or expiry).
    pub fn auth_deadline(&self) -> Option<tokio::time::Instant> {
        self.expiry.map(|e| {
            if e.refresh_sent {
                e.expire_at
            } else {
                e.refresh_at()
            }
        })
    }

    /// The auth deadline passed: ask for a fresh token, or close with 4010 once it expired.
    pub fn on_auth_timer(&mut self) -> Flow {
        let Some(e) = &mut self.expiry else {
            return Flow::Continue;
        };
        let now = tokio::time::Instant::now();
        if now >= e.expire_at {
            metrics::counter!("herald_token_expired_total").increment(1);
            self.expiry = None;
            return Flow::Close(CloseCode::TokenExpired);
        }
        if !e.refresh_sent && now >= e.refresh_at() {
            e.refresh_sent = true;
            if self.identity.proxied()
                && let Ok(proxy) = self.node.channel_proxy()
                && proxy.refreshes()
            {
                self.refresh_through_proxy(proxy.clone());
                return Flow::Continue;
            }
            let left = e.expire_at.saturating_duration_since(now).as_millis() as u64;
            let p = herald_proto::envelope::RefreshInfo {
                expires_in_ms: left,
            };
            if let Some(b) = self.encode(ServerKind::Refresh, None, &p) {
                self.outlet.push_reply(b);
            }
        }
        Flow::Continue
    }

    /// Handle one decoded command.
    pub async fn handle(&mut self, req: Request) -> Flow {
        let Request { id, command } = req;
        if let Some(flow) = self.charge(&id) {
            return flow;
        }
        let admitted_by_resume = match &self.rare {
            Some(r) if r.resume_only.is_some() => self.rare_with(|r| r.resume_only.take()),
            _ => None,
        };
        if let Some(token) = &admitted_by_resume
            && !matches!(&command, Command::Resume(r) if *r.token == **token)
        {
            self.error(
                &id,
                ErrorCode::Unauthorized,
                "admitted by a resume token: the first command must be that `resume`",
            );
            return Flow::Close(CloseCode::AuthFailed);
        }
        if !self.announced && !matches!(command, Command::Resume(_)) {
            self.announced = true;
            self.event(EventKind::Connect, None, None);
        }
        let result = match command {
            Command::Ping => {
                if let Some(b) = self.encode(ServerKind::Pong, id.as_ref(), &serde_json::Map::new())
                {
                    self.outlet.push_reply(b);
                }
                Ok(())
            }
            Command::Subscribe(s) => self.subscribe(&id, s).await,
            Command::Unsubscribe(c) => self.unsubscribe(&id, c).await,
            Command::Publish(p) => self.publish(&id, p).await,
            Command::History(h) => self.history(&id, h).await,
            Command::Presence(c) => self.presence(&id, c).await,
            Command::PresenceStats(c) => self.presence_stats(&id, c).await,
            Command::Resume(r) => self.resume(&id, r).await,
            Command::Refresh(r) => self.refresh(&id, &r.token),
            Command::Rpc(r) => self.rpc(&id, r),
            Command::Ack(a) => self.ack(&id, a),
            Command::Auth(_) => Err(EngineError::new(
                ErrorCode::BadRequest,
                "already authenticated: use `refresh` to replace the token",
            )),
        };
        match result {
            Ok(()) => Flow::Continue,
            // Admitted only to resume, and the resume failed: nothing else may happen here.
            Err(e) if admitted_by_resume.is_some() => {
                self.error(&id, e.code, &e.message);
                Flow::Close(CloseCode::AuthFailed)
            }
            Err(e) => {
                self.error(&id, e.code, &e.message);
                if e.code.is_violation() {
                    self.violation()
                } else {
                    Flow::Continue
                }
            }
        }
    }

    /// The next server-side command, if one is waiting (never ready for sessions without a
    /// user). Polled by the connection task together with its socket.
    pub fn poll_server_command(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<ServerCommand> {
        match &mut self.server_cmds {
            Some((_, rx)) => match rx.poll_recv(cx) {
                std::task::Poll::Ready(Some(c)) => std::task::Poll::Ready(c),
                _ => std::task::Poll::Pending,
            },
            None => std::task::Poll::Pending,
        }
    }

    /// Whether a server-side command is waiting. A connection that saw `Pending` from
    /// [`Session::poll_server_command`] may skip polling while this is false: its waker stays
    /// registered until a command arrives (and polling registers it again, which costs).
    pub fn server_command_waiting(&self) -> bool {
        self.server_cmds
            .as_ref()
            .is_some_and(|(_, rx)| !rx.is_empty())
    }

    /// Apply a server-side command (from the server API or a connect proxy): subscribe or
    /// unsubscribe without permission checks, telling the client with a push.
    pub async fn server_command(&mut self, cmd: ServerCommand) {
        match cmd {
            ServerCommand::Subscribe(channel) => {
                if self.subs.contains_key(&channel) {
                    return;
                }
                let ns = match self.node.namespace(&channel) {
                    Ok(ns) => ns.clone(),
                    Err(e) => {
                        tracing::warn!(channel, error = %e, "server-side subscribe refused");
                        return;
                    }
                };
                let s = Subscribe {
                    channel: channel.clone(),
                    recover: None,
                    token: None,
                };
                if let Err(e) = self.join(&None, s, &ns, true).await {
                    tracing::warn!(channel, error = %e, "server-side subscribe failed");
                }
            }
            ServerCommand::Unsubscribe(channel) => {
                if self.subs.remove(&channel).is_some() {
                    self.leave(&channel).await;
                    self.forget_chan_info(&channel);
                    if let Some(b) = self.encode(
                        ServerKind::Unsubscribed,
                        None,
                        &serde_json::json!({ "channel": channel }),
                    ) {
                        self.outlet.push_reply(b);
                    }
                }
            }
            ServerCommand::Refreshed(r) => {
                let Some(claims) = &mut self.identity.claims else {
                    return;
                };
                claims.exp = r.expire_at;
                if let Some(info) = r.info {
                    claims.info = Some(info);
                }
                self.expiry = expiry(&self.identity, self.node.config().auth.refresh_before);
                metrics::counter!("herald_proxy_refreshes_total").increment(1);
            }
            // The transport answers it with its name (see `Session::details`); this is the
            // answer of a caller that does not know it.
            ServerCommand::Describe(reply) => reply.answer(self.details(None)),
        }
    }

    /// `ack`: the client processed everything of a channel up to an offset (at-least-once).
    pub(super) fn ack(
        &mut self,
        id: &Option<Id>,
        a: herald_proto::envelope::Ack,
    ) -> Result<(), EngineError> {
        let Some(sub) = self.subs.get(&a.channel) else {
            return Err(EngineError::new(ErrorCode::NotSubscribed, "not subscribed"));
        };
        let Some(t) = sub.tracker() else {
            return Err(EngineError::new(
                ErrorCode::BadRequest,
                "the subscription is not at-least-once: nothing to acknowledge",
            ));
        };
        match t.ack(a.offset) {
            Err(e) => {
                return Err(EngineError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "ack of offset {} beyond the last one sent ({})",
                        a.offset, e.sent
                    ),
                ));
            }
            Ok(true) => {
                tokio::spawn(crate::node::catch_up(self.node.clone(), sub.clone()));
            }
            Ok(false) => {}
        }
        self.reply(id, &serde_json::Map::new());
        Ok(())
    }

    pub(super) async fn unsubscribe(
        &mut self,
        id: &Option<Id>,
        c: ChannelOnly,
    ) -> Result<(), EngineError> {
        if self.subs.remove(&c.channel).is_none() {
            return Err(EngineError::new(ErrorCode::NotSubscribed, "not subscribed"));
        }
        self.leave(&c.channel).await;
        self.forget_chan_info(&c.channel);
        self.reply(id, &serde_json::Map::new());
        Ok(())
    }

    pub(super) async fn publish(
        &mut self,
        id: &Option<Id>,
        p: herald_proto::envelope::Publish,
    ) -> Result<(), EngineError> {
        let mut p = p;
        let node = self.node.clone();
        let ns = node.namespace(&p.channel)?;
        if ns.publish_proxy {
            permissions::may_ask_backend(&self.identity, &p.channel, ns.rules())?;
            let ctx = self.rpc_context();
            let data = p.data.to_json_value();
            if let Some(new) = node
                .channel_proxy()?
                .publish(&ctx, &p.channel, data)
                .await
                .inspect_err(|e| backend_failed(&node, "publish", &ctx, Some(&p.channel), e))?
            {
                p.data = herald_proto::Data::json(&new.to_string())
                    .map_err(|e| EngineError::new(ErrorCode::Internal, e.to_string()))?;
            }
        } else {
            permissions::may_publish(&self.identity, &p.channel, ns.rules())?;
        }
        let key = match &*self.identity.user_id {
            "" => &*self.client_id,
            user => user,
        };
        if !self.node.publish_allowed(key) {
            metrics::counter!("herald_rate_limited_total", "kind" => "publish").increment(1);
            return Err(EngineError::new(
                ErrorCode::RateLimited,
                "publish rate limit exceeded for this user",
            ));
        }
        let max = self.node.config().session.max_data_size;
        if p.data.encoded_len() > max {
            return Err(EngineError::new(
                ErrorCode::TooLarge,
                format!("data is larger than {max} bytes"),
            ));
        }
        let out = node
            .publish_in(
                &p.channel,
                ns,
                p.data,
                Some(self.info(&p.channel)),
                p.idempotency_key,
            )
            .await?;
        // The reply every publication costs: written without serde (herald_proto's `jsonout`).
        if let Some(id) = id
            && let Some(b) = self.encoded(herald_proto::codec::encode_published(
                self.outlet.format,
                id,
                out.offset,
                &out.epoch,
                out.duplicate,
            ))
        {
            self.outlet.push_reply(b);
        }
        Ok(())
    }

    pub(super) async fn history(&mut self, id: &Option<Id>, h: History) -> Result<(), EngineError> {
        let ns = self.node.namespace(&h.channel)?;
        self.may_read(&h.channel, ns)?;
        if !ns.history_enabled() {
            return Err(EngineError::new(
                ErrorCode::HistoryDisabled,
                "history is disabled in this namespace",
            ));
        }
        let limit = h.limit.unwrap_or(MAX_HISTORY_LIMIT);
        if limit > MAX_HISTORY_LIMIT {
            return Err(EngineError::new(
                ErrorCode::BadRequest,
                "limit must be at most 100",
            ));
        }
        let q = HistoryQuery {
            since: h.since,
            limit,
            reverse: h.reverse,
        };
        let page = self.node.broker.history(&h.channel, q).await?;
        // Bound the reply frame: stop adding publications past PAGE_BYTES (at least one).
        const PAGE_BYTES: usize = 256 * 1024;
        let mut size = 0;
        let format = self.outlet.format;
        let mut publications = Vec::with_capacity(page.publications.len());
        for p in &page.publications {
            size += p.queued_len();
            if size > PAGE_BYTES && !publications.is_empty() {
                break;
            }
            publications.push(p.out(format));
        }
        self.reply(
            id,
            &HistoryOut {
                offset: page.top,
                epoch: &page.epoch,
                publications,
            },
        );
        Ok(())
    }

    pub(super) async fn presence(
        &mut self,
        id: &Option<Id>,
        c: ChannelOnly,
    ) -> Result<(), EngineError> {
        self.may_read(&c.channel, self.node.namespace(&c.channel)?)?;
        #[derive(Serialize)]
        struct Clients {
            clients: Vec<ClientInfo>,
        }
        let clients = self.node.presence(&c.channel).await?;
        self.reply(id, &Clients { clients });
        Ok(())
    }

    pub(super) async fn presence_stats(
        &mut self,
        id: &Option<Id>,
        c: ChannelOnly,
    ) -> Result<(), EngineError> {
        self.may_read(&c.channel, self.node.namespace(&c.channel)?)?;
        let stats = self.node.presence_stats(&c.channel).await?;
        self.reply(id, &stats);
        Ok(())
    }

    /// `refresh`: replace the connection token with a fresh one for the same user.
    pub(super) fn refresh(&mut self, id: &Option<Id>, token: &str) -> Result<(), EngineError> {
        let claims = self.node.verifier().verify(token, TokenKind::Connection)?;
        if *claims.sub != *self.identity.user_id {
            return Err(EngineError::new(
                ErrorCode::TokenInvalid,
                "the new token is for another user",
            ));
        }
        self.identity = Identity::from_claims(claims);
        self.expiry = expiry(&self.identity, self.node.config().auth.refresh_before);
        self.reregister();
        let expires_in_ms = self.expires_in_ms().unwrap_or(0);
        self.reply(id, &herald_proto::envelope::RefreshInfo { expires_in_ms });
        Ok(())
    }

    /// History and presence: allowed to subscribers and to whoever may subscribe.
    pub(super) fn may_read(&self, channel: &str, ns: &NamespaceOptions) -> Result<(), EngineError> {
        if self.subs.contains_key(channel) {
            return Ok(());
        }
        permissions::may_subscribe(
            &self.identity,
            self.node.verifier(),
            channel,
            ns.rules(),
            None,
        )
    }
}
