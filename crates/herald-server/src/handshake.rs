//! Checks made on the HTTP upgrade request, before any WebSocket state exists: the client IP
//! (behind trusted proxies), the `Origin` allowlist, subprotocol negotiation and the handshake
//! token carriers. Tokens and query strings are never logged.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, Uri, header};
use herald_core::AuthConfig;
use herald_proto::Format;
use ipnet::IpNet;

/// Prefix of the `Sec-WebSocket-Protocol` entry that carries a token: `herald.auth.<jwt>`.
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "herald.auth.";

/// The client's IP: the TCP peer, or — when the peer is a trusted proxy — the right-most address
/// in `Forwarded: for=` (or else `X-Forwarded-For`) that is not itself a trusted proxy.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer.ip()) {
        return peer.ip();
    }
    let mut hops: Vec<Option<IpAddr>> = Vec::new();
    for v in headers.get_all(header::FORWARDED) {
        let Ok(v) = v.to_str() else { return peer.ip() };
        for element in v.split(',') {
            for pair in element.split(';') {
                if let Some((k, val)) = pair.trim().split_once('=')
                    && k.trim().eq_ignore_ascii_case("for")
                {
                    hops.push(parse_forwarded_for(val.trim()));
                }
            }
        }
    }
    if hops.is_empty() {
        for v in headers.get_all("x-forwarded-for") {
            let Ok(v) = v.to_str() else { return peer.ip() };
            hops.extend(v.split(',').map(|h| h.trim().parse::<IpAddr>().ok()));
        }
    }
    let mut client = peer.ip();
    for hop in hops.into_iter().rev() {
        match hop {
            Some(ip) if is_trusted(&ip) => client = ip,
            Some(ip) => return ip,
            // An unparsable hop was written by someone we do not trust: stop at the last
            // trusted address rather than believe anything further left.
            None => return client,
        }
    }
    client
}

/// `for=` values: `192.0.2.60`, `"192.0.2.60:4711"`, `"[2001:db8::1]:4711"`, `unknown`.
fn parse_forwarded_for(v: &str) -> Option<IpAddr> {
    let v = v.trim_matches('"');
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    if let Ok(ip) = v.parse() {
        return Some(ip);
    }
    v.rsplit_once(':')?.0.parse().ok()
}

/// Whether the handshake's `Origin` may connect. See `server.allowed_origins`.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String], allow_missing: bool) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return allow_missing;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim().to_ascii_lowercase();
    if allowed.is_empty() {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_ascii_lowercase);
        let origin_host = origin.split_once("://").map(|(_, h)| h);
        return host.is_some() && origin_host == host.as_deref();
    }
    allowed
        .iter()
        .any(|p| origin_matches(&p.to_ascii_lowercase(), &origin))
}

/// `*`, an exact origin, or `scheme://*.domain[:port]` (any subdomain, not the bare domain).
fn origin_matches(pattern: &str, origin: &str) -> bool {
    if pattern == "*" || pattern == origin {
        return true;
    }
    let Some((scheme, rest)) = pattern.split_once("://*.") else {
        return false;
    };
    let Some(host) = origin
        .strip_prefix(scheme)
        .and_then(|o| o.strip_prefix("://"))
    else {
        return false;
    };
    let suffix = format!(".{rest}");
    match host.strip_suffix(&suffix) {
        Some(sub) => {
            !sub.is_empty()
                && sub
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        }
        None => false,
    }
}

/// What the client offered in `Sec-WebSocket-Protocol`.
#[derive(Debug, Default)]
pub struct Offer {
    /// The first Herald format offered (`None` = no format offered: JSON).
    pub format: Option<Format>,
    /// Whether any non-token entry was offered.
    pub offered: bool,
    /// A `herald.auth.<token>` entry.
    pub token: Option<String>,
}

/// Parse the offered subprotocols.
pub fn offer(headers: &HeaderMap) -> Offer {
    let mut o = Offer::default();
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(list) = value.to_str() else { continue };
        for name in list.split(',').map(str::trim) {
            if let Some(t) = name.strip_prefix(TOKEN_SUBPROTOCOL_PREFIX) {
                o.token.get_or_insert_with(|| t.to_owned());
                continue;
            }
            o.offered = true;
            if o.format.is_none() {
                o.format = Format::from_subprotocol(name);
            }
        }
    }
    o
}

/// The handshake token from the enabled carriers, in order: `Authorization: Bearer`, the
/// subprotocol entry, the cookie, the query parameter.
pub fn token(headers: &HeaderMap, uri: &Uri, offer: &Offer, cfg: &AuthConfig) -> Option<String> {
    if cfg.header
        && let Some(t) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, t) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| t.trim())
            })
    {
        return Some(t.to_owned());
    }
    if cfg.subprotocol
        && let Some(t) = &offer.token
    {
        return Some(t.clone());
    }
    if let Some(name) = &cfg.cookie {
        for v in headers.get_all(header::COOKIE) {
            let Ok(v) = v.to_str() else { continue };
            for pair in v.split(';') {
                if let Some((k, val)) = pair.trim().split_once('=')
                    && k == name
                {
                    return Some(val.trim_matches('"').to_owned());
                }
            }
        }
    }
    if let Some(name) = &cfg.query_param {
        for pair in uri.query().unwrap_or("").split('&') {
            if let Some((k, val)) = pair.split_once('=')
                && k == name
            {
                return Some(val.to_owned());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn client_ip_trusts_only_configured_proxies() {
        let peer: SocketAddr = "10.0.0.2:5000".parse().expect("addr");
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.9")]);
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "203.0.113.7".parse::<IpAddr>().expect("ip")
        );
        // An untrusted peer's headers are ignored.
        assert_eq!(client_ip(peer, &h, &[]), peer.ip());
        let h = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=http, for=\"[2001:db8::1]:4711\"",
        )]);
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "2001:db8::1".parse::<IpAddr>().expect("ip")
        );
        let h = headers(&[("x-forwarded-for", "garbage, 10.0.0.7")]);
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "10.0.0.7".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn origins() {
        let allowed = vec![
            "https://app.example.com".to_owned(),
            "https://*.example.org".to_owned(),
        ];
        let ok = |o: &'static str| origin_allowed(&headers(&[("origin", o)]), &allowed, false);
        assert!(ok("https://app.example.com"));
        assert!(ok("https://APP.example.com"));
        assert!(!ok("http://app.example.com"));
        assert!(!ok("https://app.example.com.evil.com"));
        assert!(ok("https://a.b.example.org"));
        assert!(!ok("https://example.org"));
        assert!(!ok("https://evilexample.org"));
        assert!(!ok("null"));
        assert!(!origin_allowed(&HeaderMap::new(), &allowed, false));
        assert!(origin_allowed(&HeaderMap::new(), &allowed, true));
        // Empty list: same origin only.
        let same = headers(&[
            ("origin", "http://localhost:8000"),
            ("host", "localhost:8000"),
        ]);
        assert!(origin_allowed(&same, &[], false));
        let cross = headers(&[("origin", "http://evil.test"), ("host", "localhost:8000")]);
        assert!(!origin_allowed(&cross, &[], false));
    }

    #[test]
    fn token_carriers() {
        let mut cfg = AuthConfig {
            cookie: Some("herald_token".into()),
            query_param: Some("token".into()),
            ..Default::default()
        };
        let uri: Uri = "/ws?a=1&token=Q".parse().expect("uri");
        let h = headers(&[("authorization", "Bearer H")]);
        assert_eq!(token(&h, &uri, &offer(&h), &cfg).as_deref(), Some("H"));
        let h = headers(&[("sec-websocket-protocol", "herald.v1.json, herald.auth.S")]);
        let o = offer(&h);
        assert_eq!(o.format, Some(Format::Json));
        assert_eq!(token(&h, &uri, &o, &cfg).as_deref(), Some("S"));
        let h = headers(&[("cookie", "x=1; herald_token=C")]);
        assert_eq!(token(&h, &uri, &offer(&h), &cfg).as_deref(), Some("C"));
        assert_eq!(
            token(&HeaderMap::new(), &uri, &Offer::default(), &cfg).as_deref(),
            Some("Q")
        );
        cfg.query_param = None;
        assert_eq!(
            token(&HeaderMap::new(), &uri, &Offer::default(), &cfg),
            None
        );
    }
}
