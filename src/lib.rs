//! archeio: a container-registry redirect gateway on Pingora.
//!
//! Manifests and tags are redirected to the upstream registry (or, in pass-through mode,
//! proxied to it); blobs to the object-store mirror closest to the client (by cloud IP
//! ranges) when it holds them, otherwise to the upstream. See `docs/request-handling.md`
//! for the rules.
//!
//! The layers, each importing only from the ones above it:
//! - [`metrics`]: the Prometheus series; a leaf that imports nothing from the crate;
//! - [`routing`]: the pure core (the decision, the target grammar, client address, range
//!   table); no I/O, no Pingora;
//! - [`config`]: the file format and environment variables turned into one validated
//!   [`config::Settings`];
//! - [`mirror`], [`upstream`], [`range_refresh`], [`rate_limit`]: the I/O and state the
//!   decision relies on (mirror checks and breakers, upstream endpoints, health, credentials
//!   and manifest cache, live range files, per-client token buckets); no Pingora;
//! - [`auth`]: client authentication (`client_auth`): the token relay and credential
//!   digests, over [`upstream`]; no Pingora;
//! - [`gateway`]: everything that touches Pingora: the `ProxyHttp` service split by phase,
//!   answers, the access log, slow clients, the admin listener, background services;
//! - [`hangup`], [`live`]: background work's shapes (again on an interval and on `SIGHUP`;
//!   following a part that a reload replaces), leaves;
//! - [`sync`]: `archeio sync`, which fills the mirrors (beside the gateway, sharing only
//!   config errors, the blob path layout and [`aws_ambient`], the AWS credentials of a
//!   pod's identity, a leaf).

pub mod auth;
pub mod aws_ambient;
pub mod config;
pub mod gateway;
pub mod geo_refresh;
pub mod hangup;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod mirror;
pub mod range_refresh;
pub mod rate_limit;
pub mod routing;
pub mod sync;
pub mod upstream;
