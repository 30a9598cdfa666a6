//! Which publications go out compressed (permessage-deflate) on connections that negotiated it:
//! per namespace (`compression`, `compress_binary`) and above a size threshold. The decision and
//! the compressed frame are made once per publication and format, on first use, and shared by
//! every subscriber (`Publication::deflated_frame`).

use std::collections::BTreeMap;

use herald_proto::Format;

/// The node's compression rules, shared by the outlets of connections that negotiated
/// permessage-deflate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflatePolicy {
    /// Messages whose payload is smaller go out uncompressed.
    pub threshold: usize,
    /// `(compression, compress_binary)` per namespace.
    namespaces: BTreeMap<String, (bool, bool)>,
    default: Option<(bool, bool)>,
}

impl DeflatePolicy {
    /// Rules: `(compression, compress_binary)` per namespace name and for the default
    /// namespace (see `EngineConfig::deflate_policy`), with a size `threshold`.
    pub fn new(
        namespaces: BTreeMap<String, (bool, bool)>,
        default: Option<(bool, bool)>,
        threshold: usize,
    ) -> DeflatePolicy {
        DeflatePolicy {
            threshold,
            namespaces,
            default,
        }
    }

    /// Whether publications of `channel` are compressed for a `format` connection.
    pub fn compresses(&self, channel: &str, format: Format) -> bool {
        let ns = herald_proto::channel::namespace_of(channel);
        let rule = self.namespaces.get(ns).copied().or(self.default);
        match (rule, format) {
            (Some((on, _)), Format::Json) => on,
            (Some((on, binary)), Format::Msgpack) => on && binary,
            (None, _) => false,
        }
    }

    /// Whether any namespace compresses anything (else negotiating is pointless for broadcasts).
    pub fn any(&self) -> bool {
        self.namespaces
            .values()
            .chain(self.default.iter())
            .any(|r| r.0)
    }
}
