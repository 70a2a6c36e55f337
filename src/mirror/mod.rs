//! Does a mirror hold a blob: the cached `HEAD` check ([`check`]), the circuit breaker per
//! mirror host ([`breaker`]) it asks first, and the walk along a rule's chain ([`chain`]).

pub mod breaker;
pub mod chain;
pub mod check;
pub mod signing;

pub use chain::Mirrors;
pub use check::MirrorCheck;
