//! Does a mirror hold a blob: the cached `HEAD` check ([`check`]), the circuit breaker per
//! mirror host ([`breaker`]) it asks first, the walk along a rule's chain ([`chain`]), and
//! the check of a proxied blob against its digest ([`verify`]).

pub mod breaker;
pub mod chain;
pub mod check;
pub mod signing;
pub mod verify;

pub use chain::{Found, Mirrors};
pub use check::MirrorCheck;
