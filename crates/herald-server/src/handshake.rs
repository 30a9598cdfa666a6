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

/// Why an upgrade request is not a conforming WebSocket handshake (RFC 6455 §4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadUpgrade {
    /// Not HTTP/1.1 (HTTP/1.0 cannot upgrade).
    Version,
    /// No `Upgrade: websocket` (answered `426 Upgrade Required`).
    NotWebSocket,
    /// `Connection` does not carry the `upgrade` token.
    Connection,
    /// `Sec-WebSocket-Version` is not 13 (answered 426 with `Sec-WebSocket-Version: 13`).
    WsVersion,
    /// `Sec-WebSocket-Key` is not 16 bytes in base64.
    Key,
}

impl BadUpgrade {
    /// The human reason in the 400/426 body.
    pub fn message(self) -> &'static str {
        match self {
            BadUpgrade::Version => "a WebSocket upgrade needs HTTP/1.1",
            BadUpgrade::NotWebSocket => "expected a WebSocket upgrade (Upgrade: websocket)",
            BadUpgrade::Connection => "the Connection header must include `upgrade`",
            BadUpgrade::WsVersion => "unsupported Sec-WebSocket-Version: use 13",
            BadUpgrade::Key => "Sec-WebSocket-Key must be 16 bytes in base64",
        }
    }
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Check that a request is a conforming WebSocket opening handshake.
pub fn check_upgrade(version: axum::http::Version, headers: &HeaderMap) -> Result<(), BadUpgrade> {
    use base64::Engine;
    if version != axum::http::Version::HTTP_11 {
        return Err(BadUpgrade::Version);
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(BadUpgrade::NotWebSocket);
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(BadUpgrade::Connection);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(BadUpgrade::WsVersion);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(BadUpgrade::Key)?;
    match base64::engine::general_purpose::STANDARD.decode(key.as_bytes().trim_ascii()) {
        Ok(k) if k.len() == 16 => Ok(()),
        _ => Err(BadUpgrade::Key),
    }
}

/// Whether the request's `Host` names this server (DNS rebinding defence). With
/// `server.allowed_hosts` set, its host name (port ignored) must match one of them (`name`, or
/// `*.domain` for any subdomain). Without it, a server listening on a loopback address only
/// answers loopback names (`localhost`, `*.localhost`, `127.0.0.0/8`, `[::1]`); other servers
/// answer any `Host`.
pub fn host_allowed(headers: &HeaderMap, allowed: &[String], loopback_listener: bool) -> bool {
    if allowed.is_empty() && !loopback_listener {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = host_name(host).to_ascii_lowercase();
    if allowed.is_empty() {
        return name == "localhost"
            || name.ends_with(".localhost")
            || name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
    }
    allowed.iter().any(|p| {
        let p = p.to_ascii_lowercase();
        match p.strip_prefix("*.") {
            Some(domain) => name
                .strip_suffix(domain)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => p == name,
        }
    })
}

/// `example.com:8000` → `example.com`; `[::1]:8000` → `[::1]`.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
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

/// The value of the first cookie called `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, val) = pair.trim().split_once('=')?;
            (k == name).then_some(val)
        })
}

/// The handshake token from the enabled carriers, in order: `Authorization: Bearer`, the
/// subprotocol entry, the cookie, the query parameter.
/// A resume token presented at the handshake: the `Herald-Resume` header, or the `resume` query
/// parameter (browsers cannot set headers on a WebSocket). Only used to skip the connect proxy
/// for a session waiting for `resume` (protocol §8).
pub fn resume_token(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    if let Some(t) = headers.get("herald-resume").and_then(|v| v.to_str().ok()) {
        return Some(t.trim().to_owned());
    }
    uri.query()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("resume="))
        .filter(|t| !t.is_empty() && t.len() <= 64)
        .map(str::to_owned)
}

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
    if let Some(name) = &cfg.cookie
        && let Some(val) = cookie(headers, name)
    {
        return Some(val.trim_matches('"').to_owned());
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
mod upgrade_tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn only_conforming_upgrades_pass() {
        use axum::http::Version;
        let good = [
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        assert_eq!(check_upgrade(Version::HTTP_11, &headers(&good)), Ok(()));
        assert_eq!(
            check_upgrade(Version::HTTP_10, &headers(&good)),
            Err(BadUpgrade::Version)
        );
        for (i, err) in [
            BadUpgrade::NotWebSocket,
            BadUpgrade::Connection,
            BadUpgrade::WsVersion,
            BadUpgrade::Key,
        ]
        .into_iter()
        .enumerate()
        {
            let mut h = good.to_vec();
            h.remove(i);
            assert_eq!(check_upgrade(Version::HTTP_11, &headers(&h)), Err(err));
        }
        for key in ["!!!not base64!!!", "AAAA", ""] {
            let mut h = good.to_vec();
            h[3].1 = key;
            assert_eq!(
                check_upgrade(Version::HTTP_11, &headers(&h)),
                Err(BadUpgrade::Key),
                "{key}"
            );
        }
    }

    #[test]
    fn hosts() {
        let h = |v: &'static str| headers(&[("host", v)]);
        for ok in [
            "127.0.0.1:8000",
            "localhost:8000",
            "[::1]:80",
            "app.localhost",
        ] {
            assert!(host_allowed(&h(ok), &[], true), "{ok}");
        }
        for bad in [
            "rebind.attacker.example:8000",
            "10.0.0.1",
            "localhost.evil.com",
        ] {
            assert!(!host_allowed(&h(bad), &[], true), "{bad}");
        }
        assert!(host_allowed(&h("anything.example"), &[], false));
        let allowed = vec!["chat.example.com".to_owned(), "*.example.org".to_owned()];
        assert!(host_allowed(&h("chat.example.com:443"), &allowed, true));
        assert!(host_allowed(&h("a.example.org"), &allowed, false));
        assert!(!host_allowed(&h("example.org"), &allowed, false));
        assert!(!host_allowed(&h("evilexample.org"), &allowed, false));
        assert!(!host_allowed(&h("other.example.com"), &allowed, false));
        assert!(!host_allowed(&HeaderMap::new(), &allowed, false));
    }
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
