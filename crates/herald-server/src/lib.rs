//! Herald's transports and HTTP surface.
//!
//! # Layout
//! - [`app`]: routes (`/ws`, `/echo`, `/metrics`, `/healthz`, `/readyz`), upgrade and lifecycle.
//! - [`connection`]: one `/ws` connection: read loop and session dispatch; the `/echo` loop.
//! - [`reader`]: whole messages from client frames (fragments, size bound, UTF-8).
//! - [`writer`]: the corked writer (vectored writes), heartbeats and closing.
//! - [`config`]: `[server]` and `[connection]` settings.
//! - [`metrics`]: the Prometheus recorder.

pub mod app;
pub mod config;
pub mod connection;
pub mod metrics;
pub mod reader;
pub mod writer;

pub use app::{Handle, Server};
pub use config::{ConnectionConfig, ServerConfig};
