//! The application's commands, connected or not, and the frames they send.

use herald_proto::ErrorCode;

use super::*;

impl ClientState {
    /// A command from the application (`Close` is the driver's).
    pub(crate) fn command(&mut self, cmd: Cmd, now: Instant) {
        if matches!(self.link, Link::Up) {
            self.online(cmd, now);
        } else {
            self.offline(cmd, now);
        }
    }

    fn offline(&mut self, cmd: Cmd, now: Instant) {
        match cmd {
            Cmd::Publish {
                channel,
                data,
                key,
                tx,
            } => {
                if self.cfg.offline_queue == 0 {
                    let _ = tx.send(Err(ClientError::Disconnected));
                } else if self.offline.len() >= self.cfg.offline_queue {
                    let _ = tx.send(Err(ClientError::QueueFull));
                } else {
                    self.offline.push_back(QueuedPublish {
                        channel,
                        data,
                        key,
                        deadline: now + self.cfg.offline_deadline,
                        tx,
                    });
                }
            }
            Cmd::Subscribe { channel, tx } => {
                self.left_while_away.remove(&channel);
                let generation = self.id();
                self.subs
                    .entry(channel)
                    .or_insert_with(|| Sub::new(Vec::new(), generation))
                    .waiters
                    .push(tx);
            }
            Cmd::Unsubscribe { channel, tx } => {
                if let Some(s) = self.subs.remove(&channel) {
                    fail_waiters(s, &ClientError::Closed("unsubscribed".into()));
                }
                self.left_while_away.insert(channel);
                let _ = tx.send(Ok(json!({})));
            }
            Cmd::Request { tx, .. } => drop(tx.send(Err(ClientError::Disconnected))),
            Cmd::Close { tx } => drop(tx.send(())),
        }
    }

    fn online(&mut self, cmd: Cmd, now: Instant) {
        match cmd {
            Cmd::Request {
                kind,
                payload,
                timeout,
                tx,
            } => {
                let id = self.id();
                self.pending.insert(id, (Pending::Plain(tx), now + timeout));
                self.send(&kind, Some(id), payload);
            }
            Cmd::Publish {
                channel,
                data,
                key,
                tx,
            } => {
                let q = QueuedPublish {
                    channel,
                    data,
                    key,
                    deadline: now + self.cfg.offline_deadline,
                    tx,
                };
                self.send_publish(q, now);
            }
            Cmd::Subscribe { channel, tx } => {
                if let Some(s) = self.subs.get_mut(&channel) {
                    if s.confirmed {
                        let _ = tx.send(Err(ClientError::local(
                            ErrorCode::AlreadySubscribed,
                            "already subscribed",
                        )));
                    } else {
                        s.waiters.push(tx);
                    }
                    return;
                }
                let generation = self.id();
                self.subs
                    .insert(channel.clone(), Sub::new(vec![tx], generation));
                self.send_subscribe(&channel, now);
            }
            Cmd::Unsubscribe { channel, tx } => {
                let Some(s) = self.subs.remove(&channel) else {
                    let _ = tx.send(Err(ClientError::local(
                        ErrorCode::NotSubscribed,
                        "not subscribed",
                    )));
                    return;
                };
                fail_waiters(s, &ClientError::Closed("unsubscribed".into()));
                let id = self.id();
                let pending = Pending::Unsubscribe(channel.clone(), tx);
                self.pending
                    .insert(id, (pending, now + self.cfg.request_timeout));
                self.send("unsubscribe", Some(id), json!({ "channel": channel }));
            }
            Cmd::Close { tx } => drop(tx.send(())),
        }
    }

    pub(super) fn send_publish(&mut self, q: QueuedPublish, now: Instant) {
        let id = self.id();
        let payload = json!({"channel": q.channel, "data": q.data, "idempotency_key": q.key});
        self.pending
            .insert(id, (Pending::Publish(q), now + self.cfg.request_timeout));
        self.send("publish", Some(id), payload);
    }

    /// Subscribe (again) to a channel this client holds, recovering from its position.
    pub(super) fn send_subscribe(&mut self, channel: &str, now: Instant) {
        let Some(sub) = self.subs.get(channel) else {
            return;
        };
        let mut payload = json!({ "channel": channel });
        if sub.positioned {
            payload["recover"] = json!({"offset": sub.offset, "epoch": sub.epoch});
        }
        let generation = sub.generation;
        let id = self.id();
        self.pending.insert(
            id,
            (
                Pending::Subscribe(channel.to_owned(), generation),
                now + self.cfg.request_timeout,
            ),
        );
        self.send("subscribe", Some(id), payload);
    }

    /// A subscribe attempt failed: retried after a delay when the error is retryable (the
    /// callers keep waiting), else the subscription ends and its callers get the error.
    pub(super) fn subscribe_failed(&mut self, channel: &str, e: ClientError, now: Instant) {
        let (retryable, up) = (e.retryable(), matches!(self.link, Link::Up));
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        // Not connected: the reconnect subscribes again anyway.
        let retry_in = retryable.then(|| {
            sub.failures = sub.failures.saturating_add(1);
            if up {
                self.cfg.backoff.delay(sub.failures, &mut rand::rng())
            } else {
                Duration::ZERO
            }
        });
        if let Some(d) = retry_in {
            sub.retry_at = up.then_some(now + d);
            tracing::debug!(channel, error = %e, "subscribe failed; retrying in {d:?}");
        } else if let Some(s) = self.subs.remove(channel) {
            tracing::warn!(channel, error = %e, "subscribe refused");
            fail_waiters(s, &e);
        }
        self.emit(Event::SubscribeFailed {
            channel: channel.to_owned(),
            error: e,
            retry_in,
        });
    }
}

fn fail_waiters(s: Sub, e: &ClientError) {
    for w in s.waiters {
        let _ = w.send(Err(e.clone()));
    }
}
