//! First-message authentication: a connection that brought no token to the handshake (with
//! `auth.anonymous = false`) must send `auth` within `auth_timeout`. Until then only `auth` and
//! `ping` are accepted; replies are written straight to the socket, and no session or queue
//! exists yet.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::Identity;
use herald_proto::envelope::ErrorPayload;
use herald_proto::{CloseCode, Command, ErrorCode, Format, Id};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::reader::{Inbound, MessageReader, ReadError};
use crate::state::AppState;

fn error_frame(format: Format, id: Option<&Id>, code: ErrorCode, message: &str) -> Option<Bytes> {
    herald_proto::encode(
        format,
        herald_proto::ServerKind::Error,
        id,
        &ErrorPayload::new(code, message),
    )
    .ok()
}

pub(crate) async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    frames: &[Bytes],
    timeout: Duration,
) -> bool {
    let write = async {
        for f in frames {
            w.write_all(f).await?;
        }
        w.flush().await
    };
    matches!(tokio::time::timeout(timeout, write).await, Ok(Ok(())))
}

async fn close<W: AsyncWrite + Unpin>(
    w: &mut W,
    format: Format,
    mut frames: Vec<Bytes>,
    code: CloseCode,
) {
    frames.extend(crate::writer::closing_frames(format, code, None));
    metrics::counter!("herald_close_codes_total", "code" => code.code().to_string()).increment(1);
    let _ = send(w, &frames, Duration::from_secs(1)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
}

/// Wait for a successful `auth`: the identity and the command's `id` (the `connected` push
/// answers it). `None` = the connection was closed (failure, timeout, gone).
pub async fn authenticate<S>(
    reader: &mut MessageReader<S>,
    format: Format,
    app: &Arc<AppState>,
) -> Option<(Identity, Option<Id>)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + app.node.config().auth.auth_timeout;
    let write_timeout = app.conn.write_timeout;
    let mut control = Vec::new();
    loop {
        let res = tokio::select! {
            r = reader.next(&mut control) => Some(r),
            _ = tokio::time::sleep_until(deadline) => None,
            _ = app.shutdown.cancelled() => {
                close(reader.get_mut(), format, Vec::new(), CloseCode::GoingAway).await;
                return None;
            }
        };
        let w = reader.get_mut();
        let Some(res) = res else {
            close(w, format, Vec::new(), CloseCode::AuthTimeout).await;
            return None;
        };
        if !control.is_empty() && !send(w, &std::mem::take(&mut control), write_timeout).await {
            return None;
        }
        let bytes = match res {
            Ok(Inbound::Text(b)) if format == Format::Json => b,
            Ok(Inbound::Binary(b)) if format == Format::Msgpack => b,
            Ok(Inbound::Pong) => continue,
            Ok(Inbound::Ping(pong)) => {
                if !send(w, &[pong], write_timeout).await {
                    return None;
                }
                continue;
            }
            Ok(Inbound::Text(_) | Inbound::Binary(_)) => {
                let e = error_frame(format, None, ErrorCode::WrongFrameType, "wrong frame type");
                close(w, format, e.into_iter().collect(), CloseCode::AuthFailed).await;
                return None;
            }
            Ok(Inbound::Close { .. }) | Err(ReadError::Gone) => return None,
            Err(ReadError::Protocol(code)) => {
                close(w, format, Vec::new(), code).await;
                return None;
            }
        };
        let req = match herald_proto::decode(format, &bytes) {
            Ok(r) => r,
            Err(e) => {
                let f = error_frame(format, e.id.as_ref(), e.code, &e.message);
                close(w, format, f.into_iter().collect(), CloseCode::AuthFailed).await;
                return None;
            }
        };
        match req.command {
            Command::Ping => {
                let pong = herald_proto::encode(
                    format,
                    herald_proto::ServerKind::Pong,
                    req.id.as_ref(),
                    &serde_json::Map::new(),
                );
                if !send(w, &pong.into_iter().collect::<Vec<_>>(), write_timeout).await {
                    return None;
                }
            }
            Command::Auth(a) => match app.node.authenticate(a.token.as_deref()) {
                Ok(identity) => return Some((identity, req.id)),
                Err(e) => {
                    metrics::counter!("herald_handshake_rejected_total", "reason" => "auth")
                        .increment(1);
                    let f = error_frame(format, req.id.as_ref(), e.code, &e.message);
                    close(w, format, f.into_iter().collect(), CloseCode::AuthFailed).await;
                    return None;
                }
            },
            other => {
                let msg = format!("`{}` before `auth`: authenticate first", other.kind());
                let f = error_frame(format, req.id.as_ref(), ErrorCode::Unauthorized, &msg);
                close(w, format, f.into_iter().collect(), CloseCode::AuthFailed).await;
                return None;
            }
        }
    }
}
