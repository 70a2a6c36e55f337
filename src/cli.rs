//! archeio's command line: Pingora's flags (`-c`, `-t`, `-d`, `-u`) with our own help, our
//! additions to `-t` (`--print`, `--explain`), and the subcommands `sync` and `health`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
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
    /// The gateway's configuration file, for its admin address; default: $ARCHEIO_CONFIG,
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
    flag.or_else(|| {
        std::env::var("ARCHEIO_CONFIG")
            .ok()
            .filter(|p| !p.is_empty())
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
