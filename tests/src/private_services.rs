//! Private PostgreSQL and InfluxDB servers for integration tests that stop and start their services
//! (outage tests).
//!
//! Each server runs on its own free loopback port with its own data directory, so stopping it never
//! affects the shared servers on 5432/8086 that `scripts/services up` runs. Needs root (PostgreSQL is
//! initialised and run as the `postgres` OS user via `runuser`), PostgreSQL's server binaries under
//! `/usr/lib/postgresql/<version>/bin` and `/usr/bin/influxd`: `scripts/services up` installs both.
//!
//! Everything here panics with a message naming the log to read: this is test harness code.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// How long starting or stopping a server may take before the harness gives up.
const WAIT: Duration = Duration::from_secs(30);

/// How long `PrivateInflux::stop` waits after SIGTERM before it sends SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(10);

/// The influxd binary of the Debian package `influxdb`.
const INFLUXD: &str = "/usr/bin/influxd";

/// Polls `done` every 100 ms until it returns true or `WAIT` passes; then panics with `what`.
/// Asserts that `what` succeeded, else fails with its stderr and the tail of the server's `log`.
fn assert_succeeded(out: &Output, what: &str, log: &Path) {
    assert!(
        out.status.success(),
        "{what} failed: {}; read {}:\n{}",
        String::from_utf8_lossy(&out.stderr).trim(),
        log.display(),
        log_tail(log)
    );
}

/// Waits until nothing accepts connections on 127.0.0.1:`port` any more, after `what` (read `log` if not).
fn wait_port_closed(what: &str, port: u16, log: &Path) {
    wait_until(
        || {
            format!(
                "{what} but 127.0.0.1:{port} still accepts connections; read {}",
                log.display()
            )
        },
        || !port_open(port),
    );
}

fn wait_until(what: impl FnOnce() -> String, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        if Instant::now() >= deadline {
            panic!("{} (waited {}s)", what(), WAIT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// True if something accepts TCP connections on 127.0.0.1:`port`.
fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// The last lines of a log file, for panic messages.
fn log_tail(log: &Path) -> String {
    match fs::read_to_string(log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", log.display()),
    }
}

/// Runs `cmd`, panicking with `what` if it cannot be spawned.
fn output(cmd: &mut Command, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", cmd.get_program()))
}

/// Gives every ancestor of `dir` the search (o+x, not read) permission, so the `postgres` user can reach
/// `dir` even inside a 0700 tempdir owned by root.
fn make_traversable(dir: &Path) {
    for ancestor in dir.ancestors().skip(1) {
        if ancestor.as_os_str().is_empty() {
            continue;
        }
        let meta = fs::metadata(ancestor)
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", ancestor.display()));
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            fs::set_permissions(ancestor, fs::Permissions::from_mode(mode | 0o001)).unwrap_or_else(
                |e| {
                    panic!(
                        "cannot chmod o+x {} (the postgres user must traverse it): {e}",
                        ancestor.display()
                    )
                },
            );
        }
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding a `postgres` binary (15 is what we install).
fn pg_bin_dir() -> PathBuf {
    let preferred = Path::new("/usr/lib/postgresql/15/bin");
    if preferred.join("postgres").exists() {
        return preferred.to_owned();
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "no /usr/lib/postgresql/<version>/bin/postgres: is postgresql installed? run scripts/services up"
        ),
    }
}

/// A PostgreSQL server of the test's own: initdb'd as the `postgres` OS user into `dir/data`, on `port`,
/// trust auth, listening on 127.0.0.1 only, unix sockets in `dir` (not /var/run/postgresql), log in
/// `dir/postgres.log`.
pub struct PrivatePostgres {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// Its own directory (owned by `postgres`): `data/` (PGDATA), `postgres.log` and the unix socket.
    pub dir: PathBuf,
    bin: PathBuf,
}

impl PrivatePostgres {
    /// Creates `dir` (owned by `postgres`; its ancestors get o+x), initdb's a cluster into `dir/data` as
    /// the `postgres` OS user and starts it on a free port; returns once it answers a query.
    pub fn start_new(dir: &Path) -> PrivatePostgres {
        let bin = pg_bin_dir();
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let dir = fs::canonicalize(dir)
            .unwrap_or_else(|e| panic!("cannot canonicalize {}: {e}", dir.display()));
        make_traversable(&dir);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", dir.display()));
        let out = output(
            Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(&dir),
            "chown to postgres",
        );
        assert!(
            out.status.success(),
            "chown -R postgres:postgres {} failed: {}; does the postgres OS user exist (is postgresql installed? run scripts/services up) and do the tests run as root?",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );

        let port = free_port();
        let mut pg = PrivatePostgres { port, dir, bin };
        let out = output(
            pg.as_postgres("initdb").arg("-D").arg(pg.data_dir()).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]),
            "initdb",
        );
        assert!(
            out.status.success(),
            "initdb failed: {}{}; is postgresql installed? run scripts/services up (and run the tests as root)",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );

        // Settings go into postgresql.conf (appended: the last one wins), so `start` after `stop` comes
        // back on the same port with the same sockets.
        let conf = pg.data_dir().join("postgresql.conf");
        let socket_dir = pg
            .dir
            .to_str()
            .expect("a UTF-8 dir path")
            .replace('\'', "''");
        let settings = format!(
            "\n# custodian-tests PrivatePostgres\nport = {port}\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{socket_dir}'\nlogging_collector = off\n"
        );
        fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut f| f.write_all(settings.as_bytes()))
            .unwrap_or_else(|e| panic!("cannot append to {}: {e}", conf.display()));

        pg.start();
        pg
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// PGDATA: `dir/data`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The server log: `dir/postgres.log`.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// Stops the server with `pg_ctl stop -m fast`; returns once it has exited and the port is closed.
    /// Does nothing if it is not running.
    pub fn stop(&mut self) {
        if !self.is_running() {
            return;
        }
        let out = output(
            self.pg_ctl()
                .args(["stop", "-m", "fast", "-w", "-t"])
                .arg(WAIT.as_secs().to_string()),
            "pg_ctl stop",
        );
        assert_succeeded(&out, "pg_ctl stop -m fast", &self.log_path());
        wait_port_closed("postgres stopped", self.port, &self.log_path());
    }

    /// Starts the server again (same port and dir); returns once `psql` over TCP answers `select 1`.
    /// Does nothing if it is running.
    pub fn start(&mut self) {
        if self.is_running() {
            return;
        }
        let out = output(
            self.pg_ctl()
                .arg("-l")
                .arg(self.log_path())
                .args(["start", "-w", "-t"])
                .arg(WAIT.as_secs().to_string()),
            "pg_ctl start",
        );
        assert_succeeded(&out, "pg_ctl start", &self.log_path());
        wait_until(
            || {
                format!(
                    "postgres on 127.0.0.1:{} does not answer `select 1`; read {}:\n{}",
                    self.port,
                    self.log_path().display(),
                    log_tail(&self.log_path())
                )
            },
            || self.answers_query(),
        );
    }

    /// True if the postmaster of `dir/data` runs (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        self.pg_ctl()
            .arg("status")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// True if `psql` over TCP on 127.0.0.1:`port` answers `select 1` with `1`.
    fn answers_query(&self) -> bool {
        Command::new(self.bin.join("psql"))
            .args(["-X", "-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", "postgres", "-Atc", "select 1"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "1")
    }

    /// `pg_ctl -D <data>` run as the `postgres` OS user.
    fn pg_ctl(&self) -> Command {
        let mut cmd = self.as_postgres("pg_ctl");
        cmd.arg("-D").arg(self.data_dir());
        cmd
    }

    /// `runuser -u postgres -- <bin>/<program>`, run from `dir` (the test's cwd may be unreadable to postgres).
    fn as_postgres(&self, program: &str) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .current_dir(&self.dir)
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST");
        cmd
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self
                .pg_ctl()
                .args(["stop", "-m", "immediate", "-w", "-t"])
                .arg(WAIT.as_secs().to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// An influxd of the test's own: config `dir/influxd.conf` with meta/data/wal dirs inside `dir`, HTTP on
/// 127.0.0.1:`port`, the RPC service (`bind-address`) on another free loopback port, reporting disabled
/// and everything else off (as `scripts/services` configures the shared one); log in `dir/influxd.log`.
pub struct PrivateInflux {
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    /// Its own directory: `influxd.conf`, `influxd.log`, `meta/`, `data/`, `wal/`.
    pub dir: PathBuf,
    /// Its RPC (backup/restore) port on 127.0.0.1.
    pub rpc_port: u16,
    child: Option<Child>,
}

impl PrivateInflux {
    /// Writes the config into `dir` (created if missing), spawns influxd on free ports and returns once
    /// `GET /ping` answers 204.
    pub fn start_new(dir: &Path) -> PrivateInflux {
        assert!(
            Path::new(INFLUXD).exists(),
            "{INFLUXD} is missing: is influxdb installed? run scripts/services up"
        );
        for sub in ["meta", "data", "wal"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
        }
        let dir = fs::canonicalize(dir)
            .unwrap_or_else(|e| panic!("cannot canonicalize {}: {e}", dir.display()));
        let port = free_port();
        let mut rpc_port = free_port();
        while rpc_port == port {
            rpc_port = free_port();
        }
        let mut influx = PrivateInflux {
            port,
            dir,
            rpc_port,
            child: None,
        };
        let conf = influx.config_path();
        fs::write(&conf, influx.config())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
        influx.start();
        influx
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `dir/influxd.conf`
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("influxd.conf")
    }

    /// `dir/influxd.log` (stdout and stderr of every influxd run, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("influxd.log")
    }

    /// Stops influxd: SIGTERM, up to 10 s for it to exit, then SIGKILL; returns once it has exited and
    /// the HTTP port is closed. Does nothing if it is not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + TERM_GRACE;
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
            }
        }
        child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for influxd to exit: {e}"));
        wait_port_closed("influxd exited", self.port, &self.log_path());
    }

    /// Spawns influxd again (same config and ports); returns once `GET /ping` answers 204.
    /// Does nothing if it is running.
    pub fn start(&mut self) {
        if self.is_running() {
            return;
        }
        let log = self.log_path();
        let open_log = || {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()))
        };
        let child = Command::new(INFLUXD)
            .arg("-config")
            .arg(self.config_path())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(open_log())
            .stderr(open_log())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot spawn {INFLUXD}: {e}; is influxdb installed? run scripts/services up"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if http_ping(self.port) {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                panic!(
                    "influxd exited during startup ({status}); read {}:\n{}",
                    log.display(),
                    log_tail(&log)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "influxd on {} does not answer GET /ping with 204 after {}s; read {}:\n{}",
                    self.url(),
                    WAIT.as_secs(),
                    log.display(),
                    log_tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// True if the influxd this harness spawned has not exited (it may still be starting up).
    pub fn is_running(&self) -> bool {
        let Some(child) = &self.child else {
            return false;
        };
        // An exited but not yet reaped child is a zombie: state `Z` after the `(comm)` field.
        match fs::read_to_string(format!("/proc/{}/stat", child.id())) {
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X"),
            Err(_) => false,
        }
    }

    fn config(&self) -> String {
        let dir = self.dir.to_str().expect("a UTF-8 dir path");
        format!(
            r#"# Written by custodian-tests PrivateInflux: InfluxDB 1.x on loopback only.
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{dir}/meta"

[data]
  dir = "{dir}/data"
  wal-dir = "{dir}/wal"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{port}"
  auth-enabled = false
  log-enabled = false

[[graphite]]
  enabled = false

[[collectd]]
  enabled = false

[[opentsdb]]
  enabled = false

[[udp]]
  enabled = false
"#,
            rpc_port = self.rpc_port,
            port = self.port,
        )
    }
}

impl Drop for PrivateInflux {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// True if `GET /ping` on 127.0.0.1:`port` answers 204 (plain HTTP/1.0 over a std TcpStream).
fn http_ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(3)));
    if stream
        .write_all(b"GET /ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    let status_line = text.lines().next().unwrap_or("");
    status_line.starts_with("HTTP/1.") && status_line.split_whitespace().nth(1) == Some("204")
}
