//! The shared client scenario suite (`clients/scenarios/`, format in its README) run against
//! this client's protocol state. The TypeScript client runs the same files
//! (`clients/js/test/unit/scenarios.test.ts`).

use std::path::{Path, PathBuf};

use serde_json::Map;

use super::*;
use crate::event::State;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/scenarios")
}

type Outcome = oneshot::Receiver<Result<Value, ClientError>>;

struct Runner {
    name: String,
    state: ClientState,
    now: Instant,
    /// Every frame sent (for "reply to the last X"), and those no `sent` step matched yet.
    all_sent: Vec<Value>,
    unmatched: Vec<Value>,
    events: Vec<Value>,
    calls: Vec<(Value, Outcome)>,
    results: Vec<Value>,
    tokens: VecDeque<String>,
    connections: u32,
}

fn settings(refreshable: bool) -> Settings {
    Settings {
        request_timeout: Duration::from_secs(10),
        offline_queue: 100,
        offline_deadline: Duration::from_secs(60),
        backoff: Backoff::default(),
        refreshable,
    }
}

fn normalize(e: Event) -> Option<Value> {
    Some(match e {
        Event::State(State::Connected { resumed, .. }) => {
            json!({"connected": {"resumed": resumed}})
        }
        Event::State(_) => return None,
        Event::Message(m) => {
            json!({"message": {"channel": m.channel, "offset": m.offset, "epoch": m.epoch, "data": m.data}})
        }
        Event::Gap {
            channel,
            reason,
            last_offset,
            resumed_at,
        } => {
            json!({"gap": {"channel": channel, "reason": reason.as_str(), "after": last_offset, "now": resumed_at}})
        }
        Event::SubscribeFailed {
            channel,
            error,
            retry_in,
        } => {
            json!({"subscribe_failed": {"channel": channel, "code": error.code(), "retry": retry_in.is_some()}})
        }
        Event::Subscribed { channel } => json!({ "server_subscribed": channel }),
        Event::Unsubscribed { channel } => json!({ "server_unsubscribed": channel }),
        Event::Join { channel, who } => {
            json!({"join": {"channel": channel, "client_id": who["client_id"]}})
        }
        Event::Leave { channel, who } => {
            json!({"leave": {"channel": channel, "client_id": who["client_id"]}})
        }
    })
}

impl Runner {
    fn new(name: &str, header: &Value) -> Runner {
        let tokens: VecDeque<String> = header["tokens"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Runner {
            name: name.to_owned(),
            state: ClientState::new(settings(!tokens.is_empty())),
            now: Instant::now(),
            all_sent: Vec::new(),
            unmatched: Vec::new(),
            events: Vec::new(),
            calls: Vec::new(),
            results: Vec::new(),
            tokens,
            connections: 0,
        }
    }

    fn fail(&self, step: &Value, why: String) -> ! {
        panic!("scenario {}: step {step}: {why}", self.name)
    }

    /// Carry out the state's outputs the way the driver does.
    fn pump(&mut self) {
        while let Some(o) = self.state.poll_output() {
            match o {
                Output::Send(text) => {
                    let v: Value = serde_json::from_str(&text).expect("the client sends JSON");
                    self.all_sent.push(v.clone());
                    self.unmatched.push(v);
                }
                Output::Event(e) => self.events.extend(normalize(e)),
                Output::FetchToken => {
                    if let Some(t) = self.tokens.pop_front() {
                        self.state.refresh(t, self.now);
                    }
                }
                Output::Drop(why) => {
                    let d = self.state.gave_up(&why);
                    self.ended(d);
                }
            }
        }
        let calls = std::mem::take(&mut self.calls);
        for (label, mut rx) in calls {
            match rx.try_recv() {
                Ok(r) => {
                    let mut l = label;
                    match r {
                        Ok(_) => l["ok"] = json!(true),
                        Err(e) => l["error"] = json!(e.code()),
                    }
                    self.results.push(l);
                }
                Err(oneshot::error::TryRecvError::Empty) => self.calls.push((label, rx)),
                Err(oneshot::error::TryRecvError::Closed) => {
                    panic!("scenario {}: {label} was dropped unanswered", self.name)
                }
            }
        }
    }

    fn ended(&mut self, d: Disconnected) {
        self.events
            .push(json!({"disconnected": {"code": d.code, "reconnect": d.reconnect}}));
        if !d.reconnect {
            self.state.fail_all(&d.reason);
            self.events.push(json!({"closed": true}));
        }
    }

    fn call(&mut self, label: Value, make: impl FnOnce(Reply) -> Cmd) {
        let (tx, rx) = oneshot::channel();
        self.state.command(make(tx), self.now);
        self.calls.push((label, rx));
    }

    fn server_frame(&mut self, frame: Value) {
        self.state.frame(frame.to_string().as_bytes(), self.now);
    }

    fn last_sent_id(&self, step: &Value, kind: &str) -> Value {
        match self.all_sent.iter().rev().find(|f| f["type"] == kind) {
            Some(f) => f["id"].clone(),
            None => self.fail(
                step,
                format!("no {kind} was sent; sent: {:?}", self.all_sent),
            ),
        }
    }

    fn step(&mut self, step: &Value) {
        if let Some(over) = step.get("connect") {
            self.connections += 1;
            self.tokens.pop_front();
            let mut info = json!({
                "client_id": "c1", "session_id": "s1", "user_id": "",
                "resume_token": format!("rt-{}", self.connections), "resume_grace_ms": 30000,
                "ping_interval_ms": 25000, "pong_timeout_ms": 10000,
                "server": "scenario", "protocol": "herald.v1.json",
            });
            for (k, v) in over.as_object().cloned().unwrap_or_default() {
                info[k] = v;
            }
            let info = serde_json::from_value(info).expect("connected payload");
            self.state.opened(info, self.now);
        } else if let Some(app) = step.get("app") {
            if let Some(c) = app["subscribe"].as_str() {
                let channel = c.to_owned();
                self.call(json!({ "subscribe": c }), |tx| Cmd::Subscribe {
                    channel,
                    tx,
                });
            } else if let Some(c) = app["unsubscribe"].as_str() {
                let channel = c.to_owned();
                let (tx, _rx) = oneshot::channel();
                self.state
                    .command(Cmd::Unsubscribe { channel, tx }, self.now);
            } else if let Some(p) = app.get("publish") {
                let (channel, data) = (
                    p["channel"].as_str().unwrap_or("").to_owned(),
                    p["data"].clone(),
                );
                let key = p["key"].as_str().unwrap_or("").to_owned();
                self.call(json!({ "publish": key }), |tx| Cmd::Publish {
                    channel,
                    data,
                    key,
                    tx,
                });
            } else if let Some(p) = app.get("processed") {
                let channel = p["channel"].as_str().unwrap_or("");
                let offset = p["offset"].as_u64().unwrap_or(0);
                self.state.processed(channel, offset, self.now);
            } else {
                self.fail(step, "unknown app action".into());
            }
        } else if let Some(s) = step.get("server") {
            if let Some(kind) = s["reply"].as_str() {
                let id = self.last_sent_id(step, kind);
                self.server_frame(json!({"type": "reply", "id": id, "payload": s["payload"]}));
            } else if let Some(kind) = s["error"].as_str() {
                let id = self.last_sent_id(step, kind);
                let p =
                    json!({"code": s["code"], "message": "scenario", "retryable": s["retryable"]});
                self.server_frame(json!({"type": "error", "id": id, "payload": p}));
            } else if let Some(m) = s.get("message") {
                let mut p = m.clone();
                p["time"] = json!(1);
                p["data"] = json!({ "n": m["offset"] });
                self.server_frame(json!({"type": "message", "payload": p}));
            } else if let Some(kind) = s["push"].as_str() {
                self.server_frame(json!({"type": kind, "payload": s["payload"]}));
            } else if let Some(code) = s["close"].as_u64() {
                let d = self.state.closed(code as u16, "");
                self.ended(d);
            } else if s.get("drop").is_some() {
                let d = self.state.lost("dropped", true);
                self.ended(d);
            } else {
                self.fail(step, "unknown server action".into());
            }
        } else if let Some(ms) = step["advance_ms"].as_u64() {
            let until = self.now + Duration::from_millis(ms);
            // Fire deadlines in order, as the driver's clock would.
            while let Some(at) = self.state.next_deadline().filter(|at| *at <= until) {
                self.now = at.max(self.now);
                self.state.tick(self.now);
                self.pump();
            }
            self.now = until;
            self.state.tick(self.now);
        } else if let Some(want) = step.get("sent") {
            let pos = self.unmatched.iter().position(|f| {
                f["type"] == want["type"] && want.get("payload").is_none_or(|p| &f["payload"] == p)
            });
            match pos {
                Some(i) => drop(self.unmatched.remove(i)),
                None => self.fail(step, format!("not sent; unmatched: {:?}", self.unmatched)),
            }
        } else if step.get("sent_nothing").is_some() {
            if !self.unmatched.is_empty() {
                self.fail(step, format!("also sent: {:?}", self.unmatched));
            }
        } else if let Some(want) = step.get("events") {
            let mut got = std::mem::take(&mut self.events);
            // A message's data is checked only where the step gives it.
            for (i, g) in got.iter_mut().enumerate() {
                let wanted = want
                    .get(i)
                    .is_some_and(|w| w["message"].get("data").is_some());
                if let Some(m) = g.get_mut("message").and_then(Value::as_object_mut)
                    && !wanted
                {
                    m.remove("data");
                }
            }
            let got = Value::Array(got);
            if &got != want {
                self.fail(step, format!("events were {got}"));
            }
        } else if let Some(want) = step.get("results") {
            let got = Value::Array(std::mem::take(&mut self.results));
            if &got != want {
                self.fail(step, format!("results were {got}"));
            }
        } else {
            self.fail(step, "unknown step".into());
        }
        self.pump();
    }
}

fn steps(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("scenario file");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}

#[test]
fn the_shared_scenarios_pass() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("clients/scenarios")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "{files:?}");
    for f in files {
        let all = steps(&f);
        let (header, rest) = all.split_first().expect("a scenario line");
        let name = header["scenario"]
            .as_str()
            .expect("first line names the scenario");
        let mut r = Runner::new(name, header);
        for s in rest {
            r.step(s);
        }
        // Every event a scenario causes is one it expects.
        assert!(
            r.events.is_empty(),
            "scenario {name}: events no step checked: {}",
            Value::Array(r.events.clone())
        );
    }
}

#[test]
fn every_close_code_is_decided_by_the_shared_table() {
    let text = std::fs::read_to_string(dir().join("close-codes.json")).expect("close-codes.json");
    let table: Value = serde_json::from_str(&text).expect("json");
    for row in table["codes"].as_array().expect("codes") {
        let code = row["code"].as_u64().expect("code") as u16;
        let mut r = Runner::new("close codes", &Value::Object(Map::new()));
        r.step(&json!({"connect": {}}));
        r.step(&json!({"server": {"close": code}}));
        let d = r
            .events
            .iter()
            .find_map(|e| e["disconnected"]["reconnect"].as_bool());
        assert_eq!(d, row["reconnect"].as_bool(), "close code {code}");
    }
}
