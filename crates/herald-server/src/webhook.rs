//! Lifecycle events to a webhook: batches of events from the node's event log, POSTed as
//! `{"events": [...]}` with an HMAC-SHA256 signature, retried with backoff; delivery is at least
//! once (every event has a unique `id` to deduplicate on). A batch that exhausts its attempts, or
//! events the log dropped before they could be sent, become dead letters.

use std::sync::Arc;
use std::time::Duration;

use herald_core::Node;
use herald_core::journal::DeadLetterKind;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// `[webhook]` settings.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST events (`http://` or `https://`); unset = no webhook.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Key of the `X-Herald-Signature: sha256=<hex HMAC of the body>` header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Most events per request.
    pub batch_size: usize,
    /// How long to wait for more events before sending a partial batch.
    #[serde(with = "humantime_serde")]
    pub batch_wait: Duration,
    /// Timeout of one request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per batch before it becomes a dead letter.
    pub max_attempts: u32,
    /// First retry delay (doubling, at most 30 s).
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: None,
            secret: None,
            batch_size: 100,
            batch_wait: Duration::from_millis(200),
            timeout: Duration::from_secs(5),
            max_attempts: 8,
            retry_backoff: Duration::from_millis(200),
        }
    }
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Deliver events until `stop` is cancelled. Returns at once when no URL is configured.
pub fn spawn(node: Arc<Node>, cfg: WebhookConfig, stop: CancellationToken) {
    let Some(url) = cfg.url.clone() else { return };
    tokio::spawn(async move {
        let mut cursor = 0u64;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let log = node.events();
            let (mut events, oldest) = log.since(cursor, cfg.batch_size);
            if oldest > cursor + 1 {
                node.dead_letters().push(
                    DeadLetterKind::EventsDropped,
                    json!({"from_seq": cursor + 1, "to_seq": oldest - 1,
                           "why": "the event log overflowed before delivery"}),
                );
                cursor = oldest - 1;
                continue;
            }
            if events.is_empty() {
                tokio::select! {
                    _ = tokio::time::timeout(Duration::from_secs(1), log.appended()) => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            }
            if events.len() < cfg.batch_size {
                tokio::select! {
                    _ = tokio::time::sleep(cfg.batch_wait) => {}
                    _ = stop.cancelled() => {}
                }
                events = log.since(cursor, cfg.batch_size).0;
            }
            let (first, last) = (
                events.first().map(|e| e.seq).unwrap_or(cursor + 1),
                events.last().map(|e| e.seq).unwrap_or(cursor),
            );
            let body = json!({ "events": events }).to_string().into_bytes();
            let delivery = uuid::Uuid::new_v4().simple().to_string();
            if let Err(e) = deliver(&url, &cfg, &delivery, body, &stop).await {
                node.dead_letters().push(
                    DeadLetterKind::Webhook,
                    json!({"delivery": delivery, "from_seq": first, "to_seq": last, "error": e}),
                );
            }
            cursor = last;
        }
    });
}

async fn deliver(
    url: &str,
    cfg: &WebhookConfig,
    delivery: &str,
    body: Vec<u8>,
    stop: &CancellationToken,
) -> Result<(), String> {
    let sig = cfg.secret.as_deref().map(|s| signature(s, &body));
    let mut last = String::new();
    let mut backoff = cfg.retry_backoff;
    for attempt in 1..=cfg.max_attempts.max(1) {
        let mut headers = vec![
            ("content-type", "application/json"),
            ("x-herald-delivery", delivery),
        ];
        if let Some(s) = &sig {
            headers.push(("x-herald-signature", s));
        }
        let attempt_s = attempt.to_string();
        headers.push(("x-herald-attempt", &attempt_s));
        match crate::http_client::request(
            "POST",
            url,
            &headers,
            body.clone(),
            64 * 1024,
            cfg.timeout,
        )
        .await
        {
            Ok(r) if (200..300).contains(&r.status) => {
                metrics::counter!("herald_webhook_deliveries_total", "result" => "ok").increment(1);
                return Ok(());
            }
            Ok(r) => last = format!("HTTP {}", r.status),
            Err(e) => last = e.to_string(),
        }
        metrics::counter!("herald_webhook_deliveries_total", "result" => "retry").increment(1);
        if attempt < cfg.max_attempts {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return Err(format!("shutdown: {last}")),
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
    Err(last)
}
