//! A throwaway `redis-server` for tests (and local experiments): its own free port on
//! 127.0.0.1 and its own data directory, stopped and removed on drop. Never touches a
//! system Redis.
//!
//! `scripts/test.sh` installs Debian's `redis-server`; when it is missing, starting one
//! panics with a message saying so, so a test can never pass without Redis.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How data survives a restart of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing: a restart starts empty.
    None,
    /// Append-only file fsynced on every write: a restart (even after SIGKILL) keeps
    /// every acknowledged write.
    AofAlways,
}

pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    persistence: Persistence,
    /// Redis Cluster node: its cluster bus port.
    cluster_bus: Option<u16>,
    child: Option<Child>,
}

const BINARY: &str = "redis-server";

impl RedisServer {
    /// Starts a server without persistence.
    pub fn start() -> RedisServer {
        Self::start_with(Persistence::None)
    }

    /// Starts a server; panics (with what to do) if `redis-server` is not installed or
    /// does not come up.
    pub fn start_with(persistence: Persistence) -> RedisServer {
        Self::start_node(persistence, false)
    }

    fn start_node(persistence: Persistence, cluster: bool) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("herald-redis-{}", uuid::Uuid::new_v4()));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        // A free port can be taken by someone else before redis binds it: retry.
        for _ in 0..5 {
            let mut s = RedisServer {
                port: free_port(),
                dir: dir.clone(),
                persistence,
                cluster_bus: cluster.then(free_port),
                child: None,
            };
            if s.launch().is_ok() {
                return s;
            }
        }
        panic!(
            "redis-server did not start; see {}/redis.log",
            dir.display()
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server with SIGKILL (no chance to save anything) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        // The port may linger for a moment after the kill.
        while let Err(e) = self.launch() {
            if Instant::now() > deadline {
                panic!("redis-server did not restart on port {}: {e}", self.port);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn launch(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(BINARY);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"));
        if let Some(bus) = self.cluster_bus {
            cmd.args(["--cluster-enabled", "yes", "--cluster-port"])
                .arg(bus.to_string())
                .arg("--cluster-config-file")
                .arg(self.dir.join("nodes.conf"));
        }
        match self.persistence {
            Persistence::None => cmd.args(["--appendonly", "no"]),
            Persistence::AofAlways => cmd.args(["--appendonly", "yes", "--appendfsync", "always"]),
        };
        let child = match cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed: these tests need a real Redis. \
                 Run scripts/test.sh (it installs it) or `apt-get install redis-server`."
            ),
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if ping(self.port) {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Err(format!("redis-server exited: {status}"));
                }
            }
            if Instant::now() > deadline {
                self.kill();
                return Err("redis-server did not answer PING".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A throwaway Redis Cluster: `n` masters without replicas, every slot assigned, each
/// its own [`RedisServer`] (stopped on drop).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n` (at least 3, Redis's minimum) masters, joins them with
    /// `redis-cli --cluster create` and waits until every node reports
    /// `cluster_state:ok`.
    pub fn start(n: usize) -> RedisCluster {
        Self::start_with_replicas(n, 0)
    }

    /// `masters` masters with `replicas` replicas each (`nodes` holds the masters
    /// first); returns once every node reports `cluster_state:ok` and every replica's
    /// link to its master is up.
    pub fn start_with_replicas(masters: usize, replicas: usize) -> RedisCluster {
        let n = masters * (1 + replicas);
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| RedisServer::start_node(Persistence::None, true))
            .collect();
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for s in &nodes {
            cmd.arg(format!("127.0.0.1:{}", s.port));
        }
        let out = match cmd
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) => o,
            Err(e) => panic!("cannot run redis-cli (package redis-tools): {e}"),
        };
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for s in &nodes {
            while !cluster_ok(s.port) {
                assert!(
                    Instant::now() < deadline,
                    "redis cluster node {} never reached cluster_state:ok",
                    s.port
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if replicas > 0 {
            // Seconds, not the default 15, before a silent master counts as failed and
            // its replica takes over: an unplanned failover fits in a test.
            for s in &nodes {
                cli(s.port, &["CONFIG", "SET", "cluster-node-timeout", "1000"]);
            }
        }
        for s in &nodes {
            while info(s.port, "replication").contains("master_link_status:down") {
                assert!(
                    Instant::now() < deadline,
                    "replica {} never synced with its master",
                    s.port
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    /// Every master's URL, comma-separated (any of them is a valid seed).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl RedisCluster {
    /// Moves hash slot `slot`, with its keys, from the master on `from` to the master on
    /// `to` (the steps of a resharding), and tells every master.
    pub fn move_slot(&self, slot: usize, from: u16, to: u16) {
        let (from_id, to_id) = (
            cli(from, &["CLUSTER", "MYID"]),
            cli(to, &["CLUSTER", "MYID"]),
        );
        let slot = slot.to_string();
        cli(
            to,
            &["CLUSTER", "SETSLOT", &slot, "IMPORTING", from_id.trim()],
        );
        cli(
            from,
            &["CLUSTER", "SETSLOT", &slot, "MIGRATING", to_id.trim()],
        );
        loop {
            let keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "1000"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            cli(from, &args);
        }
        let mut order = vec![to, from];
        order.extend(
            self.nodes
                .iter()
                .map(|n| n.port)
                .filter(|p| *p != to && *p != from),
        );
        for port in order {
            cli(port, &["CLUSTER", "SETSLOT", &slot, "NODE", to_id.trim()]);
        }
    }
}

impl RedisCluster {
    /// A replica of the master on `master` (panics if it has none).
    pub fn replica_of(&self, master: u16) -> u16 {
        let wanted = format!("master_port:{master}\r\n");
        match self
            .nodes
            .iter()
            .map(|n| n.port)
            .find(|p| info(*p, "replication").contains(&wanted))
        {
            Some(p) => p,
            None => panic!("the master on {master} has no replica"),
        }
    }

    /// A manual failover (`CLUSTER FAILOVER`, Redis's planned switch-over: the replica
    /// catches up with its master, then takes over its slots) of the replica on
    /// `replica`; returns once it is a master.
    pub fn fail_over_to(&self, replica: u16) {
        cli(replica, &["CLUSTER", "FAILOVER"]);
        self.wait_master(replica);
    }
}

impl RedisCluster {
    /// Waits until every replica of the master on `master` has everything it wrote.
    pub fn wait_replicated(&self, master: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = info(master, "replication");
            let own = field(&text, "master_repl_offset:");
            let behind = text
                .lines()
                .filter(|l| l.starts_with("slave"))
                .filter_map(|l| l.split(',').find_map(|kv| kv.strip_prefix("offset=")))
                .any(|o| Some(o.trim()) != own.as_deref());
            if own.is_some() && !behind {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the replicas of {master} never caught up: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the node on `port` is a master (an election after its master failed).
    pub fn wait_master(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !info(port, "replication").contains("role:master") {
            assert!(
                Instant::now() < deadline,
                "{port} was not promoted to master"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The value after `prefix` on its line of an INFO text.
fn field(text: &str, prefix: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|v| v.trim().to_string())
}

/// `INFO section` of the node on `port` (empty when it does not answer).
fn info(port: u16, section: &str) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", section])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Runs one `redis-cli` command against the node on `port`; panics on an error reply.
fn cli(port: u16, args: &[&str]) -> String {
    let out = match Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!("cannot run redis-cli: {e}"),
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !text.starts_with("ERR") && !text.starts_with("(error)"),
        "redis-cli -p {port} {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Whether the node on `port` answers `CLUSTER INFO` with `cluster_state:ok`.
fn cluster_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"CLUSTER INFO\r\n").is_err() {
        return false;
    }
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.windows(13).any(|w| w == b"cluster_known") || got.len() > 3000 {
            break;
        }
    }
    String::from_utf8_lossy(&got).contains("cluster_state:ok")
}

fn free_port() -> u16 {
    match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => panic!("no free port: {e}"),
    }
}

/// Whether a Redis answers PING on the port (and is done loading its data).
fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}
