//! A real-network blackhole: a fresh network namespace (`ip netns`) whose loopback traffic to a
//! port can be dropped by nftables rules on the input hook — packets vanish, TCP retransmits, no
//! RST and no ICMP, exactly like a partition. Code runs inside it with [`NetNs::run`].

use std::os::fd::AsFd;
use std::process::Command;

const WHAT: &str = "a network namespace with nftables (`ip`, `nft`, root)";

/// A command of the namespace setup failed: which, and what it printed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NetNsError(String);

impl From<String> for NetNsError {
    fn from(s: String) -> Self {
        NetNsError(s)
    }
}

/// A network namespace of the test's own, deleted on drop.
pub struct NetNs {
    name: String,
}

fn output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

fn root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// `ip` and `nft` are there, installing Debian's `iproute2` / `nftables` with apt when one
/// is missing.
fn tools() -> Result<(), String> {
    if !root() {
        return Err("needs root (network namespaces, nftables)".into());
    }
    let missing: Vec<&str> = [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")]
        .into_iter()
        .filter(|(program, flag, _)| output(program, &[flag]).is_err())
        .map(|(_, _, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "installing Debian's {} for the real-network blackhole test",
        missing.join(", ")
    );
    let mut install = vec!["-o", "DPkg::Lock::Timeout=120", "install", "-y", "-q"];
    install.extend(&missing);
    if output("apt-get", &install).is_err() {
        output(
            "apt-get",
            &["-o", "DPkg::Lock::Timeout=120", "update", "-q"],
        )?;
        output("apt-get", &install)?;
    }
    output("ip", &["-V"])?;
    output("nft", &["--version"]).map(|_| ())
}

impl NetNs {
    /// A new namespace with loopback up and an empty `inet herald` table (input hook). `None`
    /// (the test is skipped, with the reason printed) when that is not possible here; under
    /// `CI=true` it panics instead.
    pub fn create() -> Option<NetNs> {
        if let Err(e) = tools() {
            return crate::unavailable(WHAT, e);
        }
        let name = format!("herald-{}", crate::unique());
        if let Err(e) = output("ip", &["netns", "add", &name]) {
            return crate::unavailable(WHAT, e);
        }
        let ns = NetNs { name };
        let setup = ns
            .exec("ip", &["link", "set", "lo", "up"])
            .and_then(|_| ns.exec("nft", &["add", "table", "inet", "herald"]))
            .and_then(|_| {
                ns.exec(
                    "nft",
                    &[
                        "add chain inet herald input { type filter hook input priority 0; policy accept; }",
                    ],
                )
            });
        match setup {
            Ok(_) => Some(ns),
            Err(e) => crate::unavailable(WHAT, e),
        }
    }

    /// Its name (`ip netns exec NAME ...`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run a program inside it; its stdout, or what went wrong.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, NetNsError> {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        Ok(output("ip", &all)?)
    }

    /// Drop every TCP packet to or from `port` (both directions of every connection of a
    /// server listening there, and new SYNs to it).
    pub fn drop_port(&self, port: u16) -> Result<(), NetNsError> {
        let p = port.to_string();
        self.exec(
            "nft",
            &[
                "add", "rule", "inet", "herald", "input", "tcp", "dport", &p, "drop",
            ],
        )?;
        self.exec(
            "nft",
            &[
                "add", "rule", "inet", "herald", "input", "tcp", "sport", &p, "drop",
            ],
        )
        .map(|_| ())
    }

    /// Remove every drop rule.
    pub fn clear_rules(&self) -> Result<(), NetNsError> {
        self.exec("nft", &["flush", "chain", "inet", "herald", "input"])
            .map(|_| ())
    }

    /// The rules now (`nft list table`), for failure messages.
    pub fn rules(&self) -> String {
        self.exec("nft", &["list", "table", "inet", "herald"])
            .unwrap_or_else(|e| e.to_string())
    }

    /// Move the calling thread into the namespace: sockets it creates afterwards (and
    /// threads it spawns) live there.
    pub fn enter(&self) -> std::io::Result<()> {
        let f = std::fs::File::open(format!("/run/netns/{}", self.name))?;
        rustix::thread::move_into_link_name_space(
            f.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(std::io::Error::from)
    }

    /// Run `f` on a new thread inside the namespace and return its result (a panic in `f`
    /// is passed on). Build the tokio runtime inside `f`, so that its threads and sockets
    /// are in the namespace too.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter().expect("enter the network namespace");
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = output("ip", &["netns", "del", &self.name]);
    }
}
