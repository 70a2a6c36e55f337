//! `archeio -c conf/archeio.yaml`: the gateway, with Pingora's flags (`-t` tests the
//! configuration, `-d` daemonizes, `-u` takes over from a running instance) under our own
//! help; `-t --print` and `-t --explain` show what the configuration does; `archeio sync`
//! fills the mirrors and `archeio health` probes a running gateway (see `cli`).

mod cli;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::exit;
use std::sync::{Arc, Mutex};

use clap::Parser;
use log::{info, warn};
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::TcpSocketOptions;
use pingora_core::protocols::http::v2::server::H2Options;
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use pingora_proxy::HttpProxy;

use archeio::config::file::LogFormat;
use archeio::config::{dual_stack, LogSettings, Settings};
use archeio::gateway::admin::AdminApp;
use archeio::gateway::generation::{build, config_hash, ConfigReload, Running, Shared};
use archeio::gateway::lifecycle::{probe_binds, Lifecycle, ListenCheck, Signals};
use archeio::gateway::proxy_protocol::Refusal;
use archeio::gateway::server_conf::ServerSettings;
use archeio::gateway::services::{
    GeoRefresh, HealthChecks, MirrorProbes, RangeRefresh, Reload, SecretFiles, TlsCertificates,
};
use archeio::gateway::slow_clients::HeaderDeadline;
use archeio::gateway::tls::{Certificates, Resolver};
use archeio::gateway::LiveGateway;
use archeio::geo_refresh::GeoRefresher;
use archeio::live::Live;
use archeio::logging;
use archeio::metrics;
use archeio::range_refresh::RangeRefresher;
use archeio::routing::client_addr::ClientAddrError;
use archeio::routing::explain::Sample;
use archeio::routing::{Places, Route, Routes};
use archeio::sync;
use archeio::upstream::Upstreams;
use cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    if cli.command.is_some() {
        // The gateway's own format comes from its configuration, read below.
        logging::init(LogSettings {
            format: LogFormat::Text,
            client_address: true,
        });
    }
    match &cli.command {
        Some(Command::Sync { args }) => exit(run_sync(args)),
        Some(Command::Health(h)) => {
            let target = cli::health_target(h.conf.clone());
            let admin = Settings::admin_listen(target.conf.as_deref(), |k| target.var(k))
                .unwrap_or_else(|e| fail(&e));
            exit(cli::health(h, admin.first().copied()));
        }
        None => {}
    }
    let samples = explain_samples(&cli).unwrap_or_else(|e| {
        eprintln!("archeio: {e}");
        exit(2)
    });
    let conf_path = cli::conf_path(cli.conf.clone());
    let source = conf_path
        .as_deref()
        .unwrap_or("built-in defaults")
        .to_string();
    let text = conf_path.as_deref().map(|p| {
        std::fs::read_to_string(p)
            .unwrap_or_else(|e| fail(&format!("{p}: cannot read the file: {e}")))
    });
    let server_settings =
        ServerSettings::load(text.as_deref(), &source).unwrap_or_else(|e| fail(&e));
    let (effective, settings) =
        Settings::load_effective(conf_path.as_deref().map(Path::new), |k| {
            std::env::var(k).ok()
        })
        .unwrap_or_else(|e| fail(&e));
    if cli.print {
        match print_config(&server_settings, &effective) {
            Ok(yaml) => print!("{yaml}"),
            Err(e) => fail(&e),
        }
        exit(0);
    }
    logging::init(settings.log);
    // The advice about forwarding headers is for -t: the shipped configuration would give
    // it at every start.
    let advice = cli.test.then(|| unread_forwarding(&settings)).flatten();
    for warning in settings.warnings.iter().cloned().chain(advice) {
        match cli.test {
            true => eprintln!("archeio: warning: {source}: {warning}"),
            false => warn!("{source}: {warning}"),
        }
    }

    let refresher = Arc::new(
        RangeRefresher::start_up(&settings.ranges)
            .unwrap_or_else(|e| fail(&format!("{source}: archeio.ranges: {e}"))),
    );
    let geo = Arc::new(
        GeoRefresher::start_up(&settings.geo)
            .unwrap_or_else(|e| fail(&format!("{source}: archeio.geo: {e}"))),
    );
    if !samples.is_empty() {
        exit(explain(&refresher, &geo, &settings.routes, &samples));
    }
    let (v4, v6) = refresher.live().load().prefix_counts();
    metrics::init(&metrics::KnownLabels {
        routes: &Route::ALL.map(Route::as_str),
        redirect_targets: &["upstream", "signature_upstream", "default_mirror", "page"],
        client_address_refusals: &client_address_refusals(),
    });
    metrics::set_prefix_counts(v4, v6);
    let passthrough = settings.passthrough();
    let upstreams = Arc::new(Live::new(Arc::new(
        Upstreams::new(
            &settings.upstream,
            passthrough,
            Box::new(metrics::set_upstream_healthy),
        )
        .unwrap_or_else(|e| fail(&e)),
    )));
    let ranges = Arc::new(Live::new(refresher));
    let geo = Arc::new(Live::new(geo));
    let lifecycle = Arc::new(Lifecycle::new(ranges.clone()));

    let addresses = listener_keys(
        &settings.listen,
        &settings.tls.listen,
        &settings.admin_listen,
    );
    let certificates = (!settings.tls.listen.is_empty()).then(|| {
        Arc::new(
            Certificates::load(&settings.tls.certificates)
                .unwrap_or_else(|e| fail(&format!("{source}: archeio.{e}"))),
        )
    });
    let all: Vec<SocketAddr> = addresses.iter().map(|(_, a)| *a).collect();
    if !cli.upgrade {
        // A new process under -u gets the sockets from the old one instead. -t binds too,
        // as nginx -t does: an address not on this host fails the test, not the start.
        probe_binds(&addresses, |a| dual_stack(a, &all), cli.test).unwrap_or_else(|e| {
            eprintln!("archeio: {source}: {e}");
            exit(1)
        });
    }
    let drain = server_settings.drain;
    let upgrade_sock = server_settings.conf.upgrade_sock.clone();
    let mut server = Server::new_with_opt_and_conf(cli.pingora(), server_settings.into_pingora());
    let shared = Shared {
        ranges: ranges.clone(),
        geo: geo.clone(),
        upstreams: upstreams.clone(),
        lifecycle: lifecycle.clone(),
        certificates: certificates.clone(),
    };
    let gateway = build(
        &settings,
        &ranges.load(),
        &geo.load(),
        &upstreams.load(),
        &lifecycle,
    )
    .unwrap_or_else(|e| fail(&format!("{source}: {e}")));
    metrics::set_config_loaded(&config_hash(&effective));
    let live = LiveGateway::new(gateway);
    let reload = ConfigReload {
        live: live.clone(),
        shared,
        path: conf_path.as_deref().map(PathBuf::from),
        source: source.clone(),
        running: Mutex::new(Running {
            server: ServerSettings::load(text.as_deref(), &source).unwrap_or_else(|e| fail(&e)),
            archeio: effective,
        }),
        seen: Mutex::new(text.clone().map(String::into_bytes).unwrap_or_default()),
    };
    let mut proxy = HttpProxy::new(live.clone(), server.configuration.clone());
    proxy.handle_init_modules();
    proxy.h2_options = Some(h2_limits());
    // An HTTP/2 connection without a stream is closed after the idle time; read at start
    // (Pingora reads it per connection from the proxy, which a reload does not replace).
    let mut server_options = HttpServerOptions::default();
    server_options.h2_idle_timeout = Some(settings.client_timeouts.idle);
    proxy.server_options = Some(server_options);
    let mut registry = Service::new(
        "archeio registry".to_string(),
        HeaderDeadline::new(proxy, live.connection_rules()),
    );
    for addr in &settings.listen {
        listen(&mut registry, addr, dual_stack(addr, &all));
    }
    if let Some(certificates) = &certificates {
        for addr in &settings.tls.listen {
            let mut tls = TlsSettings::intermediate("", "")
                .unwrap_or_else(|e| fail(&format!("cannot set up TLS: {e}")));
            tls.set_cert_resolver(Arc::new(Resolver(certificates.clone())));
            tls.enable_h2();
            let mut opts = TcpSocketOptions::default();
            opts.ipv6_only = addr.is_ipv6().then(|| !dual_stack(addr, &all));
            registry.add_tls_with_settings(&addr.to_string(), Some(opts), tls);
        }
    }
    let mut admin = Service::new(
        "archeio admin".to_string(),
        AdminApp::server(lifecycle.clone()),
    );
    for addr in &settings.admin_listen {
        listen(&mut admin, addr, dual_stack(addr, &all));
    }
    info!(
        "archeio {} from {source}: {} mode, registry on {:?} (TLS: {:?}), admin on {:?}, {v4} IPv4 and {v6} IPv6 prefixes",
        env!("CARGO_PKG_VERSION"),
        if passthrough { "Passthrough" } else { "Redirect" },
        settings.listen,
        settings.tls.listen,
        settings.admin_listen
    );
    server.add_service(registry);
    server.add_service(admin);
    server.add_service(background_service(
        "upstream health",
        HealthChecks(upstreams),
    ));
    // Also without files or URLs: SIGHUP must not end the process.
    server.add_service(background_service("cloud ranges", RangeRefresh(ranges)));
    server.add_service(background_service("geo databases", GeoRefresh(geo)));
    server.add_service(background_service(
        "mirror health",
        MirrorProbes(live.clone()),
    ));
    server.add_service(background_service("secret files", SecretFiles(live)));
    server.add_service(background_service(
        "configuration",
        Reload(Arc::new(reload)),
    ));
    if let Some(certificates) = certificates {
        server.add_service(background_service(
            "TLS certificates",
            TlsCertificates(certificates),
        ));
    }
    server.add_service(background_service(
        "listen check",
        ListenCheck {
            lifecycle: lifecycle.clone(),
            addresses,
        },
    ));
    server.bootstrap();
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            lifecycle,
            drain,
            upgrade_sock,
        }),
    });
    exit(0);
}

/// Each listener address with the key that lists it, for errors.
fn listener_keys(
    listen: &[SocketAddr],
    tls: &[SocketAddr],
    admin: &[SocketAddr],
) -> Vec<(String, SocketAddr)> {
    let keyed = |key: &str, list: &[SocketAddr]| -> Vec<(String, SocketAddr)> {
        list.iter()
            .enumerate()
            .map(|(i, a)| (format!("archeio.{key}[{i}]"), *a))
            .collect()
    };
    let mut all = keyed("listen", listen);
    all.extend(keyed("tls.listen", tls));
    all.extend(keyed("admin_listen", admin));
    all
}

/// HTTP/2 limits for the TLS listeners: registry clients fetch a few blobs at a time and
/// send small headers; a client may not hold more than this open.
fn h2_limits() -> H2Options {
    let mut h2 = H2Options::new();
    h2.max_concurrent_streams(128)
        .max_header_list_size(64 * 1024)
        .max_send_buffer_size(1024 * 1024);
    h2
}

/// The configuration in effect as one YAML file: Pingora's keys, then `archeio:`. Only
/// names of variables and files stand for secrets in it; a URL's password (which the
/// checks refuse anyway) would be redacted.
fn print_config(
    server: &ServerSettings,
    archeio: &archeio::config::file::ArcheioConfig,
) -> Result<String, String> {
    let (pingora, others) = server.printable()?;
    let mut section = serde_yaml::to_value(archeio)
        .map_err(|e| format!("cannot print the archeio section: {e}"))?;
    redact_passwords(&mut section);
    let yaml = |m: &serde_yaml::Mapping| {
        serde_yaml::to_string(m).map_err(|e| format!("cannot print: {e}"))
    };
    let mut out = String::from(
        "# The configuration in effect (archeio -t --print): environment variables applied,\n\
         # defaults filled in, the region table merged.\n",
    );
    out.push_str(&yaml(&pingora)?);
    if !others.is_empty() {
        out.push_str(
            "# Pingora's other keys, as the file sets them (see Pingora's \
             docs/user_guide/conf.md):\n",
        );
        out.push_str(&yaml(&others)?);
    }
    let mut archeio_key = serde_yaml::Mapping::new();
    archeio_key.insert("archeio".into(), section);
    out.push_str(&yaml(&archeio_key)?);
    Ok(out)
}

fn redact_passwords(value: &mut serde_yaml::Value) {
    match value {
        serde_yaml::Value::String(s) => {
            if let Ok(mut url) = url::Url::parse(s) {
                if url.password().is_some() && url.set_password(Some("redacted")).is_ok() {
                    *s = url.to_string();
                }
            }
        }
        serde_yaml::Value::Sequence(items) => items.iter_mut().for_each(redact_passwords),
        serde_yaml::Value::Mapping(m) => m.iter_mut().for_each(|(_, v)| redact_passwords(v)),
        serde_yaml::Value::Tagged(t) => redact_passwords(&mut t.value),
        _ => {}
    }
}

/// The samples of `--explain ADDRESS TARGET` and of `--explain-file FILE` (a sample a line,
/// `ADDRESS TARGET`, `#` comments).
fn explain_samples(cli: &Cli) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    for pair in cli.explain.chunks(2) {
        let line = pair.join(" ");
        let sample = Sample::parse(&line)
            .map_err(|e| format!("--explain: {e}"))?
            .ok_or(
                "--explain needs ADDRESS TARGET, e.g. --explain 3.4.12.4 /v2/pause/manifests/3.10",
            )?;
        samples.push(sample);
    }
    if let Some(path) = &cli.explain_file {
        let path = path.display();
        let text = std::fs::read_to_string(path.to_string())
            .map_err(|e| format!("--explain-file {path}: cannot read: {e}"))?;
        for (n, line) in text.lines().enumerate() {
            if let Some(sample) =
                Sample::parse(line).map_err(|e| format!("{path}:{}: {e}", n + 1))?
            {
                samples.push(sample);
            }
        }
    }
    Ok(samples)
}

/// Prints what each sample would get, after fetching the range URLs as the first refresh
/// would; the exit code.
fn explain(
    refresher: &RangeRefresher,
    geo: &GeoRefresher,
    routes: &Routes,
    samples: &[Sample],
) -> i32 {
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
    let geo = geo.live().load_full();
    let (v4, v6) = ranges.prefix_counts();
    println!(
        "{v4} IPv4 and {v6} IPv6 prefixes; {} geo databases; {} policy rules\n",
        geo.len(),
        routes.policy.rules.len()
    );
    let places = Places {
        ranges: &ranges,
        geo: &geo,
    };
    for sample in samples {
        println!(
            "{}",
            archeio::routing::explain::explain(sample, routes, places)
        );
    }
    0
}

/// `archeio sync ...`: fills the mirrors, then exits (no server).
fn run_sync(args: &[String]) -> i32 {
    let opts = match sync::Options::parse(args.iter().cloned()) {
        Ok(o) => o,
        Err(e) if e.is_help() => {
            println!("{e}");
            return 0;
        }
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

/// A `[::]` address alone on its port is bound dual-stack, so IPv4 clients reach it too;
/// beside an IPv4 address on the same port it stays IPv6-only.
fn listen<A>(service: &mut Service<A>, addr: &SocketAddr, dual_stack: bool) {
    if addr.is_ipv6() {
        let mut opts = TcpSocketOptions::default();
        opts.ipv6_only = Some(!dual_stack);
        service.add_tcp_with_settings(&addr.to_string(), opts);
    } else {
        service.add_tcp(&addr.to_string());
    }
}

/// A warning when rules look at the client but no forwarding header is believed: behind a
/// load balancer they would all see the balancer's address.
fn unread_forwarding(settings: &Settings) -> Option<String> {
    let rules = &settings.routes.policy.rules;
    let looking = rules.iter().filter(|r| r.needs_client()).count();
    if settings.client_address.reads_header() || looking == 0 {
        return None;
    }
    Some(format!(
        "client_address.trusted_proxies is empty, so forwarding headers (X-Forwarded-For, \
         Forwarded) are ignored and each connection's peer is the client; {looking} policy \
         {} at the client (provider, region, cidr, country, continent, asn). If the gateway \
         runs behind a load balancer or ingress, list its addresses in \
         client_address.trusted_proxies, or every client will look like the balancer \
         (docs/configuration.md, \"Who the client is\")",
        if looking == 1 {
            "rule looks"
        } else {
            "rules look"
        }
    ))
}

/// Every `reason` of `archeio_client_address_refusals_total`.
fn client_address_refusals() -> Vec<&'static str> {
    let proxy = Refusal::ALL.map(Refusal::reason);
    ClientAddrError::REASONS
        .iter()
        .chain(&proxy)
        .copied()
        .collect()
}

fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("archeio: configuration error: {e}");
    exit(2);
}
