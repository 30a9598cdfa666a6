//! Reading client messages: fastwebsockets parses frames (masking, opcodes, control frames, close
//! codes); this module reassembles fragments under a size bound and validates UTF-8 as it goes.

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, WebSocketError, WebSocketRead};
use herald_proto::CloseCode;
use herald_proto::frame::{self, OpCode as Op};
use tokio::io::AsyncRead;

/// A complete inbound message or event.
#[derive(Debug)]
pub enum Inbound {
    /// A text message (valid UTF-8).
    Text(Vec<u8>),
    /// A binary message.
    Binary(Vec<u8>),
    /// A pong (liveness only).
    Pong,
    /// The client closed; `clean` for codes 1000/1001 or no code.
    Close {
        /// Whether the client ended the session on purpose.
        clean: bool,
    },
}

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The client broke the protocol: close with this code.
    Protocol(CloseCode),
    /// The socket is gone (EOF, reset, I/O error).
    Gone,
}

struct Partial {
    opcode: OpCode,
    buf: Vec<u8>,
    checked: usize,
}

/// Reads whole messages from the read half of a WebSocket.
pub struct MessageReader<R> {
    ws: WebSocketRead<R>,
    max: usize,
    partial: Option<Partial>,
}

fn op(o: OpCode) -> Op {
    match o {
        OpCode::Close => Op::Close,
        OpCode::Ping => Op::Ping,
        OpCode::Pong => Op::Pong,
        OpCode::Binary => Op::Binary,
        _ => Op::Text,
    }
}

/// Validate newly appended UTF-8, allowing an incomplete sequence at the end.
fn check_utf8(p: &mut Partial, fin: bool) -> Result<(), ReadError> {
    match std::str::from_utf8(&p.buf[p.checked..]) {
        Ok(_) => {
            p.checked = p.buf.len();
            Ok(())
        }
        Err(e) if e.error_len().is_none() && !fin => {
            p.checked += e.valid_up_to();
            Ok(())
        }
        Err(_) => Err(ReadError::Protocol(CloseCode::InvalidPayload)),
    }
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    /// Wrap a read half; `max` bounds a whole message.
    pub fn new(mut ws: WebSocketRead<R>, max: usize) -> Self {
        ws.set_max_message_size(max.saturating_add(1));
        MessageReader {
            ws,
            max,
            partial: None,
        }
    }

    /// Read the next message. Control frames the protocol obliges us to send (pong, close echo)
    /// are appended to `control`, to be written by the writer.
    pub async fn next(&mut self, control: &mut Vec<Bytes>) -> Result<Inbound, ReadError> {
        loop {
            let frame: Frame<'_> = self
                .ws
                .read_frame(&mut |f: Frame<'_>| {
                    control.push(frame::with_payload(op(f.opcode), &f.payload));
                    std::future::ready(Ok::<(), std::convert::Infallible>(()))
                })
                .await
                .map_err(map_err)?;
            match frame.opcode {
                OpCode::Close if frame.payload.len() > 125 => {
                    // Control frames carry at most 125 bytes (RFC 6455 §5.5); drop the echo.
                    control.retain(|f| f.first() != Some(&(0x80 | Op::Close as u8)));
                    return Err(ReadError::Protocol(CloseCode::ProtocolError));
                }
                OpCode::Close => {
                    let code = (frame.payload.len() >= 2)
                        .then(|| u16::from_be_bytes([frame.payload[0], frame.payload[1]]));
                    return Ok(Inbound::Close {
                        clean: matches!(code, None | Some(1000) | Some(1001)),
                    });
                }
                OpCode::Pong => return Ok(Inbound::Pong),
                OpCode::Ping => continue,
                OpCode::Text | OpCode::Binary => {
                    if self.partial.is_some() {
                        return Err(ReadError::Protocol(CloseCode::ProtocolError));
                    }
                    if frame.fin {
                        let data = frame.payload.to_vec();
                        return Ok(if frame.opcode == OpCode::Text {
                            Inbound::Text(data)
                        } else {
                            Inbound::Binary(data)
                        });
                    }
                    let mut p = Partial {
                        opcode: frame.opcode,
                        buf: frame.payload.to_vec(),
                        checked: 0,
                    };
                    if p.opcode == OpCode::Text {
                        check_utf8(&mut p, false)?;
                    }
                    self.partial = Some(p);
                }
                OpCode::Continuation => {
                    let Some(p) = self.partial.as_mut() else {
                        return Err(ReadError::Protocol(CloseCode::ProtocolError));
                    };
                    if p.buf.len() + frame.payload.len() > self.max {
                        return Err(ReadError::Protocol(CloseCode::MessageTooBig));
                    }
                    p.buf.extend_from_slice(&frame.payload);
                    if p.opcode == OpCode::Text {
                        check_utf8(p, frame.fin)?;
                    }
                    if frame.fin
                        && let Some(p) = self.partial.take()
                    {
                        return Ok(if p.opcode == OpCode::Text {
                            Inbound::Text(p.buf)
                        } else {
                            Inbound::Binary(p.buf)
                        });
                    }
                }
            }
        }
    }
}

fn map_err(e: WebSocketError) -> ReadError {
    match e {
        WebSocketError::UnexpectedEOF
        | WebSocketError::IoError(_)
        | WebSocketError::ConnectionClosed => ReadError::Gone,
        WebSocketError::InvalidUTF8 => ReadError::Protocol(CloseCode::InvalidPayload),
        WebSocketError::FrameTooLarge => ReadError::Protocol(CloseCode::MessageTooBig),
        WebSocketError::SendError(_) => ReadError::Gone,
        _ => ReadError::Protocol(CloseCode::ProtocolError),
    }
}
