//! Reaching the upstream registry, without Pingora: the endpoints and their health
//! ([`endpoints`]), the gateway's credentials and tokens ([`auth`]), and the pass-through
//! manifest cache ([`manifest_cache`]).

pub mod auth;
pub mod endpoints;
pub mod manifest_cache;

pub use endpoints::Upstreams;
