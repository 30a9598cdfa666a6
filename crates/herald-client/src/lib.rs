//! The Herald Rust client.
//!
//! ```no_run
//! # async fn demo() -> Result<(), herald_client::ClientError> {
//! use herald_client::{Client, ClientConfig, Event};
//! let (client, mut events) = Client::connect(ClientConfig::new("ws://127.0.0.1:8000/ws").token("eyJ…"));
//! client.subscribe("chat:lobby").await?;
//! client.publish("chat:lobby", serde_json::json!({"text": "hi"})).await?;
//! while let Some(e) = events.next().await {
//!     if let Event::Message(m) = e {
//!         println!("{} #{}: {}", m.channel, m.offset, m.data);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! What it does for you (see `docs/protocol.md` for the wire side):
//! - reconnects with exponential backoff and jitter ([`Backoff`]), honouring the server's
//!   `disconnect` advisory (`reconnect: false` stops, `reconnect_after_ms` is waited);
//! - resumes the session after a reconnect, or resubscribes every channel from its last offset
//!   and recovers; unrecoverable loss is reported as [`Event::Gap`] with a [`GapReason`],
//!   duplicates are dropped;
//! - every protocol decision lives in a synchronous state (no socket, unit-tested, and run
//!   against the scenario suite shared with the TypeScript client: `clients/scenarios/`); a thin
//!   driver task owns the socket, the clock and reconnects;
//! - a heartbeat watchdog: silence longer than the server's ping interval + pong timeout + a
//!   margin means the connection is dead (half-open) and it reconnects;
//! - requests with timeouts; publishes with an idempotency key reused on retries, and a bounded
//!   offline queue for publishes made while disconnected;
//! - delta subscriptions (a namespace with `delta = "fossil"`, `docs/protocol.md` §5) are
//!   applied transparently: the client turns each Fossil delta back into whole data, so
//!   [`Event::Message`] carries the same data as on any other channel; a delta that does not
//!   apply is never shown — the client quietly subscribes again from the last offset it applied;
//! - tokens from a callback, asked again on every reconnect and on the server's `refresh` push;
//! - where WebSockets are blocked, the same over HTTP streaming or SSE ([`Transport::Http`]).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod acks;
mod backoff;
mod client;
mod config;
mod driver;
mod error;
mod event;
mod http;
mod state;

pub use backoff::Backoff;
pub use client::{Client, Events, HistoryQuery};
pub use config::{AckMode, BoxError, Carrier, ClientConfig, TokenFuture, TokenSource, Transport};
pub use error::ClientError;
pub use event::{Event, GapReason, Message, State};
pub use http::HttpStyle;
