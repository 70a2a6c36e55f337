//! Reaching the upstream registry, without Pingora: the endpoints and their health
//! ([`endpoints`]), the gateway's credentials and tokens ([`auth`]), which repository holds
//! which blob ([`blob_access`]), and the pass-through manifest cache ([`manifest_cache`]).

pub mod auth;
pub mod blob_access;
pub mod endpoints;
pub mod manifest_cache;

pub use endpoints::Upstreams;
