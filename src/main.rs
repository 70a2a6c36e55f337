//! `archeio -c conf/archeio.yaml`: Pingora's command line (`-t` tests the configuration,
//! `-d` daemonizes, `-u` takes over from a running instance), plus `archeio -t --explain
//! ADDRESS TARGET` and `--explain-file FILE`, which print what sample requests would get.

use std::net::SocketAddr;
use std::path::Path;
use std::process::exit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use log::info;
use pingora_core::listeners::TcpSocketOptions;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use pingora_proxy::HttpProxy;

use archeio::config::Settings;
use archeio::gateway::admin::AdminApp;
use archeio::gateway::peer::Peers;
use archeio::gateway::services::{HealthChecks, RangeRefresh};
use archeio::gateway::slow_clients::HeaderDeadline;
use archeio::gateway::{Gateway, UpstreamAccess};
use archeio::metrics;
use archeio::mirror::{MirrorCheck, Mirrors};
use archeio::range_refresh::RangeRefresher;
use archeio::routing::explain::Sample;
use archeio::routing::Routes;
use archeio::sync;
use archeio::upstream::auth::UpstreamAuth;
use archeio::upstream::manifest_cache::ManifestCache;
use archeio::upstream::Upstreams;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if std::env::args().nth(1).as_deref() == Some("sync") {
        exit(run_sync());
    }
    let (args, samples) = explain_args(std::env::args()).unwrap_or_else(|e| {
        eprintln!("archeio: {e}");
        exit(2)
    });
    let mut opt = Opt::parse_from(args);
    if !samples.is_empty() && !opt.test {
        eprintln!("archeio: --explain and --explain-file go with -t (test the configuration)");
        exit(2);
    }
    let conf_path = opt.conf.take();
    let source = conf_path.as_deref().unwrap_or("built-in defaults");

    let settings = Settings::load(conf_path.as_deref().map(Path::new), |k| {
        std::env::var(k).ok()
    })
    .unwrap_or_else(|e| fail(&e));
    let server_conf = server_conf(conf_path.as_deref()).unwrap_or_else(|e| fail(&e));

    let refresher = RangeRefresher::start_up(&settings.ranges)
        .unwrap_or_else(|e| fail(&format!("{source}: archeio.ranges: {e}")));
    if !samples.is_empty() {
        exit(explain(&refresher, &settings.routes, &samples));
    }
    let (v4, v6) = refresher.live().load().prefix_counts();
    metrics::init();
    metrics::set_prefix_counts(v4, v6);
    let ready = Arc::new(AtomicBool::new(false));
    let mirror_check = MirrorCheck::new(&settings.blob_check)
        .unwrap_or_else(|e| fail(&format!("cannot build the mirror check HTTP client: {e}")));

    let mirrors = Mirrors::new(
        mirror_check,
        &settings.routes.policy,
        &settings.signed_mirrors,
    )
    .unwrap_or_else(|e| fail(&format!("{source}: archeio.{e}")));
    let upstreams = Arc::new(
        Upstreams::new(&settings.upstream, Box::new(metrics::set_upstream_healthy))
            .unwrap_or_else(|e| fail(&e)),
    );
    let auth = UpstreamAuth::for_upstream(&settings.upstream, upstreams.token_client());
    let passthrough = settings.passthrough();
    // With one endpoint, redirect mode has nothing to choose: no checks to send.
    let health_checks = (passthrough || upstreams.len() > 1)
        .then(|| background_service("upstream health", HealthChecks(upstreams.clone())));

    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    let gateway = Gateway::new(
        settings.routes,
        refresher.live(),
        mirrors,
        UpstreamAccess {
            endpoints: upstreams,
            peers: Peers::new(&settings.upstream),
            auth,
            manifests: ManifestCache::new(&settings.manifest_cache),
            total_timeout: settings.upstream.timeouts.total,
        },
        settings.client_timeouts,
    );
    let mut proxy = HttpProxy::new(gateway, server.configuration.clone());
    proxy.handle_init_modules();
    let t = &settings.client_timeouts;
    let mut registry = Service::new(
        "archeio registry".to_string(),
        HeaderDeadline::new(proxy, t.idle, t.header, t.write),
    );
    for addr in &settings.listen {
        listen(&mut registry, addr);
    }
    let mut admin = Service::new("archeio admin".to_string(), AdminApp::server(ready.clone()));
    for addr in &settings.admin_listen {
        listen(&mut admin, addr);
    }
    info!(
        "archeio {} from {source}: {} mode, registry on {:?}, admin on {:?}, {v4} IPv4 and {v6} IPv6 prefixes",
        env!("CARGO_PKG_VERSION"),
        if passthrough { "Passthrough" } else { "Redirect" },
        settings.listen,
        settings.admin_listen
    );
    server.add_service(registry);
    server.add_service(admin);
    if let Some(checks) = health_checks {
        server.add_service(checks);
    }
    // Also without files or URLs: SIGHUP must not end the process.
    server.add_service(background_service("cloud ranges", RangeRefresh(refresher)));
    ready.store(true, Ordering::Release);
    server.bootstrap();
    server.run_forever();
}

/// Takes `--explain ADDRESS TARGET` (repeatable) and `--explain-file FILE` (a sample a line,
/// `ADDRESS TARGET`, `#` comments) out of the arguments, for Pingora's parser to read the
/// rest.
fn explain_args(args: impl Iterator<Item = String>) -> Result<(Vec<String>, Vec<Sample>), String> {
    let mut rest = Vec::new();
    let mut samples = Vec::new();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--explain" => {
                let (Some(client), Some(target)) = (args.next(), args.next()) else {
                    return Err("--explain needs ADDRESS TARGET, e.g. --explain 3.4.12.4 /v2/pause/manifests/3.10".into());
                };
                let line = format!("{client} {target}");
                let sample = Sample::parse(&line)
                    .map_err(|e| format!("--explain: {e}"))?
                    .ok_or("--explain needs ADDRESS TARGET")?;
                samples.push(sample);
            }
            "--explain-file" => {
                let path = args.next().ok_or("--explain-file needs a file")?;
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("--explain-file {path}: cannot read: {e}"))?;
                for (n, line) in text.lines().enumerate() {
                    if let Some(sample) =
                        Sample::parse(line).map_err(|e| format!("{path}:{}: {e}", n + 1))?
                    {
                        samples.push(sample);
                    }
                }
            }
            _ => rest.push(arg),
        }
    }
    Ok((rest, samples))
}

/// Prints what each sample would get, after fetching the range URLs as the first refresh
/// would; the exit code.
fn explain(refresher: &RangeRefresher, routes: &Routes, samples: &[Sample]) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("archeio: cannot start the runtime: {e}");
            return 1;
        }
    };
    rt.block_on(refresher.refresh());
    let ranges = refresher.live().load_full();
    let (v4, v6) = ranges.prefix_counts();
    println!(
        "{v4} IPv4 and {v6} IPv6 prefixes; {} policy rules\n",
        routes.policy.rules.len()
    );
    for sample in samples {
        println!(
            "{}",
            archeio::routing::explain::explain(sample, routes, &ranges)
        );
    }
    0
}

/// `archeio sync ...`: fills the mirrors, then exits (no server).
fn run_sync() -> i32 {
    let opts = match sync::Options::parse(std::env::args().skip(2)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("archeio sync: {e}");
            return 2;
        }
    };
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(sync::run(opts)),
        Err(e) => {
            eprintln!("archeio sync: cannot start the runtime: {e}");
            1
        }
    }
}

/// Pingora's own keys from the same file. Parsed here rather than by Pingora so that a bad
/// file is reported by name, without echoing its contents.
fn server_conf(path: Option<&str>) -> Result<ServerConf, String> {
    let Some(path) = path else {
        return ServerConf::new()
            .ok_or_else(|| "cannot build Pingora's default configuration".into());
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{path}: cannot read the file: {e}"))?;
    let conf: ServerConf = serde_yaml::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
    conf.validate().map_err(|e| format!("{path}: {e}"))
}

/// IPv6 listeners are IPv6-only so that `0.0.0.0:P` and `[::]:P` can be listed together.
fn listen<A>(service: &mut Service<A>, addr: &SocketAddr) {
    if addr.is_ipv6() {
        let mut opts = TcpSocketOptions::default();
        opts.ipv6_only = Some(true);
        service.add_tcp_with_settings(&addr.to_string(), opts);
    } else {
        service.add_tcp(&addr.to_string());
    }
}

fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("archeio: configuration error: {e}");
    exit(2);
}
