//! Frames from the server: replies, publications with their positions and gaps, server-side
//! subscriptions, resume, advisories.

use herald_proto::envelope::{Resumed, Subscribed};
use herald_proto::server::{MessagePush, decode_server_frame};
use herald_proto::{ErrorCode, Format, Id, ServerMessage};

use super::*;
use crate::event::{GapReason, Message};

impl ClientState {
    /// A text frame arrived.
    pub(crate) fn frame(&mut self, bytes: &[u8], now: Instant) {
        let m = decode_server_frame(Format::Json, bytes).and_then(|(kind, id, payload)| {
            // `delta` of a message on a delta subscription: `MessagePush` does not carry it.
            let delta = kind == "message" && payload.get("delta") == Some(&Value::Bool(true));
            ServerMessage::from_parts(&kind, id, payload).map(|m| (m, delta))
        });
        let (m, delta) = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable server frame ignored");
                return;
            }
        };
        match m {
            ServerMessage::Message(p) => self.on_message(p, delta, now),
            ServerMessage::Join(p) => self.emit(Event::Join {
                channel: p.channel,
                who: p.who,
            }),
            ServerMessage::Leave(p) => self.emit(Event::Leave {
                channel: p.channel,
                who: p.who,
            }),
            ServerMessage::Subscribed(s) => {
                // A server-side subscription (server API or connect proxy).
                let channel = s.channel.clone();
                let new = !self.subs.contains_key(&channel);
                if new {
                    let generation = self.id();
                    self.subs
                        .insert(channel.clone(), Sub::new(Vec::new(), generation));
                    self.emit(Event::Subscribed {
                        channel: channel.clone(),
                    });
                }
                self.confirm(&channel, s, None);
            }
            ServerMessage::Unsubscribed { channel } => {
                if let Some(s) = self.subs.remove(&channel) {
                    for w in s.waiters {
                        let _ = w.send(Err(ClientError::Closed(
                            "unsubscribed by the server".into(),
                        )));
                    }
                }
                self.emit(Event::Unsubscribed { channel });
            }
            ServerMessage::Disconnect(d) => self.advisory = Some(d),
            ServerMessage::Gap(g) => self.on_gap(g),
            ServerMessage::Refresh(_) if self.cfg.refreshable => {
                self.out.push_back(Output::FetchToken);
            }
            ServerMessage::Reply {
                id: Id::Num(n),
                payload,
            } => self.on_reply(n, Ok(payload), now),
            ServerMessage::Pong {
                id: Some(Id::Num(n)),
            } => self.on_reply(n, Ok(json!({})), now),
            ServerMessage::Error {
                id: Some(Id::Num(n)),
                error,
                code_name,
            } => self.on_reply(n, Err(ClientError::server(error, code_name)), now),
            ServerMessage::Error {
                error, code_name, ..
            } => {
                tracing::warn!(code = %code_name, message = %error.message, "server error");
            }
            // `connected` is read by the driver; string ids are not this client's; unknown types
            // are ignored (forward compatibility).
            _ => {}
        }
    }

    /// A `message` push (`delta`: it says `"delta": true`).
    fn on_message(&mut self, p: MessagePush, delta: bool, now: Instant) {
        let Some(sub) = self.subs.get_mut(&p.channel) else {
            return;
        };
        if sub.resyncing {
            tracing::debug!(channel = %p.channel, offset = p.offset, "message ignored until the resync's reply");
            return;
        }
        let mut gap = None;
        if sub.positioned {
            if sub.epoch != p.epoch {
                // The stream was reset under a live subscription (unless a resume just reported
                // this loss).
                if !sub.gap_reported {
                    gap = Some(GapReason::EpochChanged);
                }
            } else if p.offset <= sub.offset {
                tracing::debug!(channel = %p.channel, offset = p.offset, "duplicate message dropped");
                return;
            } else if p.offset > sub.offset + 1 && !sub.gap_reported {
                gap = Some(if sub.lossy {
                    GapReason::Dropped
                } else {
                    GapReason::Skipped
                });
            }
        }
        // A delta subscription's data is JSON text, whole or a delta against the previous text
        // (a delta on a subscription not known as one cannot be applied either: resync, whose
        // reply tells).
        let data = if sub.delta || delta {
            match super::delta::whole(&p, delta, sub.base.as_ref()) {
                Ok((data, text)) => {
                    sub.base = text.map(|text| super::delta::Base {
                        offset: p.offset,
                        epoch: p.epoch.clone(),
                        text,
                    });
                    data
                }
                Err(e) => {
                    self.resync(&p.channel, e.0, now);
                    return;
                }
            }
        } else {
            p.data
        };
        let last = sub.offset;
        sub.offset = p.offset;
        sub.epoch.clone_from(&p.epoch);
        sub.positioned = true;
        sub.gap_reported = false;
        if let Some(reason) = gap {
            self.emit(Event::Gap {
                channel: p.channel.clone(),
                reason,
                last_offset: last,
                resumed_at: p.offset.saturating_sub(1),
            });
        }
        self.emit(Event::Message(Message {
            channel: p.channel,
            offset: p.offset,
            epoch: p.epoch,
            data,
            info: p.info,
        }));
    }

    fn on_reply(&mut self, id: u64, result: Result<Value, ClientError>, now: Instant) {
        let Some((p, _)) = self.pending.remove(&id) else {
            return;
        };
        match p {
            Pending::Plain(tx) => drop(tx.send(result)),
            Pending::Publish(q) => drop(q.tx.send(result)),
            Pending::Refresh => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "refresh rejected");
                }
            }
            Pending::Subscribe(channel, generation) => {
                // A reply for an earlier subscription of this channel is not this one's.
                if self
                    .subs
                    .get(&channel)
                    .is_some_and(|s| s.generation == generation)
                {
                    self.on_subscribe_reply(&channel, result, now);
                }
            }
            Pending::Unsubscribe(_, tx) => drop(tx.send(result)),
            Pending::Resume => self.on_resumed(id, result, now),
            Pending::Internal => {}
        }
    }

    fn on_subscribe_reply(
        &mut self,
        channel: &str,
        result: Result<Value, ClientError>,
        now: Instant,
    ) {
        match result {
            Ok(v) => match serde_json::from_value::<Subscribed>(v.clone()) {
                Ok(s) => self.confirm(channel, s, Some(v)),
                Err(e) => self.subscribe_failed(
                    channel,
                    ClientError::Protocol(format!("bad subscribe reply: {e}")),
                    now,
                ),
            },
            Err(ClientError::Server {
                code: ErrorCode::AlreadySubscribed,
                ..
            }) => self.already_subscribed(channel),
            Err(e) => self.subscribe_failed(channel, e, now),
        }
    }

    /// The server confirmed a subscription at its stream position `s` (a subscribe reply, or a
    /// server-side `subscribed` push): work out what was lost, answer the callers.
    fn confirm(&mut self, channel: &str, s: Subscribed, raw: Option<Value>) {
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        sub.failures = 0;
        sub.retry_at = None;
        sub.confirmed = true;
        sub.lossy = s.slow_consumer.is_some();
        sub.delta = s.delta.as_deref() == Some("fossil");
        sub.resyncing = false;
        if !sub.delta {
            sub.base = None;
        }
        let at_least_once = s.delivery.as_deref() == Some("at_least_once");
        let held = sub.offset;
        let mut gap = None;
        if sub.positioned && sub.epoch != s.epoch {
            gap = Some(GapReason::EpochChanged);
            sub.offset = s.offset.saturating_sub(s.missed.unwrap_or(0));
        } else {
            match s.recovered {
                None if !sub.positioned => sub.offset = s.offset,
                Some(false) if sub.positioned => {
                    // What is still in history follows: offsets top − missed + 1 … top.
                    gap = Some(GapReason::Trimmed);
                    sub.offset = s.offset.saturating_sub(s.missed.unwrap_or(0));
                }
                _ => {}
            }
        }
        sub.epoch = s.epoch.clone();
        sub.positioned = true;
        sub.gap_reported = false;
        let resumed_at = sub.offset;
        // Acks start over from the confirmed position (the server's starts there too).
        sub.acks =
            at_least_once.then(|| super::acks::Acks::new(s.ack_window.unwrap_or(1), sub.offset));
        let raw = raw
            .unwrap_or_else(|| json!({"channel": channel, "offset": s.offset, "epoch": s.epoch}));
        for w in sub.waiters.drain(..) {
            let _ = w.send(Ok(raw.clone()));
        }
        if let Some(reason) = gap {
            self.emit(Event::Gap {
                channel: channel.to_owned(),
                reason,
                last_offset: held,
                resumed_at,
            });
        }
    }

    /// The server already holds this subscription (e.g. kept by a session this client thought
    /// was gone): it stands as it is.
    fn already_subscribed(&mut self, channel: &str) {
        if let Some(sub) = self.subs.get_mut(channel) {
            sub.retry_at = None;
            sub.confirmed = true;
            sub.resyncing = false;
            let v = json!({"channel": channel, "offset": sub.offset, "epoch": sub.epoch});
            for w in sub.waiters.drain(..) {
                let _ = w.send(Ok(v.clone()));
            }
        }
    }

    fn on_resumed(&mut self, id: u64, result: Result<Value, ClientError>, now: Instant) {
        let Link::Resuming(rid, _) = &self.link else {
            return;
        };
        if *rid != id {
            return;
        }
        let Link::Resuming(_, mut info) = std::mem::replace(&mut self.link, Link::Down) else {
            return;
        };
        let resumed = result.and_then(|v| {
            serde_json::from_value::<Resumed>(v)
                .map_err(|e| ClientError::Protocol(format!("bad resume reply: {e}")))
        });
        match resumed {
            Ok(r) => {
                info.client_id.clone_from(&r.client_id);
                self.resume_token = Some(r.resume_token.clone());
                self.restore(r, now);
                self.up(*info, true, now);
            }
            Err(e) => {
                tracing::debug!(error = %e, "resume refused: subscribing again");
                self.resume_token = None;
                self.up(*info, false, now);
            }
        }
    }

    /// A resumed session kept `r.channels`: report what they could not recover, adopt the
    /// server-side subscriptions made while away, leave what the application left, subscribe
    /// what the application added.
    fn restore(&mut self, r: Resumed, now: Instant) {
        let mut kept = BTreeSet::new();
        for c in r.channels {
            kept.insert(c.channel.clone());
            let Some(sub) = self.subs.get_mut(&c.channel) else {
                if self.left_while_away.contains(&c.channel) {
                    self.send("unsubscribe", None, json!({ "channel": c.channel }));
                } else {
                    let mut adopted = Sub::new(Vec::new(), self.next_id);
                    self.next_id += 1;
                    adopted.confirmed = true;
                    self.subs.insert(c.channel.clone(), adopted);
                    self.emit(Event::Subscribed { channel: c.channel });
                }
                continue;
            };
            sub.confirmed = true;
            let v = json!({"channel": c.channel, "offset": sub.offset, "epoch": sub.epoch});
            for w in sub.waiters.drain(..) {
                let _ = w.send(Ok(v.clone()));
            }
            if c.recovered == Some(false) && sub.positioned {
                sub.gap_reported = true;
                let last = sub.offset;
                self.emit(Event::Gap {
                    channel: c.channel,
                    reason: GapReason::Trimmed,
                    last_offset: last,
                    resumed_at: last,
                });
            }
        }
        let added: Vec<String> = self
            .subs
            .keys()
            .filter(|c| !kept.contains(*c))
            .cloned()
            .collect();
        for c in added {
            self.send_subscribe(&c, now);
        }
    }
}
