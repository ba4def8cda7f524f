//! A bare network namespace for the kernel-level tests (`kernel_netns.rs`, `rules_backends.rs`):
//! commands run in it with `ip netns exec`, Rust code in a thread that entered it; deleted on
//! drop, also when the test panics.

use std::fs::File;
use std::process::{Command, Output};

use nix::sched::{setns, CloneFlags};

/// Fails the test with the way to run it unless the process is root.
pub fn require_root(suite: &str) {
    if !nix::unistd::Uid::effective().is_root() {
        panic!(
            "{suite} tests need root (CAP_NET_ADMIN + CAP_SYS_ADMIN) to create network \
             namespaces; run them as root, e.g. `sudo -E cargo test --test {suite}`"
        );
    }
}

/// Runs a program; panics only if it cannot be started.
pub fn run_cmd(prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{prog} {}`: {e}", args.join(" ")))
}

/// A network namespace of this test process (loopback up), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("ftpct-{tag}-{}", std::process::id());
        // A leftover of a crashed earlier run with the same pid: remove it.
        let _ = run_cmd("ip", &["netns", "del", &name]);
        let out = run_cmd("ip", &["netns", "add", &name]);
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns { name };
        ns.sh(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command in the namespace, whatever its exit status.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run_cmd("ip", &full)
    }

    /// Runs a command in the namespace; panics with its output if it fails. Returns stdout.
    pub fn sh(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "in {}: `{}` failed: {}{}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Space-separated convenience form of [`Netns::sh`] (no quoting needed by the callers).
    pub fn shw(&self, line: &str) -> String {
        self.sh(&line.split_whitespace().collect::<Vec<_>>())
    }

    /// Runs `f` in a thread that has entered this namespace (the tools it spawns run there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                let nsfd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                setns(&nsfd, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
                f()
            });
            match h.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = run_cmd("ip", &["netns", "del", &self.name]);
        if !out.status.success() {
            eprintln!(
                "warning: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
