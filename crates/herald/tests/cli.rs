//! Tests of the built `herald` binary.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_herald");

#[test]
fn check_config_prints_effective_config_and_rejects_bad_files() {
    let dir = std::env::temp_dir().join(format!("herald-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let good = dir.join("good.toml");
    std::fs::File::create(&good)
        .and_then(|mut f| {
            f.write_all(
                b"[connection]\nping_interval = \"5s\"\n[namespaces.chat]\npresence = true\n",
            )
        })
        .expect("write");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ping_interval = \"5s\""), "{text}");
    assert!(text.contains("[namespaces.chat]"), "{text}");

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[connection]\nping_interval = \"soon\"\n").expect("write");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ping_interval"), "{err}");

    let out = Command::new(BIN)
        .args(["check-config"])
        .env("HERALD_SERVER__MAX_CONNECTIONS", "7")
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).contains("max_connections = 7"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dev_mode_refuses_public_addresses() {
    let out = Command::new(BIN)
        .args(["serve", "--dev", "--listen", "0.0.0.0:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("non-loopback"));
}

#[tokio::test]
async fn sigterm_sends_1001_to_every_client_and_exits_zero() {
    let mut child = Command::new(BIN)
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read line");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("address")
        .to_owned();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("connect");
        let first = ws.next().await.expect("frame").expect("ok");
        assert!(first.to_text().expect("text").contains("\"connected\""));
        clients.push(ws);
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    for ws in &mut clients {
        let mut advisory = false;
        let code = loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Text(t))) => {
                    advisory |= t.contains("\"disconnect\"") && t.contains("1001")
                }
                Some(Ok(Message::Close(c))) => break c.map(|c| u16::from(c.code)),
                Some(Ok(_)) => {}
                other => panic!("unexpected {other:?}"),
            }
        };
        assert!(advisory, "disconnect advisory before close");
        assert_eq!(code, Some(1001));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "herald did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status:?}");
}
