//! `resume`: adopting a session that waited for its client, and filling what the old socket lost.

use herald_proto::envelope::{MAX_HISTORY_LIMIT, Resume, Resumed, ResumedChannel};
use herald_proto::{ErrorCode, Id, StreamPosition};

use crate::broker::HistoryQuery;
use crate::error::EngineError;
use crate::hub::Subscriber;
use crate::outlet::Out;

use super::*;

impl Session {
    pub(super) async fn resume(&mut self, id: &Option<Id>, r: Resume) -> Result<(), EngineError> {
        if !self.subs.is_empty() {
            return Err(EngineError::new(
                ErrorCode::ResumeNotAllowed,
                "resume must come before any subscribe",
            ));
        }
        let Some(parked) = self.node.take_parked(&r.token, &self.identity.user_id) else {
            return Err(EngineError::new(
                ErrorCode::SessionNotFound,
                "no session for this resume token",
            ));
        };
        let Ok(old) = parked.into_any().downcast::<Session>() else {
            return Err(EngineError::new(
                ErrorCode::SessionNotFound,
                "no session for this resume token",
            ));
        };
        let mut old = *old;
        if old.outlet.close_requested().is_some() {
            old.end("session overflowed while disconnected").await;
            return Err(EngineError::new(
                ErrorCode::SessionNotFound,
                "the session overflowed while disconnected",
            ));
        }
        if old.outlet.format != self.outlet.format {
            // Its queued frames, and everything it writes, are in its own format.
            old.end("resumed in another format").await;
            return Err(EngineError::new(
                ErrorCode::SessionNotFound,
                "the session speaks another subprotocol: subscribe again",
            ));
        }
        let fresh_outlet = self.outlet.clone();
        old.adopt_connection(self);
        std::mem::swap(self, &mut old);
        self.reregister();
        drop(old); // the fresh session has no subscriptions: nothing to clean up
        self.resume_token = token();
        self.violations = 0;
        let mut channels = Vec::with_capacity(self.subs.len());
        let mut front: Vec<Out> = Vec::new();
        for (channel, sub) in &self.subs {
            let position = r.positions.get(channel);
            if let Some(t) = sub.tracker() {
                // At-least-once: the position acks; everything in flight after it goes again,
                // from memory and in offset order (queued copies are taken out first: they may
                // sit behind redeliveries of lower offsets).
                self.outlet.remove_publications(channel);
                let (resend, catch) = t.resume(position);
                front.extend(resend.into_iter().map(Out::Pub));
                if catch {
                    tokio::spawn(crate::node::catch_up(self.node.clone(), sub.clone()));
                }
                channels.push(ResumedChannel {
                    channel: channel.to_owned(),
                    recovered: position.map(|p| t.covers(p)),
                });
                continue;
            }
            let recovered = match position {
                None => None,
                Some(pos) => Some(self.fill_gap(channel, sub, pos, &mut front).await),
            };
            if sub.gets_deltas() && recovered != Some(true) {
                // The client may lack the base of the first queued delta: send it whole.
                self.outlet.make_first_whole(channel);
            }
            channels.push(ResumedChannel {
                channel: channel.to_owned(),
                recovered,
            });
        }
        let reply = Resumed {
            session_id: self.id.to_string(),
            client_id: self.client_id.to_string(),
            resume_token: self.resume_token.to_string(),
            channels,
            buffered: self.outlet.len() as u64,
        };
        if let Some(b) = id
            .as_ref()
            .and_then(|id| self.encode(ServerKind::Reply, Some(id), &reply))
        {
            front.insert(0, Out::Reply(b));
        }
        self.outlet.push_front(front);
        // What is written from now on follows the new connection's negotiation.
        self.outlet.set_deflate(fresh_outlet.deflate());
        fresh_outlet.redirect(self.outlet.clone());
        metrics::counter!("herald_sessions_resumed_total").increment(1);
        Ok(())
    }

    /// Publications the client missed before what is buffered (e.g. frames lost in flight when the
    /// socket died): fetched from history and queued in front. Returns whether the gap is closed.
    pub(super) async fn fill_gap(
        &self,
        channel: &str,
        sub: &Subscriber,
        pos: &StreamPosition,
        front: &mut Vec<Out>,
    ) -> bool {
        let next = self
            .outlet
            .queued_offsets(channel)
            .first()
            .copied()
            .unwrap_or(sub.last_offset().saturating_add(1));
        if pos.offset.saturating_add(1) >= next {
            return true;
        }
        let want = (next - 1 - pos.offset) as usize;
        let q = HistoryQuery {
            since: Some(pos.clone()),
            limit: want.min(MAX_HISTORY_LIMIT * 10),
            reverse: false,
        };
        match self.node.broker.history(channel, q).await {
            Ok(page) => {
                let got: Vec<_> = page
                    .publications
                    .into_iter()
                    .filter(|p| p.offset < next)
                    .collect();
                let complete = got.len() == want
                    && got
                        .first()
                        .is_some_and(|p| p.offset == pos.offset.saturating_add(1));
                front.extend(got.iter().map(|p| sub.whole(p)));
                complete
            }
            Err(_) => false,
        }
    }

    /// This (parked) session continues on `fresh`'s connection: it takes what belongs to the new
    /// connection and keeps what belongs to the session. The pattern names every field, so a new
    /// field does not compile until it is sorted into one of the two groups.
    fn adopt_connection(&mut self, fresh: &mut Session) {
        let Session {
            // The session's own: its subscriptions, ids, queued frames and journal share.
            node: _,
            outlet: _,
            id: _,
            client_id: _,
            quota: _,
            subs: _,
            announced: _,
            server_cmds: _,
            started_ms: _,
            resume_token: _,
            // The new connection's: its (fresher) token, rate limiter, address and headers; and a
            // clean slate of protocol violations.
            identity,
            expiry,
            limiter,
            client_ip,
            violations,
            // Its headers (the rest — rpc slots, channel info — belong to the session; a
            // `resume_only` token was spent by the `resume` being handled).
            rare,
        } = fresh;
        let forwarded = rare.take().and_then(|r| r.forwarded);
        self.rare_with(|r| {
            r.resume_only = None;
            r.forwarded = forwarded;
        });
        std::mem::swap(&mut self.identity, identity);
        std::mem::swap(&mut self.expiry, expiry);
        std::mem::swap(&mut self.limiter, limiter);
        std::mem::swap(&mut self.client_ip, client_ip);
        self.violations = *violations;
    }

    /// The connection ended. `clean` (close 1000, or an error that forbids resuming) ends the
    /// session at once; otherwise the node keeps it `resume_grace` for a `resume`.
    pub async fn disconnected(self, clean: bool) {
        let grace = self.node.config().session.resume_grace;
        // A connection admitted by a resume token that never resumed has nothing to keep: parked,
        // its own fresh token would admit the next connection without the proxy, and so on.
        if self.rare.as_ref().is_some_and(|r| r.resume_only.is_some()) {
            self.end("closed before its resume").await;
            return;
        }
        if clean || grace.is_zero() || self.outlet.close_requested().is_some() {
            let reason = match self.outlet.close_requested() {
                Some(code) => code.reason(),
                None if clean => "closed",
                None => "connection lost (resume disabled)",
            };
            self.end(reason).await;
            return;
        }
        for (_, sub) in &self.subs {
            if let Some(t) = sub.tracker() {
                t.pause();
            }
        }
        let node = self.node.clone();
        let token = self.resume_token.to_string();
        node.park(token, Box::new(self)).await;
    }

    /// Update the node's registry entry after the identity or token changed (refresh, resume).
    pub(super) fn reregister(&self) {
        let jti = self.identity.claims.as_ref().and_then(|c| c.jti.clone());
        self.node.register(
            &self.identity.user_id,
            &self.client_id,
            &self.outlet,
            jti,
            self.server_cmds.as_ref().map(|(tx, _)| tx.clone()),
        );
    }
}

impl crate::node::Waiting for Session {
    fn user_id(&self) -> &str {
        &self.identity.user_id
    }

    fn client_id(&self) -> &str {
        &self.client_id
    }

    fn details(&self) -> crate::node::SessionDetails {
        self.details(None)
    }

    fn proxied_identity(&self) -> Option<Identity> {
        // Revoked or disconnected while waiting: its outlet is closed, it cannot be resumed.
        if !self.identity.proxied() || self.outlet.close_requested().is_some() {
            return None;
        }
        let expired = self.identity.claims.as_ref().is_some_and(|c| {
            c.exp > 0 && c.exp.saturating_mul(1000) <= crate::publication::now_ms()
        });
        (!expired).then(|| self.identity.clone())
    }

    fn end(
        self: Box<Self>,
        reason: &'static str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin((*self).end(reason))
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}
