//! The packaging files, checked without a container runtime: the
//! Dockerfile parsed instruction by instruction (and linted by hadolint when
//! installed), the compose and Prometheus files as YAML (through python3's
//! PyYAML), the compose setup's pgtenant.toml through pgtenant's own config
//! loader, the systemd unit (through `systemd-analyze` when present), and
//! the `pgtenant healthcheck` probe against tiny HTTP servers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use pgtenant::config::{Config, LogFormat};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

// ---------------------------------------------------------------- Dockerfile

/// Every instruction Docker's reference defines.
const INSTRUCTIONS: &[&str] = &[
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "MAINTAINER",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
];

/// One Dockerfile instruction: its keyword (upper case), its arguments with
/// continuations joined, and the line it starts on.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
    line: usize,
}

/// Splits a Dockerfile into instructions as Docker reads it: `#` lines are
/// comments (also inside a continued instruction), a trailing `\` continues
/// the instruction on the next line, blank lines are skipped.
fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (body, continued) = match trimmed.strip_suffix('\\') {
            Some(body) => (body.trim_end(), true),
            None => (trimmed, false),
        };
        let (line, mut joined) = current.take().unwrap_or((n + 1, String::new()));
        if !joined.is_empty() {
            joined.push(' ');
        }
        joined.push_str(body);
        if continued {
            current = Some((line, joined));
            continue;
        }
        let (keyword, args) = joined
            .split_once(char::is_whitespace)
            .unwrap_or((&joined, ""));
        assert!(
            !args.contains("<<"),
            "line {line}: heredocs are not understood by this test"
        );
        out.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_string(),
            line,
        });
    }
    assert!(
        current.is_none(),
        "the Dockerfile ends inside a continued line"
    );
    out
}

/// A build stage: its name (if any) and its instructions after FROM.
struct Stage<'a> {
    name: Option<String>,
    base: String,
    body: Vec<&'a Instruction>,
}

fn stages(all: &[Instruction]) -> Vec<Stage<'_>> {
    let mut stages: Vec<Stage<'_>> = Vec::new();
    for ins in all {
        if ins.keyword == "FROM" {
            let words: Vec<&str> = ins
                .args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_lowercase()),
                [_] => None,
                other => panic!("line {}: FROM {other:?}", ins.line),
            };
            stages.push(Stage {
                name,
                base: words[0].to_string(),
                body: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.body.push(ins);
        } else {
            assert_eq!(
                ins.keyword, "ARG",
                "line {}: only ARG may come before the first FROM",
                ins.line
            );
        }
    }
    stages
}

/// The value of a `--flag=value` option among an instruction's arguments.
fn flag<'a>(args: &'a str, name: &str) -> Option<&'a str> {
    args.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("--{name}=")))
}

/// A JSON-form argument list (`["a", "b"]`).
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not an exec-form list ({e}): {args}"))
}

#[test]
fn dockerfile_instructions_are_known() {
    let all = instructions(&read("Dockerfile"));
    assert!(!all.is_empty());
    for ins in &all {
        assert!(
            INSTRUCTIONS.contains(&ins.keyword.as_str()),
            "line {}: unknown instruction {}",
            ins.line,
            ins.keyword
        );
        assert!(
            !ins.args.is_empty(),
            "line {}: {} without arguments",
            ins.line,
            ins.keyword
        );
    }
}

#[test]
fn dockerfile_stages_and_copies() {
    let all = instructions(&read("Dockerfile"));
    let stages = stages(&all);
    assert!(stages.len() >= 2, "a builder and a runtime stage");
    assert!(stages[0].base.starts_with("rust:") && stages[0].base.ends_with("-bookworm"));
    assert_eq!(stages.last().unwrap().base, "debian:bookworm-slim");
    let mut names = BTreeSet::new();
    for (index, stage) in stages.iter().enumerate() {
        for ins in stage
            .body
            .iter()
            .filter(|i| i.keyword == "COPY" || i.keyword == "ADD")
        {
            match flag(&ins.args, "from") {
                Some(from) => {
                    let earlier = match from.parse::<usize>() {
                        Ok(n) => n < index,
                        Err(_) => names.contains(&from.to_lowercase()),
                    };
                    assert!(
                        earlier,
                        "line {}: --from={from} names no earlier stage",
                        ins.line
                    );
                }
                None => {
                    // Sources from the build context must exist and not be ignored.
                    let words: Vec<&str> = ins
                        .args
                        .split_whitespace()
                        .filter(|w| !w.starts_with("--"))
                        .collect();
                    for source in &words[..words.len() - 1] {
                        assert!(
                            repo(source).exists(),
                            "line {}: {source} not in the repository",
                            ins.line
                        );
                        assert!(
                            !ignored(source),
                            "line {}: {source} is excluded by .dockerignore",
                            ins.line
                        );
                    }
                }
            }
        }
        if let Some(name) = &stage.name {
            assert!(names.insert(name.clone()), "stage {name} named twice");
        }
    }
}

/// True when `.dockerignore` excludes `path` (its first component, which is
/// how the entries here are written).
fn ignored(path: &str) -> bool {
    let first = path
        .trim_start_matches("./")
        .split('/')
        .next()
        .unwrap_or("");
    read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .any(|pattern| pattern.trim_end_matches('/') == first)
}

#[test]
fn dockerfile_runtime_stage() {
    let all = instructions(&read("Dockerfile"));
    let stages = stages(&all);
    let runtime = &stages.last().unwrap().body;
    let last = |keyword: &str| {
        runtime
            .iter()
            .rev()
            .find(|i| i.keyword == keyword)
            .unwrap_or_else(|| panic!("the runtime stage has no {keyword}"))
    };

    let user = last("USER").args.split(':').next().unwrap().to_string();
    assert!(
        !matches!(user.as_str(), "root" | "0"),
        "the runtime stage runs as root"
    );
    assert_eq!(user, "pgtenant");
    assert!(
        runtime
            .iter()
            .any(|i| i.keyword == "RUN" && i.args.contains("useradd") && i.args.contains(&user)),
        "user {user} is created"
    );

    let exposed: BTreeSet<&str> = runtime
        .iter()
        .filter(|i| i.keyword == "EXPOSE")
        .flat_map(|i| i.args.split_whitespace())
        .map(|p| p.trim_end_matches("/tcp"))
        .collect();
    assert!(
        exposed.contains("6432") && exposed.contains("9930"),
        "{exposed:?}"
    );

    let health = &last("HEALTHCHECK").args;
    let cmd = health
        .split_once("CMD ")
        .unwrap_or_else(|| panic!("HEALTHCHECK without CMD: {health}"))
        .1;
    let cmd = exec_form(cmd);
    assert_eq!(&cmd[..2], ["pgtenant", "healthcheck"]);
    let probe_port = pgtenant::healthcheck::DEFAULT_ADDR
        .rsplit(':')
        .next()
        .unwrap();
    assert!(exposed.contains(probe_port), "the probed port is exposed");

    let mut command = exec_form(&last("ENTRYPOINT").args);
    command.extend(exec_form(&last("CMD").args));
    assert_eq!(
        command,
        [
            "pgtenant",
            "serve",
            "--config",
            "/etc/pgtenant/pgtenant.toml"
        ]
    );

    let packages = runtime
        .iter()
        .filter(|i| i.keyword == "RUN" && i.args.contains("apt-get install"))
        .map(|i| i.args.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    for package in ["ca-certificates", "postgresql-client"] {
        assert!(packages.contains(package), "{package} is installed");
    }
}

#[test]
fn dockerfile_builder_stubs_every_target() {
    // The dependency layer builds against stub sources; Cargo refuses a
    // manifest whose targets are missing, so every bench needs its stub.
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let dockerfile = read("Dockerfile");
    for bench in manifest["bench"].as_array().into_iter().flatten() {
        let name = bench["name"].as_str().unwrap();
        assert!(
            dockerfile.contains(&format!("benches/{name}.rs")),
            "the Dockerfile's dependency layer lacks a stub for bench {name}"
        );
    }
}

#[test]
fn hadolint_when_installed() {
    let Ok(out) = Command::new("hadolint").arg(repo("Dockerfile")).output() else {
        eprintln!("hadolint is not installed; skipped");
        return;
    };
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// -------------------------------------------------------------- YAML files

/// A YAML file as JSON, through python3's PyYAML (`safe_load`).
fn yaml(path: &str) -> Value {
    let script = "import json, sys, yaml\n\
                  with open(sys.argv[1]) as f:\n    json.dump(yaml.safe_load(f), sys.stdout)\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(repo(path))
        .output()
        .expect("python3 is needed to read YAML");
    assert!(
        out.status.success(),
        "{path} is not valid YAML (or PyYAML is missing: Debian python3-yaml):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The deploy config, as pgtenant loads it.
fn deploy_config() -> Config {
    Config::load(&repo("deploy/pgtenant.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(strings).collect(),
        Value::Object(map) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

#[test]
fn compose_services() {
    let compose = yaml("deploy/docker-compose.yml");
    let services = compose["services"].as_object().expect("services");
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    for wanted in [
        "postgres-system",
        "pgtenant-setup",
        "pgtenant",
        "prometheus",
    ] {
        assert!(
            names.contains(wanted),
            "service {wanted} missing: {names:?}"
        );
    }
    let config = deploy_config();

    let postgres = &services["postgres-system"];
    assert!(postgres["image"]
        .as_str()
        .unwrap()
        .starts_with("postgres:15"));
    let env = &postgres["environment"];
    assert_eq!(env["POSTGRES_USER"], config.backend.admin_user.as_str());
    assert_eq!(
        env["POSTGRES_PASSWORD"],
        config.backend.admin_password.as_str()
    );
    assert_eq!(config.backend.host, "postgres-system");
    assert!(postgres["healthcheck"].is_object());

    let setup = &services["pgtenant-setup"];
    let script = strings(&setup["command"]).join("\n");
    for step in [
        "pgtenant init",
        "pgtenant tenant create acme",
        "pgtenant tenant create globex",
        "pgtenant tenant add-user acme",
        "pgtenant tenant add-user globex",
    ] {
        assert!(script.contains(step), "setup lacks {step:?}:\n{script}");
    }
    assert_eq!(
        setup["depends_on"]["postgres-system"]["condition"],
        "service_healthy"
    );
    assert_eq!(setup["restart"], "no");

    let proxy = &services["pgtenant"];
    assert_eq!(
        proxy["depends_on"]["pgtenant-setup"]["condition"],
        "service_completed_successfully"
    );
    assert!(strings(&proxy["ports"])
        .iter()
        .any(|p| p.ends_with(":6432")));
    assert_eq!(proxy["image"], setup["image"], "one image for both");
    assert_eq!(proxy["build"]["context"], "..");
    assert!(repo("deploy").join("../Dockerfile").exists());

    // Everything referred to is declared, and every mounted file exists.
    let networks: BTreeSet<String> = strings(&compose["networks"]).into_iter().collect();
    let volumes: BTreeSet<String> = strings(&compose["volumes"]).into_iter().collect();
    for (name, service) in services {
        for dep in strings(&service["depends_on"]) {
            assert!(
                names.contains(dep.as_str()),
                "{name} depends on unknown {dep}"
            );
        }
        for net in strings(&service["networks"]) {
            assert!(
                networks.contains(&net),
                "{name} uses undeclared network {net}"
            );
        }
        for mount in strings(&service["volumes"]) {
            let source = mount.split(':').next().unwrap();
            if source.starts_with('.') {
                assert!(
                    repo("deploy").join(source).exists(),
                    "{name} mounts missing {source}"
                );
            } else {
                assert!(
                    volumes.contains(source),
                    "{name} uses undeclared volume {source}"
                );
            }
        }
    }
}

#[test]
fn prometheus_scrapes_pgtenant() {
    let prometheus = yaml("deploy/prometheus.yml");
    let jobs = prometheus["scrape_configs"]
        .as_array()
        .expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|j| j["job_name"] == "pgtenant")
        .expect("a pgtenant job");
    let path = job["metrics_path"].as_str().unwrap_or("/metrics");
    assert_eq!(path, "/metrics");
    let targets = strings(&job["static_configs"][0]["targets"]);
    assert_eq!(targets, ["pgtenant:9930"]);
    let compose = yaml("deploy/docker-compose.yml");
    let services = &compose["services"];
    assert!(services["pgtenant"].is_object(), "the target is a service");
    // Prometheus and pgtenant share a network.
    let theirs: BTreeSet<String> = strings(&services["prometheus"]["networks"])
        .into_iter()
        .collect();
    assert!(strings(&services["pgtenant"]["networks"])
        .iter()
        .any(|n| theirs.contains(n)));
}

#[test]
fn deploy_config_loads() {
    let config = deploy_config();
    assert_eq!(config.listen.addr.to_string(), "0.0.0.0:6432");
    assert_eq!(config.log.format, LogFormat::Json);
    // Where the image installs the migrations.
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains(&format!("COPY sql {}", config.provision.migrations_dir)),
        "migrations_dir {} is not where the image puts sql/",
        config.provision.migrations_dir
    );
    assert_ne!(
        config.backend.tenant_role_secret,
        Config::default().backend.tenant_role_secret,
        "not the built-in demo secret"
    );
}

// ------------------------------------------------------------ systemd unit

/// `section.key` → values of an INI-style unit file (a key may repeat).
fn unit_keys(text: &str) -> Vec<(String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line.split_once('=').expect("key=value");
        out.push((
            format!("{section}.{}", key.trim()),
            value.trim().to_string(),
        ));
    }
    out
}

#[test]
fn systemd_unit_has_what_production_needs() {
    let text = read("deploy/pgtenant.service");
    let keys = unit_keys(&text);
    let get = |key: &str| {
        keys.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{key} missing"))
    };
    assert_eq!(get("Service.Type"), "simple");
    assert_eq!(get("Service.User"), "pgtenant");
    assert!(
        get("Service.ExecStart").ends_with("pgtenant serve --config /etc/pgtenant/pgtenant.toml")
    );
    assert_eq!(get("Service.ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(get("Service.KillSignal"), "SIGTERM");
    let stop: u64 = get("Service.TimeoutStopSec").parse().unwrap();
    assert!(
        stop > 30,
        "longer than listen.shutdown_timeout (30 s by default)"
    );
    assert_eq!(get("Service.LimitNOFILE"), "65536");
    assert_eq!(get("Service.NoNewPrivileges"), "yes");
    assert_eq!(get("Service.ProtectSystem"), "strict");
    assert_eq!(get("Install.WantedBy"), "multi-user.target");
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed; skipped (required keys are checked above)");
        return;
    }
    // verify wants ExecStart's binary to exist: point it at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("pgtenant.service");
    let text = read("deploy/pgtenant.service")
        .replace("/usr/local/bin/pgtenant", env!("CARGO_BIN_EXE_pgtenant"));
    std::fs::write(&unit, text).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Unknown keys are only warned about: any line about the unit fails.
    assert!(!stderr.contains("pgtenant.service"), "{stderr}");

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let Some(level) = report
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for pgtenant.service: "))
    else {
        eprintln!("systemd-analyze security --offline is not supported here; skipped");
        return;
    };
    let exposure: f64 = level.1.split_whitespace().next().unwrap().parse().unwrap();
    assert!(exposure < 3.0, "exposure {exposure}:\n{report}");
}

// ------------------------------------------------------------- healthcheck

/// A one-connection HTTP server answering `response`; returns its address
/// and the request it received.
async fn http_once(response: &'static str) -> (String, tokio::task::JoinHandle<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let served = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 512];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        socket.write_all(response.as_bytes()).await.unwrap();
        socket.shutdown().await.unwrap();
        String::from_utf8_lossy(&request).into_owned()
    });
    (addr, served)
}

/// Runs `pgtenant healthcheck --addr ADDR` with a config path that does not
/// exist (the probe must not need one): (success, stdout, stderr).
async fn healthcheck(addr: &str) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["healthcheck", "--addr", addr])
        .env("PGTENANT_CONFIG", "/nonexistent/pgtenant.toml")
        .output()
        .await
        .unwrap();
    assert!(matches!(out.status.code(), Some(0 | 1)), "{:?}", out.status);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn healthcheck_passes_on_200() {
    let (addr, served) = http_once("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n").await;
    let (ok, out, err) = healthcheck(&addr).await;
    assert!(ok, "{err}");
    assert!(out.contains("200"), "{out}");
    let request = served.await.unwrap();
    assert!(
        request.starts_with("GET /healthz HTTP/1.0\r\n"),
        "{request}"
    );
}

#[tokio::test]
async fn healthcheck_fails_on_503() {
    let (addr, served) =
        http_once("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
    let (ok, _, err) = healthcheck(&addr).await;
    assert!(!ok);
    assert!(err.contains("503 Service Unavailable"), "{err}");
    served.await.unwrap();
}

#[tokio::test]
async fn healthcheck_fails_on_a_closed_port() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let (ok, _, err) = healthcheck(&addr).await;
    assert!(!ok);
    assert!(err.contains("cannot connect"), "{err}");
}
