//! The handshake checks (`herald_server::handshake`): a conforming upgrade, the `Host` and
//! `Origin` allowlists, client IP behind proxies, subprotocol offers and token carriers, on header
//! maps built from fuzz input.
//!
//! Input: two control bytes, then lines (`\n`). A line `?...` is the request's query string,
//! `~...` adds an allowed-origin pattern, `!...` an allowed-host pattern; a line starting with a
//! byte below 0x20 is a value for one of the interesting headers (picked by that byte), any other
//! line is `name: value`.
//!
//! Invariants:
//! - `check_upgrade` only accepts HTTP/1.1 with `Upgrade: websocket`, `Connection: upgrade`,
//!   version 13 and a key of 16 bytes in base64;
//! - `host_allowed` only accepts a `Host` that names an allowed host (or a loopback name on a
//!   loopback listener);
//! - `client_ip` is the peer when the peer is not trusted, and otherwise the peer or an address
//!   written in a `Forwarded`/`X-Forwarded-For` header (it never invents one);
//! - `origin_allowed` follows its contract: a missing Origin gives `allow_missing`; an empty list
//!   means same host only; a `scheme://*.domain` match is a real subdomain of that domain with
//!   only host characters before it (no `@`, `/`, `?` or `#` smuggling);
//! - `offer` only reports formats that were offered and the first `herald.auth.` token;
//! - `token` only takes carriers that are enabled and returns text found in that carrier.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use herald_core::AuthConfig;
use herald_proto::Format;
use herald_server::handshake::{self, TOKEN_SUBPROTOCOL_PREFIX};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

const HEADERS: [HeaderName; 12] = [
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-for"),
    header::ORIGIN,
    header::HOST,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::AUTHORIZATION,
    header::COOKIE,
    header::UPGRADE,
    header::CONNECTION,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_KEY,
    header::USER_AGENT,
];

const PEERS: [&str; 6] = [
    "10.0.0.2:5000",
    "127.0.0.1:40000",
    "[::1]:40000",
    "203.0.113.5:443",
    "192.0.2.1:80",
    "[2001:db8::5]:8000",
];

fn trusted(sel: u8) -> Vec<IpNet> {
    let nets: &[&str] = match sel % 4 {
        0 => &[],
        1 => &["10.0.0.0/8", "127.0.0.0/8", "::1/128"],
        2 => &["0.0.0.0/0", "::/0"],
        _ => &["192.0.2.0/24", "2001:db8::/32", "10.0.0.2/32"],
    };
    nets.iter().map(|n| n.parse().expect("net")).collect()
}

/// Every address that can be read out of the forwarding headers, however it is written.
fn written_ips(headers: &HeaderMap) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for name in [
        header::FORWARDED,
        HeaderName::from_static("x-forwarded-for"),
    ] {
        for v in headers.get_all(&name) {
            let Ok(v) = v.to_str() else { continue };
            for part in v.split(|c: char| matches!(c, ',' | ';' | '=' | '"' | '[' | ']')) {
                let part = part.trim();
                if let Ok(ip) = part.parse() {
                    out.push(ip);
                }
                if let Some((host, _)) = part.rsplit_once(':')
                    && let Ok(ip) = host.parse()
                {
                    out.push(ip);
                }
            }
        }
    }
    out
}

fn found_in(t: &str, headers: &HeaderMap, name: &HeaderName) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains(t)))
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 2 {
        return;
    }
    let (flags, peer_sel) = (input[0], input[1]);
    let mut headers = HeaderMap::new();
    let mut query = String::new();
    let mut allowed = Vec::new();
    let mut hosts = Vec::new();
    for line in input[2..].split(|&b| b == b'\n') {
        match line.first() {
            None => {}
            Some(b'?') => query = String::from_utf8_lossy(&line[1..]).into_owned(),
            Some(b'~') => allowed.push(String::from_utf8_lossy(&line[1..]).into_owned()),
            Some(b'!') => hosts.push(String::from_utf8_lossy(&line[1..]).into_owned()),
            Some(&k) if k < 0x20 => {
                if let Ok(v) = HeaderValue::from_bytes(&line[1..]) {
                    headers.append(HEADERS[usize::from(k) % HEADERS.len()].clone(), v);
                }
            }
            Some(_) => {
                let Some(colon) = line.iter().position(|&b| b == b':') else {
                    continue;
                };
                let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
                if let (Ok(n), Ok(v)) =
                    (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
                {
                    headers.append(n, v);
                }
            }
        }
    }

    // Client IP.
    let peer: SocketAddr = PEERS[usize::from(peer_sel) % PEERS.len()]
        .parse()
        .expect("peer");
    let nets = trusted(peer_sel / 8);
    let ip = handshake::client_ip(peer, &headers, &nets);
    if !nets.iter().any(|n| n.contains(&peer.ip())) {
        assert_eq!(ip, peer.ip(), "an untrusted peer's headers were believed");
    } else if ip != peer.ip() {
        assert!(
            written_ips(&headers).contains(&ip),
            "client_ip {ip} is not in the forwarding headers"
        );
    }

    // Conforming upgrade (RFC 6455 §4.2.1).
    let version = if flags & 32 == 0 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    if handshake::check_upgrade(version, &headers).is_ok() {
        assert_eq!(version, Version::HTTP_11);
        let has = |name: HeaderName, token: &str| {
            headers.get_all(name).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.to_ascii_lowercase().contains(token))
            })
        };
        assert!(has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade"));
        assert_eq!(
            headers
                .get(header::SEC_WEBSOCKET_VERSION)
                .map(|v| v.as_bytes()),
            Some(&b"13"[..])
        );
        let key = headers.get(header::SEC_WEBSOCKET_KEY).expect("key");
        let key = key.as_bytes().trim_ascii();
        assert!(
            key.len() == 24 && key.ends_with(b"=="),
            "key {key:?} is not 16 bytes"
        );
    }

    // Host (DNS rebinding defence).
    let loopback = flags & 64 != 0;
    if handshake::host_allowed(&headers, &hosts, loopback) && (loopback || !hosts.is_empty()) {
        let host = headers.get(header::HOST).expect("an allowed Host exists");
        let host = host
            .to_str()
            .expect("host is text")
            .trim()
            .to_ascii_lowercase();
        if hosts.is_empty() {
            assert!(
                host.contains("localhost") || host.starts_with("127.") || host.starts_with("[::1]"),
                "{host:?} is not a loopback name"
            );
        } else {
            let ok = hosts.iter().any(|p| {
                let p = p.to_ascii_lowercase();
                match p.strip_prefix("*.") {
                    Some(domain) => host.contains(&format!(".{domain}")),
                    None => host.starts_with(&p),
                }
            });
            assert!(ok, "host {host:?} allowed by {hosts:?}");
        }
    }

    // Origin.
    let allow_missing = flags & 1 != 0;
    let ok = handshake::origin_allowed(&headers, &allowed, allow_missing);
    match headers.get(header::ORIGIN) {
        None => assert_eq!(ok, allow_missing),
        Some(o) if ok => {
            let origin = o
                .to_str()
                .expect("an allowed origin is text")
                .trim()
                .to_ascii_lowercase();
            if allowed.is_empty() {
                let host = headers.get(header::HOST).expect("same-host needs Host");
                let host = host.to_str().expect("host").to_ascii_lowercase();
                assert_eq!(
                    origin.split_once("://").map(|(_, h)| h),
                    Some(host.as_str())
                );
            } else if !allowed
                .iter()
                .any(|p| p == "*" || p.to_ascii_lowercase() == origin)
            {
                // Only a wildcard pattern can have matched.
                let good = allowed.iter().any(|p| {
                    let p = p.to_ascii_lowercase();
                    let Some((scheme, domain)) = p.split_once("://*.") else {
                        return false;
                    };
                    let Some(host) = origin.strip_prefix(&format!("{scheme}://")) else {
                        return false;
                    };
                    let Some(sub) = host.strip_suffix(&format!(".{domain}")) else {
                        return false;
                    };
                    !sub.is_empty() && !sub.contains(['@', '/', '?', '#', ':', '\\', ' '])
                });
                assert!(good, "origin {origin:?} allowed by {allowed:?}");
            }
        }
        Some(_) => {}
    }

    // Subprotocols.
    let offer = handshake::offer(&headers);
    if let Some(f) = offer.format {
        assert!(offer.offered);
        assert!(found_in(
            f.subprotocol(),
            &headers,
            &header::SEC_WEBSOCKET_PROTOCOL
        ));
        assert!(matches!(f, Format::Json | Format::Msgpack));
    }
    if let Some(t) = &offer.token {
        let entry = format!("{TOKEN_SUBPROTOCOL_PREFIX}{t}");
        assert!(found_in(&entry, &headers, &header::SEC_WEBSOCKET_PROTOCOL));
        assert!(!t.contains(','), "token {t:?} spans two entries");
    }

    // Token carriers.
    let cfg = AuthConfig {
        header: flags & 2 != 0,
        subprotocol: flags & 4 != 0,
        cookie: (flags & 8 != 0).then(|| "herald_token".to_owned()),
        query_param: (flags & 16 != 0).then(|| "token".to_owned()),
        ..AuthConfig::default()
    };
    let uri: Uri = match format!("/ws?{query}").parse() {
        Ok(u) => u,
        Err(_) => Uri::from_static("/ws"),
    };
    if let Some(t) = handshake::token(&headers, &uri, &offer, &cfg) {
        let from_header = cfg.header && found_in(&t, &headers, &header::AUTHORIZATION);
        let from_protocol = cfg.subprotocol && offer.token.as_deref() == Some(t.as_str());
        let from_cookie = cfg.cookie.is_some() && found_in(&t, &headers, &header::COOKIE);
        let from_query = cfg.query_param.is_some() && uri.query().is_some_and(|q| q.contains(&t));
        assert!(
            from_header || from_protocol || from_cookie || from_query,
            "token {t:?} from no enabled carrier"
        );
    }
});
