//! archeio: a container-registry redirect gateway on Pingora.
//!
//! Manifests and tags are redirected to the upstream registry (or, in pass-through mode,
//! proxied to it); blobs to the object-store mirror closest to the client (by cloud IP
//! ranges) when it holds them, otherwise to the upstream. See `docs/request-handling.md`
//! for the rules.

pub mod admin;
pub mod breaker;
pub mod client_addr;
pub mod config;
pub mod manifest_cache;
pub mod metrics;
pub mod mirror_check;
pub mod proxy;
pub mod range_refresh;
pub mod ranges;
pub mod routing;
pub mod settings;
pub mod slow_clients;
pub mod upstream;
pub mod upstream_auth;
