//! A real `redis-server` for tests: its own loopback port and data directory, append-only file
//! with `appendfsync always` (what docs/counter-redis.md asks of production), no RDB snapshots.
//! It can be killed with SIGKILL and restarted on the same port and directory; it is killed when
//! dropped. No mocks: the Redis store is tested against the server it runs on in production.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;
use tollgate_counter::clock::Stopwatch;

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    /// Arguments added to the defaults (e.g. cluster mode).
    extra: Vec<String>,
    /// Behind a mutex so a test can kill and restart the server while others hold the harness.
    child: Mutex<Option<Child>>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl RedisServer {
    /// Starts a server whose data (appendonlydir/) lives in `dir`.
    pub fn start(dir: &Path) -> RedisServer {
        RedisServer::start_with(dir, &[])
    }

    /// Starts a server with `extra` arguments after the defaults.
    pub fn start_with(dir: &Path, extra: &[&str]) -> RedisServer {
        let server = RedisServer {
            port: free_port(),
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            child: Mutex::new(None),
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&self) {
        let port = self.port.to_string();
        let dir = self.dir.display().to_string();
        let log = self.dir.join("redis.log").display().to_string();
        let child = redis_command("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "always"])
            .args(["--dir", &dir, "--logfile", &log, "--daemonize", "no", "--maxmemory-policy", "noeviction"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts; install it with `bash scripts/setup.sh` or `apt-get install -y redis-server`");
        *self.child() = Some(child);
        self.wait_ready();
    }

    /// Waits (at most 10 s) until the server answers PING, i.e. has loaded its data.
    fn wait_ready(&self) {
        let (waited, limit) = (Stopwatch::start(), Duration::from_secs(10));
        while waited.elapsed() < limit {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING within 10 s; see {}/redis.log", self.port, self.dir.display());
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// SIGKILL: no shutdown hook runs, only what reached the append-only file survives.
    pub fn kill9(&self) {
        if let Some(mut child) = self.child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Graceful stop (SIGTERM: Redis fsyncs the append-only file and exits).
    pub fn stop(&self) {
        if let Some(mut child) = self.child().take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let (waited, limit) = (Stopwatch::start(), Duration::from_secs(10));
            while waited.elapsed() < limit {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the server hangs (connections open, nothing answered) until [`resume`](Self::resume).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = self.child().as_ref() {
            let _ = Command::new("kill").arg(signal).arg(child.id().to_string()).status();
        }
    }

    /// Starts again on the same port and directory (after `kill9` or `stop`).
    pub fn restart(&self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill9();
    }
}

/// A Redis Cluster of `n` primaries (no replicas), each a [`RedisServer`] in its own subdirectory.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

/// A Redis program on the machine's real clock, even when `make test` shifts the tests' clock with
/// faketime (Redis hangs under libfaketime). The store must never mix Redis's time with the
/// injected clock, and a shifted run then checks exactly that.
fn redis_command(program: &str) -> Command {
    let mut command = Command::new(program);
    command.env_remove("LD_PRELOAD").env_remove("FAKETIME").env_remove("FAKETIME_DONT_FAKE_MONOTONIC");
    command
}

impl RedisCluster {
    pub fn start(dir: &Path, n: usize) -> RedisCluster {
        let mut nodes = Vec::new();
        for i in 0..n {
            let node_dir = dir.join(format!("node-{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let nodes_conf = node_dir.join("nodes.conf").display().to_string();
            nodes.push(RedisServer::start_with(
                &node_dir,
                &["--cluster-enabled", "yes", "--cluster-config-file", &nodes_conf, "--cluster-node-timeout", "2000"],
            ));
        }
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let status = redis_command("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { nodes };
        let (waited, limit) = (Stopwatch::start(), Duration::from_secs(15));
        while waited.elapsed() < limit {
            if cluster.nodes.iter().all(|n| n.cluster_ok()) {
                return cluster;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the Redis Cluster did not reach cluster_state:ok within 15 s");
    }
}

impl RedisServer {
    fn cluster_ok(&self) -> bool {
        redis_command("redis-cli")
            .args(["-p", &self.port.to_string(), "cluster", "info"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
    }
}
