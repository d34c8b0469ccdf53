//! A private, local PostgreSQL cluster: `initdb` + `postgres` on 127.0.0.1,
//! used by the integration tests (throwaway, in a temp dir) and by
//! `pgtenant quickstart` (kept in `.pgtenant/` between runs).
//!
//! The server is started under a small `sh` watchdog whose stdin is a pipe held
//! by this process: when this process exits for any reason (return, panic,
//! SIGKILL) the pipe closes, the watchdog stops the server with a fast shutdown
//! and, if asked, removes the directory. Running as root, the server runs as the
//! `postgres` OS user (else `nobody`). This module knows nothing about tenants;
//! databases and schemas are [`crate::provision::init`]'s business.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{io_err, ProvisionError};

/// How long [`LocalCluster::start`] waits for the server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long dropping a [`LocalCluster`] waits for the server to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The watchdog. Arguments: postgres binary, data dir, log file, remove flag, dir.
/// The reader subshell holds our pipe (fd 3); EOF on it means "stop".
const WATCHDOG: &str = r#"exec 3<&0 0</dev/null
"$1" -D "$2" >>"$3" 2>&1 3<&- &
pid=$!
( read _ <&3; kill -INT "$pid" 2>/dev/null ) &
watcher=$!
exec 3<&-
wait "$pid"
code=$?
kill "$watcher" 2>/dev/null
if [ "$4" = 1 ]; then rm -rf "$5"; fi
exit $code
"#;

/// What [`LocalCluster::start`] should set up.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Directory of the cluster: data in `dir/data`, socket and `server.log` in `dir`.
    /// Created if missing; an existing `dir/data` with `PG_VERSION` is reused.
    pub dir: PathBuf,
    /// TCP port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Superuser created by `initdb`.
    pub superuser: String,
    /// The superuser's password (SCRAM-SHA-256 everywhere, also on the socket).
    pub password: String,
    /// Remove `dir` when the cluster stops (tests); keep it for quickstart.
    pub remove_on_exit: bool,
}

/// A running local PostgreSQL server; stopped when dropped or when this process exits.
#[derive(Debug)]
pub struct LocalCluster {
    /// Always `127.0.0.1`.
    pub host: String,
    /// The TCP port the server listens on.
    pub port: u16,
    /// Directory holding the Unix socket `.s.PGSQL.<port>`.
    pub socket_dir: PathBuf,
    /// The superuser.
    pub superuser: String,
    /// The superuser's password.
    pub password: String,
    dir: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    bin: PathBuf,
    run_as: Option<RunAs>,
    remove_on_exit: bool,
    watchdog: Option<Child>,
}

/// The unprivileged OS user the server runs as when we are root.
#[derive(Debug, Clone)]
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
}

/// True when the PostgreSQL server binaries (`initdb`, `postgres`) are installed.
pub fn server_binaries_available() -> bool {
    server_bin_dir().is_some()
}

/// The bin dir of the newest `/usr/lib/postgresql/<version>/bin`, else the
/// directory `initdb` on PATH really lives in.
pub(crate) fn server_bin_dir() -> Option<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let bin = entry.path().join("bin");
            let version = entry
                .file_name()
                .to_string_lossy()
                .split('.')
                .next()
                .and_then(|v| v.parse::<u32>().ok());
            if let Some(v) = version {
                if bin.join("initdb").is_file()
                    && bin.join("postgres").is_file()
                    && !matches!(&best, Some((b, _)) if *b >= v)
                {
                    best = Some((v, bin));
                }
            }
        }
    }
    if let Some((_, bin)) = best {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|dir| {
        let initdb = std::fs::canonicalize(dir.join("initdb")).ok()?;
        let bin = initdb.parent()?.to_path_buf();
        bin.join("postgres").is_file().then_some(bin)
    })
}

/// The effective uid, from `/proc/self/status`; None when it cannot be read.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// `id -u` / `id -g` of an OS user.
fn lookup_user(name: &str) -> Option<RunAs> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id")
            .arg(flag)
            .arg(name)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some(RunAs {
        name: name.to_string(),
        uid: id("-u")?,
        gid: id("-g")?,
    })
}

/// The user to run the server as: none unless we are root.
fn choose_run_as() -> Result<Option<RunAs>, ProvisionError> {
    if effective_uid() != Some(0) {
        return Ok(None);
    }
    ["postgres", "nobody"]
        .iter()
        .find_map(|n| lookup_user(n))
        .map(Some)
        .ok_or_else(|| ProvisionError::Cluster("running as root, but neither the `postgres` nor the `nobody` OS user exists to run PostgreSQL as".into()))
}

impl LocalCluster {
    /// Initialises (if needed) and starts the cluster, waiting until it accepts
    /// connections. Blocks for up to 30 s; from async code, call it through
    /// `tokio::task::spawn_blocking`.
    pub fn start(opts: ClusterOptions) -> Result<LocalCluster, ProvisionError> {
        let bin = server_bin_dir().ok_or_else(|| {
            ProvisionError::Cluster("PostgreSQL server binaries (initdb, postgres) not found on PATH or in /usr/lib/postgresql/*/bin; install them (apt-get install postgresql)".into())
        })?;
        std::fs::create_dir_all(&opts.dir)
            .map_err(io_err(format!("creating {}", opts.dir.display())))?;
        let dir = std::fs::canonicalize(&opts.dir)
            .map_err(io_err(format!("resolving {}", opts.dir.display())))?;
        let run_as = choose_run_as()?;
        let data_dir = dir.join("data");
        let mut cluster = LocalCluster {
            host: "127.0.0.1".into(),
            port: 0,
            socket_dir: dir.clone(),
            superuser: opts.superuser.clone(),
            password: opts.password.clone(),
            log_path: dir.join("server.log"),
            dir,
            data_dir,
            bin,
            run_as,
            remove_on_exit: opts.remove_on_exit,
            watchdog: None,
        };
        if let Some(user) = &cluster.run_as {
            chown(user, &[&cluster.dir], true)?;
            let ok = cluster
                .command("sh")
                .args([
                    "-c",
                    "test -d \"$1\" && test -w \"$1\" && test -x \"$1\"",
                    "sh",
                ])
                .arg(&cluster.dir)
                .status()
                .map_err(io_err("running sh"))?;
            if !ok.success() {
                return Err(ProvisionError::Cluster(format!(
                    "PostgreSQL must run as the OS user `{}` (we are root), but it cannot reach {}: make every parent directory traversable (chmod o+x) or choose a directory under /tmp",
                    user.name,
                    cluster.dir.display()
                )));
            }
        }
        if !cluster.data_dir.join("PG_VERSION").is_file() {
            cluster.initdb()?;
        }
        cluster.write_hba()?;
        let attempts = if opts.port == 0 { 3 } else { 1 };
        for attempt in 1..=attempts {
            let port = if opts.port == 0 {
                free_port()?
            } else {
                opts.port
            };
            match cluster.launch(port) {
                Ok(()) => return Ok(cluster),
                Err(Launch::PortTaken(msg)) if attempt < attempts => {
                    tracing::debug!(port, "port taken, retrying: {msg}");
                }
                Err(Launch::PortTaken(msg)) | Err(Launch::Failed(msg)) => {
                    return Err(ProvisionError::Cluster(msg))
                }
            }
        }
        Err(ProvisionError::Cluster("could not start PostgreSQL".into()))
    }

    /// A libpq connection string for `dbname` over TCP, with the superuser's credentials.
    pub fn conninfo(&self, dbname: &str) -> String {
        let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        format!(
            "host={} port={} user={} password={} dbname={}",
            self.host,
            self.port,
            q(&self.superuser),
            q(&self.password),
            q(dbname)
        )
    }

    /// Stops the server and starts it again on the same port with its data
    /// (for tests of clients riding out a PostgreSQL restart). Blocks like
    /// [`LocalCluster::start`]. Refused for a cluster that removes its
    /// directory when it stops.
    pub fn restart(&mut self) -> Result<(), ProvisionError> {
        if self.remove_on_exit {
            return Err(ProvisionError::Cluster(
                "a cluster that removes its directory on stop cannot be restarted".into(),
            ));
        }
        self.stop();
        self.launch(self.port).map_err(|e| match e {
            Launch::PortTaken(msg) | Launch::Failed(msg) => ProvisionError::Cluster(msg),
        })
    }

    /// The data directory (`dir/data`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The postmaster's process id, from `postmaster.pid`, while it runs.
    pub fn server_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// A command run as the server's OS user, in the cluster directory.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.dir);
        if let Some(user) = &self.run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd
    }

    /// Runs initdb with a temporary password file.
    fn initdb(&self) -> Result<(), ProvisionError> {
        let pwfile = self.dir.join(".pwfile");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&pwfile)
            .map_err(io_err(format!("writing {}", pwfile.display())))?;
        writeln!(f, "{}", self.password)
            .map_err(io_err(format!("writing {}", pwfile.display())))?;
        drop(f);
        if let Some(user) = &self.run_as {
            chown(user, &[&pwfile], false)?;
        }
        let out = self
            .command(self.bin.join("initdb"))
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-U")
            .arg(&self.superuser)
            .arg("--auth=scram-sha-256")
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C", "--no-sync"])
            .output();
        let _ = std::fs::remove_file(&pwfile);
        let out = out.map_err(io_err("running initdb"))?;
        if !out.status.success() {
            return Err(ProvisionError::Cluster(format!(
                "initdb failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        // Our settings live in pgtenant.conf, rewritten on every start.
        let conf = self.data_dir.join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(io_err(format!("opening {}", conf.display())))?;
        writeln!(
            f,
            "\ninclude_if_exists = 'pgtenant.conf'  # written by pgtenant on every start"
        )
        .map_err(io_err(format!("writing {}", conf.display())))?;
        Ok(())
    }

    /// Password logins only, local socket and loopback.
    fn write_hba(&self) -> Result<(), ProvisionError> {
        let hba = "# Written by pgtenant.\n\
                   local all all scram-sha-256\n\
                   host  all all 127.0.0.1/32 scram-sha-256\n\
                   host  all all ::1/128 scram-sha-256\n";
        self.write_owned(&self.data_dir.join("pg_hba.conf"), hba)
    }

    /// Writes a file and hands it to the server's OS user.
    fn write_owned(&self, path: &Path, text: &str) -> Result<(), ProvisionError> {
        std::fs::write(path, text).map_err(io_err(format!("writing {}", path.display())))?;
        if let Some(user) = &self.run_as {
            chown(user, &[path], false)?;
        }
        Ok(())
    }

    /// Writes pgtenant.conf for `port`, starts the watchdog and waits until ready.
    fn launch(&mut self, port: u16) -> Result<(), Launch> {
        self.port = port;
        let socket = self.dir.join(format!(".s.PGSQL.{port}"));
        let socket_dirs = if socket.as_os_str().len() < 100 {
            self.dir.display().to_string()
        } else {
            tracing::warn!(dir = %self.dir.display(), "path too long for a Unix socket; TCP only");
            String::new()
        };
        let conf = format!(
            "# Written by pgtenant on every start; a throwaway/local cluster.\n\
             listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             max_connections = 400\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n",
            socket_dirs.replace('\'', "''")
        );
        self.write_owned(&self.data_dir.join("pgtenant.conf"), &conf)
            .map_err(|e| Launch::Failed(e.to_string()))?;
        let log_start = std::fs::metadata(&self.log_path)
            .map(|m| m.len())
            .unwrap_or(0);
        let child = self
            .command("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("pgtenant-watchdog")
            .arg(self.bin.join("postgres"))
            .arg(&self.data_dir)
            .arg(&self.log_path)
            .arg(if self.remove_on_exit { "1" } else { "0" })
            .arg(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| Launch::Failed(format!("starting the PostgreSQL watchdog (sh): {e}")))?;
        self.watchdog = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.watchdog.as_mut().map(|c| c.try_wait()) {
                self.watchdog = None;
                let log = self.log_since(log_start);
                let msg = format!(
                    "PostgreSQL exited during startup ({status}); server log:\n{}",
                    tail(&log, 25)
                );
                return Err(if log.contains("Address already in use") {
                    Launch::PortTaken(msg)
                } else {
                    Launch::Failed(msg)
                });
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-t", "1", "-h", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                tracing::info!(port, dir = %self.dir.display(), "local PostgreSQL is up");
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(Launch::Failed(format!(
                    "PostgreSQL did not accept connections on 127.0.0.1:{port} within {}s; server log:\n{}",
                    START_TIMEOUT.as_secs(),
                    tail(&self.log_since(log_start), 25)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server log written since byte `from`.
    fn log_since(&self, from: u64) -> String {
        let bytes = std::fs::read(&self.log_path).unwrap_or_default();
        let from = usize::try_from(from).unwrap_or(0).min(bytes.len());
        String::from_utf8_lossy(&bytes[from..]).into_owned()
    }

    /// Closes the watchdog's pipe (fast shutdown) and waits for it; falls back
    /// to `pg_ctl stop -m immediate` if it takes too long.
    fn stop(&mut self) {
        let Some(mut child) = self.watchdog.take() else {
            return;
        };
        drop(child.stdin.take());
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    tracing::warn!(dir = %self.dir.display(), "PostgreSQL did not stop in time; stopping it immediately");
                    let _ = self
                        .command(self.bin.join("pg_ctl"))
                        .args(["stop", "-m", "immediate", "-D"])
                        .arg(&self.data_dir)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        if self.remove_on_exit && self.dir.exists() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why one start attempt failed.
enum Launch {
    /// The port was taken between picking and binding it; worth retrying.
    PortTaken(String),
    /// Anything else.
    Failed(String),
}

/// A port that was free a moment ago.
fn free_port() -> Result<u16, ProvisionError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io_err("finding a free port on 127.0.0.1"))
}

/// `chown [-R] uid:gid paths...`.
fn chown(user: &RunAs, paths: &[&Path], recursive: bool) -> Result<(), ProvisionError> {
    let mut cmd = Command::new("chown");
    if recursive {
        cmd.arg("-R");
    }
    let status = cmd
        .arg(format!("{}:{}", user.uid, user.gid))
        .args(paths)
        .status()
        .map_err(io_err("running chown"))?;
    if status.success() {
        Ok(())
    } else {
        Err(ProvisionError::Cluster(format!(
            "chown to {} failed for {paths:?}",
            user.name
        )))
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
