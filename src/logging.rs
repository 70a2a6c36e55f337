//! The process's log: `text` (env_logger's readable lines) or `json` (one object a line for
//! a log pipeline), chosen by `archeio.log_format`; `RUST_LOG` filters either. Access
//! records are written by the gateway as a message in the chosen form; here they only get
//! the time and level that every line carries.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::config::file::LogFormat;
use crate::config::LogSettings;

/// The target of the access records.
pub const ACCESS_TARGET: &str = "archeio::access";

static JSON: AtomicBool = AtomicBool::new(false);
static CLIENT_ADDRESSES: AtomicBool = AtomicBool::new(true);

/// Installs the logger (once; later calls only [`apply`] their settings).
pub fn init(settings: LogSettings) {
    apply(settings);
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    // The format is looked up per line: a configuration reload may change it.
    builder.format(|buf, record| {
        let target = record.target();
        // Only Pingora's server and listener lines are ever reworded: others skip the look.
        let reworded = (target.starts_with("pingora_core::server") || target == LISTENING)
            .then(|| reword(target, &record.args().to_string()))
            .flatten();
        let (level, message): (log::Level, &dyn std::fmt::Display) = match &reworded {
            // A line moved below the level in effect is not written.
            Some((level, _)) if !log::log_enabled!(target: target, *level) => return Ok(()),
            Some((level, text)) => (*level, text),
            None => (record.level(), record.args()),
        };
        if !json() {
            // env_logger's own layout, written directly: its default formatter passes every
            // line through an indenting writer for multi-line messages, which ours are not.
            let ts = buf.timestamp();
            return writeln!(buf, "[{ts} {level:<5} {target}] {message}");
        }
        let ts = buf.timestamp_millis().to_string();
        let level = level.as_str().to_ascii_lowercase();
        let message = message.to_string();
        let head = serde_json::json!({"ts": ts, "level": level, "target": target});
        let head = head.to_string();
        match message.strip_prefix('{') {
            // An access record is an object already: its fields join the line's.
            Some(fields) if target == ACCESS_TARGET => {
                writeln!(buf, "{},{fields}", &head[..head.len() - 1])
            }
            _ => {
                let msg = serde_json::Value::String(message);
                writeln!(buf, "{},\"msg\":{msg}}}", &head[..head.len() - 1])
            }
        }
    });
    let _ = builder.try_init();
}

/// Pingora's listener module, which logs failed TLS handshakes.
const LISTENING: &str = "pingora_core::services::listening";

/// Pingora's lines that mislead in archeio's setup, in our words and at the right level:
/// a normal `-u` upgrade waits for the old process's sockets (Pingora says error),
/// Pingora's shutdown grace period is archeio's in-flight window, which starts after the
/// drain (Pingora says "grace period starts" as if the signal had just come), and a client's
/// failed TLS handshake is the client's doing (Pingora says error): a connection closed
/// before any handshake (a load balancer's TCP health check, a port scan) at debug, any
/// other failure at info.
fn reword(target: &str, message: &str) -> Option<(log::Level, String)> {
    if target == LISTENING {
        let rest = message.strip_prefix("Downstream handshake error from ")?;
        let level = match rest.contains("handshake eof") {
            true => log::Level::Debug,
            false => log::Level::Info,
        };
        return Some((level, format!("TLS handshake failed with client {rest}")));
    }
    if target.starts_with("pingora_core::server::transfer_fd")
        && message.starts_with("No incoming socket transfer")
    {
        return Some((
            log::Level::Info,
            "upgrade (-u): waiting for the running process to hand over its listening \
             sockets (send it SIGQUIT)"
                .into(),
        ));
    }
    if target == "pingora_core::server" {
        if let Some(rest) = message.strip_prefix("Graceful shutdown: grace period ") {
            let seconds = rest.trim_end_matches(" starts");
            return Some((
                log::Level::Info,
                format!(
                    "listeners closed: requests in flight get up to {seconds} to finish \
                     (graceful_shutdown_timeout_seconds)"
                ),
            ));
        }
    }
    None
}

/// Logs from now on as `settings` say (at start, and on a configuration reload).
pub fn apply(settings: LogSettings) {
    JSON.store(settings.format == LogFormat::Json, Ordering::Relaxed);
    CLIENT_ADDRESSES.store(settings.client_address, Ordering::Relaxed);
}

/// Whether records are JSON.
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Whether access records carry client addresses.
pub fn client_addresses() -> bool {
    CLIENT_ADDRESSES.load(Ordering::Relaxed)
}

/// A request id, written as 16 hex digits: unique in the process and unlikely to repeat
/// across processes (a per-process seed mixed with a counter).
pub fn request_id() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        now ^ u64::from(std::process::id()).rotate_left(32)
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    xxhash_rust::xxh3::xxh3_64_with_seed(&n.to_le_bytes(), seed)
}

/// Appends `text` between double quotes, for a `key="value"` field: `"` and `\` escaped with
/// a backslash, control bytes as `\xNN`, everything else (quotes `'` included) as it is.
pub fn push_quoted(out: &mut String, text: &str) {
    out.reserve(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// reqwest's top-level message ("error sending request") hides the cause; say all of it.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_what_a_parser_needs_and_nothing_else() {
        let quoted = |text: &str| {
            let mut out = String::new();
            push_quoted(&mut out, text);
            out
        };
        assert_eq!(quoted(r#"it's "x" \ y"#), r#""it's \"x\" \\ y""#);
        assert_eq!(quoted("a\nb\u{1}"), r#""a\x0ab\x01""#);
    }

    #[test]
    fn a_client_s_failed_tls_handshake_is_not_an_error_of_the_gateway() {
        let eof = "Downstream handshake error from 127.0.0.1:49062:  TLSHandshakeFailure \
                   context: TLS accept() failed:  TLSHandshakeFailure context: tls connect \
                   error: tls handshake eof";
        let (level, text) = reword(LISTENING, eof).unwrap();
        assert_eq!(level, log::Level::Debug);
        assert!(text.starts_with("TLS handshake failed with client 127.0.0.1:49062"));
        let refused = "Downstream handshake error from 127.0.0.1:1: TLSHandshakeFailure \
                       context: peer sent no certificates";
        assert_eq!(reword(LISTENING, refused).unwrap().0, log::Level::Info);
        assert_eq!(reword(LISTENING, "something else"), None);
    }

    #[test]
    fn request_ids_differ() {
        assert_ne!(request_id(), request_id());
    }
}
