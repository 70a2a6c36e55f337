//! archeio's command line: Pingora's flags (`-c`, `-t`, `-d`, `-u`) with our own help, our
//! additions to `-t` (`--print`, `--explain`), and the subcommands `sync` and `health`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use archeio::gateway::lifecycle::reachable;
use clap::{Args, Parser, Subcommand};
use pingora_core::server::configuration::Opt;

/// Shown under `--help`: what is configured outside the file.
const ENVIRONMENT: &str = "\
Environment:
  ARCHEIO_CONFIG               configuration file when -c is not given
  PORT                         registry listener becomes 0.0.0.0:$PORT
  ARCHEIO_ADMIN_PORT           admin listener becomes 0.0.0.0:$ARCHEIO_ADMIN_PORT
  UPSTREAM_REGISTRY_ENDPOINT   the one upstream endpoint
  UPSTREAM_REGISTRY_PATH       path prefix under /v2/ at the upstream
  SIGNATURE_UPSTREAM_ENDPOINT  registry for cosign signature tags
  DEFAULT_AWS_BASE_URL         the default mirror
  RUST_LOG                     log filter (default: info)

Signals: SIGTERM drains (readiness off, serving for grace_period_seconds, then the
requests in flight finish); a second SIGTERM or SIGINT exits at once; SIGQUIT hands the
sockets to a new process started with -u; SIGHUP re-reads the range files and URLs.";

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "archeio",
    version,
    about = "Container-registry redirect gateway: manifests to the upstream registry, blobs to the closest mirror",
    after_help = ENVIRONMENT,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// A subcommand instead of the gateway.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The configuration file (Pingora's keys and the `archeio:` section); default:
    /// $ARCHEIO_CONFIG, else the built-in defaults
    #[arg(short, long, value_name = "FILE")]
    pub conf: Option<String>,
    /// Test the configuration and exit (0 when it would start)
    #[arg(short, long)]
    pub test: bool,
    /// Run in the background (writes pid_file)
    #[arg(short, long)]
    pub daemon: bool,
    /// Take the listening sockets over from a running gateway (which is then sent SIGQUIT)
    #[arg(short, long)]
    pub upgrade: bool,
    /// With -t: print the configuration in effect (environment variables applied, the
    /// region table merged, defaults filled in) as YAML; secrets are never in it
    #[arg(long, requires = "test")]
    pub print: bool,
    /// With -t: what a request would get, e.g. --explain 3.4.12.4 /v2/pause/manifests/3.10
    /// (repeatable)
    #[arg(long, num_args = 2, value_names = ["ADDRESS", "TARGET"], requires = "test")]
    pub explain: Vec<String>,
    /// With -t: --explain for each `ADDRESS TARGET` line of FILE (`#` comments)
    #[arg(long, value_name = "FILE", requires = "test")]
    pub explain_file: Option<PathBuf>,
    /// Accepted and ignored, as by Pingora (`cargo test` may pass it)
    #[arg(long, hide = true)]
    pub nocapture: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fill the mirrors: copy every blob the source registry's manifests name to each
    /// destination that lacks it (see `archeio sync --help`)
    #[command(disable_help_flag = true)]
    Sync {
        /// Options of `archeio sync`
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Probe the admin listener of a running gateway: exit 0 when it answers 200 (for
    /// container HEALTHCHECKs; needs no curl)
    Health(Health),
}

/// `archeio health`.
#[derive(Debug, Args)]
pub struct Health {
    /// The gateway's configuration file, for its admin address; default: in a container
    /// whose PID 1 is the gateway (or the one gateway child of an init), what that gateway
    /// read (its -c, else its ARCHEIO_CONFIG, with its environment), else $ARCHEIO_CONFIG,
    /// else the built-in defaults
    #[arg(short, long, value_name = "FILE")]
    pub conf: Option<String>,
    /// Probe /readyz instead of /healthz
    #[arg(long)]
    pub ready: bool,
    /// Longest wait for the answer, in seconds
    #[arg(long, default_value_t = 2)]
    pub timeout: u64,
}

impl Cli {
    /// Pingora's options. Without the file: Pingora gets its configuration already read
    /// (and would warn that it ignores the path).
    pub fn pingora(&self) -> Opt {
        Opt {
            upgrade: self.upgrade,
            daemon: self.daemon,
            nocapture: self.nocapture,
            test: self.test,
            conf: None,
        }
    }
}

/// The configuration file: `-c`, else `ARCHEIO_CONFIG` (the container image sets it, so
/// that `IMAGE -t` tests the shipped file).
pub fn conf_path(flag: Option<String>) -> Option<String> {
    conf_in(flag, |k| std::env::var(k).ok())
}

fn conf_in(flag: Option<String>, env: impl Fn(&str) -> Option<String>) -> Option<String> {
    flag.or_else(|| env("ARCHEIO_CONFIG").filter(|p| !p.is_empty()))
}

/// The configuration `archeio health` reads the admin address from, and the environment
/// that overrides it (`ARCHEIO_ADMIN_PORT`).
#[derive(PartialEq)]
pub struct HealthTarget {
    pub conf: Option<PathBuf>,
    /// The gateway's environment; `None`: this process's.
    env: Option<HashMap<String, String>>,
}

/// The environment's names only: its values may be secrets (a bucket's key, a password).
impl std::fmt::Debug for HealthTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Option<Vec<&String>> = self.env.as_ref().map(|e| e.keys().collect());
        if let Some(names) = &mut names {
            names.sort();
        }
        f.debug_struct("HealthTarget")
            .field("conf", &self.conf)
            .field("env_names", &names)
            .finish()
    }
}

impl HealthTarget {
    /// A variable of the environment the gateway runs in.
    pub fn var(&self, key: &str) -> Option<String> {
        match &self.env {
            Some(env) => env.get(key).cloned(),
            None => std::env::var(key).ok(),
        }
    }
}

/// What `archeio health` probes. `-c` wins. Without it, a HEALTHCHECK runs in the gateway's
/// container, where the gateway may have been given `-c`, `ARCHEIO_CONFIG` or `-e
/// ARCHEIO_ADMIN_PORT` that this process was not: so when the gateway is PID 1 (or the one
/// gateway child of an init, as with `docker run --init`), its command line, environment and
/// working directory are read from /proc (same user, so readable) and resolved as it
/// resolved them. Otherwise (not in its container, another user): `ARCHEIO_CONFIG`, else
/// the built-in defaults, with this process's environment.
pub fn health_target(flag: Option<String>) -> HealthTarget {
    if flag.is_none() {
        if let Some(target) = running_gateway() {
            return target;
        }
    }
    HealthTarget {
        conf: conf_path(flag).map(PathBuf::from),
        env: None,
    }
}

/// The gateway of this PID namespace, read from /proc: PID 1, else PID 1's one child that is
/// a gateway. A gateway is a process of this same executable not running a subcommand.
fn running_gateway() -> Option<HealthTarget> {
    let me = std::process::id();
    let exe = std::fs::read_link("/proc/self/exe").ok()?;
    let ours = |pid: u32| {
        pid != me && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe)
    };
    let read = |pid: u32| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
        gateway_target(&cmdline, &environ, &cwd)
    };
    if ours(1) {
        return read(1);
    }
    let children = std::fs::read_to_string("/proc/1/task/1/children").ok()?;
    let mut gateways = children
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p| ours(p))
        .filter_map(read);
    let first = gateways.next()?;
    gateways.next().is_none().then_some(first)
}

/// What a gateway started with `cmdline` and `environ` (NUL-separated, as in /proc) in `cwd`
/// reads: its `-c`, else its `ARCHEIO_CONFIG` (relative to `cwd`), and its environment.
/// `None` when the command line is not the gateway's (a subcommand, or not our flags).
pub fn gateway_target(cmdline: &[u8], environ: &[u8], cwd: &Path) -> Option<HealthTarget> {
    let fields = |b: &[u8]| {
        let b = b.strip_suffix(&[0]).unwrap_or(b);
        b.split(|&c| c == 0)
            .map(|f| OsStr::from_bytes(f).to_os_string())
            .collect::<Vec<_>>()
    };
    let cli = Cli::try_parse_from(fields(cmdline)).ok()?;
    if cli.command.is_some() {
        return None;
    }
    let env: HashMap<String, String> = fields(environ)
        .into_iter()
        .filter_map(|kv| kv.into_string().ok())
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let conf = conf_in(cli.conf, |k| env.get(k).cloned()).map(|p| cwd.join(p));
    Some(HealthTarget {
        conf,
        env: Some(env),
    })
}

/// `archeio health`: the exit code.
pub fn health(h: &Health, admin: Option<SocketAddr>) -> i32 {
    let path = if h.ready { "/readyz" } else { "/healthz" };
    let Some(admin) = admin else {
        eprintln!("archeio health: the configuration has no admin_listen address");
        return 1;
    };
    let addr = reachable(admin);
    match probe(addr, path, Duration::from_secs(h.timeout.max(1))) {
        Ok(200) => 0,
        Ok(status) => {
            eprintln!("archeio health: http://{addr}{path} answered {status}");
            1
        }
        Err(e) => {
            eprintln!("archeio health: http://{addr}{path}: {e}");
            1
        }
    }
}

/// `GET path` over HTTP/1.0: the status code.
fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        let n = stream.read(&mut head[len..])?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&head[..len]);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {line:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(cmdline: &str, environ: &str) -> Option<HealthTarget> {
        gateway_target(cmdline.as_bytes(), environ.as_bytes(), Path::new("/srv"))
    }

    const IMAGE_ENV: &str = "PATH=/usr/bin\0ARCHEIO_CONFIG=/etc/archeio/archeio.yaml\0";

    #[test]
    fn the_health_target_is_the_gateways_c_else_its_archeio_config() {
        let t = target("/usr/local/bin/archeio\0-c\0/config/gw.yaml\0", IMAGE_ENV).unwrap();
        assert_eq!(t.conf, Some(PathBuf::from("/config/gw.yaml")));
        let t = target("archeio\0--conf=gw.yaml\0", IMAGE_ENV).unwrap();
        assert_eq!(t.conf, Some(PathBuf::from("/srv/gw.yaml")));
        let t = target("/usr/local/bin/archeio\0", IMAGE_ENV).unwrap();
        assert_eq!(t.conf, Some(PathBuf::from("/etc/archeio/archeio.yaml")));
        let t = target("archeio\0", "ARCHEIO_CONFIG=\0ARCHEIO_ADMIN_PORT=9191\0").unwrap();
        assert_eq!(t.conf, None, "built-in defaults");
        assert_eq!(t.var("ARCHEIO_ADMIN_PORT").as_deref(), Some("9191"));
        assert_eq!(
            t.var("PATH"),
            None,
            "the gateway's environment, not this process's"
        );
    }

    #[test]
    fn a_subcommand_or_another_program_is_not_a_gateway() {
        assert_eq!(target("archeio\0sync\0--help\0", IMAGE_ENV), None);
        assert_eq!(target("archeio\0health\0", IMAGE_ENV), None);
        assert_eq!(target("/sbin/docker-init\0--\0archeio\0", IMAGE_ENV), None);
    }

    #[test]
    fn the_admin_address_follows_the_gateways_file_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("gw.yaml"),
            "archeio:\n  admin_listen: ['127.0.0.1:9300']\n",
        )
        .unwrap();
        let cwd = dir.path();
        let admin = |environ: &str| {
            let t = gateway_target(b"archeio\0-c\0gw.yaml\0", environ.as_bytes(), cwd).unwrap();
            archeio::config::Settings::admin_listen(t.conf.as_deref(), |k| t.var(k)).unwrap()
        };
        assert_eq!(admin(""), ["127.0.0.1:9300".parse().unwrap()]);
        assert_eq!(
            admin("ARCHEIO_ADMIN_PORT=9301\0"),
            ["0.0.0.0:9301".parse().unwrap()]
        );
    }
}
