//! Does a mirror hold a blob: the cached `HEAD` check ([`check`]) and the circuit breaker
//! per mirror host ([`breaker`]) it asks first.

pub mod breaker;
pub mod check;
pub mod signing;

pub use check::MirrorCheck;
