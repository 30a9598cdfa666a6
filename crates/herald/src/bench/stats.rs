//! Measurements: latency histograms, the server's CPU time and memory from `/proc`, and the
//! final report (a table, or JSON with `--json`).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Nanoseconds since the Unix epoch (the clock embedded in benchmark payloads).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A latency histogram in microseconds (1 µs .. 60 s, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant, valid histogram bounds")
}

/// The server processes (one per node), observed through `/proc/PID`; figures are summed.
#[derive(Debug, Clone)]
pub struct ServerProbe {
    pids: Vec<u32>,
}

impl ServerProbe {
    /// Probe `pids` (`None` when empty; fails when one does not exist).
    pub fn new(pids: &[u32]) -> anyhow::Result<Option<ServerProbe>> {
        if pids.is_empty() {
            return Ok(None);
        }
        let p = ServerProbe {
            pids: pids.to_vec(),
        };
        p.cpu_seconds()?;
        Ok(Some(p))
    }

    /// User + system CPU time so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        self.pids
            .iter()
            .map(|&p| cpu_times(p).map(|(u, s)| u + s))
            .sum()
    }

    /// User CPU time so far, in seconds (the rest of [`ServerProbe::cpu_seconds`] is the
    /// kernel's: on loopback, a server's sends include the receiving side's TCP work).
    pub fn user_cpu_seconds(&self) -> anyhow::Result<f64> {
        self.pids
            .iter()
            .map(|&p| cpu_times(p).map(|(u, _)| u))
            .sum()
    }

    /// Resident set size in bytes.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        self.pids.iter().map(|&p| rss_bytes(p)).sum()
    }
}

/// (user, system) CPU seconds of `pid` so far.
fn cpu_times(pid: u32) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line (11 and 12 after the name).
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Ok((ticks(11) / 100.0, ticks(12) / 100.0)) // USER_HZ is 100 on Linux
}

fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))?;
    Ok(kb * 1024)
}

/// Latency percentiles in milliseconds.
pub fn latency_json(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "samples": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

/// Print a report: JSON, or an aligned two-column table.
pub fn report(title: &str, v: &Value, as_json: bool) {
    if as_json {
        println!("{v}");
        return;
    }
    println!("\n{title}");
    println!("{}", "-".repeat(title.len()));
    print_table(v, "");
}

fn print_table(v: &Value, prefix: &str) {
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if val.is_object() {
                print_table(val, &key);
            } else {
                let shown = match val {
                    Value::Number(n) if n.is_f64() => {
                        format!("{:.3}", n.as_f64().unwrap_or(0.0))
                    }
                    other => other.to_string().trim_matches('"').to_owned(),
                };
                println!("{key:<36} {shown}");
            }
        }
    }
}

/// Seconds as a JSON-friendly float.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A `/metrics` snapshot: `name{labels}` → value (Prometheus text format).
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub std::collections::HashMap<String, f64>);

impl Metrics {
    /// The value of `key` (`name` or `name{label="v"}` exactly as rendered), 0 when absent.
    pub fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    /// Parse the Prometheus text format (comments skipped).
    pub fn parse(text: &str) -> Metrics {
        let mut m = std::collections::HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if let Some((k, v)) = line.rsplit_once(' ')
                && let Ok(v) = v.trim().parse::<f64>()
            {
                m.insert(k.trim().to_owned(), v);
            }
        }
        Metrics(m)
    }
}

/// Fetch `GET /metrics` from `addr` over plain HTTP/1.0 (`None` when unavailable: not Herald,
/// or metrics off).
pub async fn scrape_metrics(addr: std::net::SocketAddr) -> Option<Metrics> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::with_capacity(64 * 1024);
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.")
            .then_some(())
            .filter(|_| head.split(' ').nth(1) == Some("200"))?;
        Some(Metrics::parse(body))
    };
    tokio::time::timeout(Duration::from_secs(3), fetch)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let m = Metrics::parse(
            "# TYPE herald_connections gauge\nherald_connections 12\n\
             herald_close_codes_total{code=\"4003\"} 500\nherald_x_seconds{quantile=\"0.5\"} 0.25\n",
        );
        assert_eq!(m.get("herald_connections"), 12.0);
        assert_eq!(m.get("herald_close_codes_total{code=\"4003\"}"), 500.0);
        assert_eq!(m.get("herald_x_seconds{quantile=\"0.5\"}"), 0.25);
        assert_eq!(m.get("absent"), 0.0);
    }
}
