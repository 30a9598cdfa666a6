//! Property test: the inbound frame decoder (frame parsing and reassembly) never panics or
//! hangs on arbitrary bytes from a client; it ends with a message, a close, or an error.

use herald_server::reader::{Inbound, MessageReader, ReadError};
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;

fn drain(bytes: Vec<u8>) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(&bytes).await.expect("write");
        drop(client);
        let mut reader = MessageReader::new(server, 1024);
        let mut control = Vec::new();
        let mut messages = 0;
        loop {
            let next =
                tokio::time::timeout(std::time::Duration::from_secs(5), reader.next(&mut control))
                    .await
                    .expect("reader hung on finite input");
            match next {
                Ok(Inbound::Text(t)) => {
                    assert!(std::str::from_utf8(&t).is_ok(), "text must be valid UTF-8");
                    messages += 1;
                }
                Ok(Inbound::Binary(b)) => {
                    assert!(b.len() <= 1024, "message over the bound");
                    messages += 1;
                }
                Ok(Inbound::Pong | Inbound::Ping(_)) => {}
                Ok(Inbound::Close { .. }) | Err(ReadError::Gone) | Err(ReadError::Protocol(_)) => {
                    return messages;
                }
            }
        }
    })
}

/// A masked client frame header for `len` payload bytes (so random payloads get past masking).
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | (opcode & 0x0f)];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&[7, 7, 7, 7]);
    f.extend(payload.iter().map(|b| b ^ 7));
    f
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        drain(bytes);
    }

    #[test]
    fn arbitrary_frame_sequences(
        frames in proptest::collection::vec(
            (any::<bool>(), 0u8..16, proptest::collection::vec(any::<u8>(), 0..700)),
            0..6,
        )
    ) {
        let bytes: Vec<u8> = frames.iter().flat_map(|(fin, op, p)| frame(*fin, *op, p)).collect();
        drain(bytes);
    }
}
