//! What a client is told when proxying fails. Pingora's error (its type and which side it
//! came from) is first classified into a [`Failure`], by [`Failure::of`]; the answer follows
//! from the failure alone ([`Failure::answer`]). Both are pure. A tag manifest may stand in
//! for a 5xx answer when the cache still holds it (`manifest_cache.stale_if_error`).

use std::borrow::Cow;

use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_proxy::{FailToProxy, Session};

use super::responses::{write_answer, write_cached};
use super::{Gateway, RequestCtx};
use crate::routing::Answer;

/// An upstream token realm the gateway may not send its credentials to.
pub(super) const REALM_REFUSED: ErrorType = ErrorType::Custom("upstream token realm refused");
/// The upstream asked for credentials the gateway now has: the request is retried.
pub(super) const AUTH_RETRY: ErrorType = ErrorType::Custom("upstream authentication");
/// The gateway's credentials were refused, or no token could be had.
pub(super) const AUTH_FAILED: ErrorType = ErrorType::Custom("upstream authentication failed");
/// A mirror's copy of a proxied blob did not hash to its digest.
pub(super) const DIGEST_MISMATCH: ErrorType = ErrorType::Custom("mirror blob digest mismatch");

/// Why proxying a request failed, as far as the client's answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// The upstream's token realm is not one the gateway may use.
    RealmRefused,
    /// The upstream refused the gateway's credentials, or its token service failed.
    CredentialsRefused,
    /// The upstream did not answer in time (a timeout, or `upstream.timeouts.total`).
    UpstreamTimedOut,
    /// No connection to the upstream, or it broke.
    UpstreamUnreachable,
    /// The client went away: nobody to answer.
    ClientGone,
    /// The client's request could not be read.
    BadRequest,
    /// A status some other phase asked for.
    Status(u16),
    /// Anything else.
    Internal,
}

impl Failure {
    /// Classifies an error; `deadline_passed` says the whole-response limit has run out
    /// (its timer fires on the client's connection, so the error looks like the client's).
    pub(super) fn of(etype: &ErrorType, source: &ErrorSource, deadline_passed: bool) -> Failure {
        use ErrorType::*;
        match (etype, source) {
            (t, _) if *t == REALM_REFUSED => Failure::RealmRefused,
            (t, _) if *t == AUTH_FAILED => Failure::CredentialsRefused,
            (HTTPStatus(code), _) => Failure::Status(*code),
            (_, ErrorSource::Downstream) if deadline_passed => Failure::UpstreamTimedOut,
            (ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout, _) => {
                Failure::UpstreamTimedOut
            }
            (_, ErrorSource::Upstream) => Failure::UpstreamUnreachable,
            (ReadError | WriteError | ConnectionClosed, ErrorSource::Downstream) => {
                Failure::ClientGone
            }
            (_, ErrorSource::Downstream) => Failure::BadRequest,
            _ => Failure::Internal,
        }
    }

    /// The status and message sent; `None` when there is nobody to answer. The message
    /// says what kind of failure it was, not where: addresses and causes stay in the log.
    pub(super) fn answer(self) -> Option<(u16, &'static str)> {
        Some(match self {
            Failure::RealmRefused => (
                502,
                "the upstream registry's token service is not one the gateway may use",
            ),
            Failure::CredentialsRefused => (
                502,
                "the upstream registry refused the gateway's credentials",
            ),
            Failure::UpstreamTimedOut => (504, "the upstream registry did not answer in time"),
            Failure::UpstreamUnreachable => (502, "the upstream registry could not be reached"),
            Failure::ClientGone => return None,
            Failure::BadRequest => (400, "bad request"),
            Failure::Status(code) if code >= 500 => (code, "internal error"),
            Failure::Status(code) => (code, "bad request"),
            Failure::Internal => (500, "internal error"),
        })
    }
}

/// Learning that the upstream wants credentials is routine, not a failure worth a warning.
pub(super) fn is_routine(error: &Error) -> bool {
    *error.etype() == AUTH_RETRY
}

/// Errors already logged once, with their reason, where they were found; and a client
/// that went away mid-answer, which is the client's doing, not an error of the gateway's
/// (its access record carries the `error`, at info).
pub(super) fn is_logged_where_found(error: &Error) -> bool {
    *error.etype() == REALM_REFUSED || *error.etype() == DIGEST_MISMATCH || client_went_away(error)
}

fn client_went_away(error: &Error) -> bool {
    *error.esource() == ErrorSource::Downstream
        && matches!(
            error.etype(),
            ErrorType::ConnectionClosed | ErrorType::WriteError
        )
}

impl Gateway {
    /// Answers a failed proxy attempt: a stale manifest when one may stand in, else the
    /// classified error (OCI JSON), unless an answer was already under way.
    pub(super) async fn answer_failure(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let deadline_passed = self
            .upstream
            .total_timeout
            .zip(ctx.upstream.sent_at)
            .is_some_and(|(total, sent)| sent.elapsed() >= total);
        let failure = Failure::of(e.etype(), e.esource(), deadline_passed);
        let (status, message) = failure.answer().unwrap_or((0, ""));
        let head = session.req_header().method == http::Method::HEAD;
        if status >= 500 && session.response_written().is_none() {
            if let Some(stale) = ctx
                .upstream
                .cache_key
                .as_deref()
                .and_then(|key| self.upstream.manifests.stale(key))
            {
                match write_cached(session, &stale, head, true).await {
                    Ok(()) => {
                        ctx.upstream.stale = true;
                        return FailToProxy {
                            error_code: 200,
                            can_reuse_downstream: false,
                        };
                    }
                    Err(write_error) => log::debug!("cannot send the stale answer: {write_error}"),
                }
            }
        }
        if status > 0 && session.response_written().is_none() {
            let answer = Answer::Error {
                status,
                code: if status >= 500 {
                    "UNAVAILABLE"
                } else {
                    "UNSUPPORTED"
                },
                message: Cow::Borrowed(message),
                oci: true,
            };
            if let Err(write_error) = write_answer(session, &answer, head).await {
                log::debug!("cannot send the error answer: {write_error}");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_type_and_side() {
        use ErrorSource::{Downstream, Internal, Upstream};
        use ErrorType::*;
        let cases = [
            (REALM_REFUSED, Upstream, false, Failure::RealmRefused),
            (AUTH_FAILED, Internal, false, Failure::CredentialsRefused),
            (AUTH_FAILED, Downstream, true, Failure::CredentialsRefused),
            (HTTPStatus(503), Internal, false, Failure::Status(503)),
            (ReadError, Downstream, true, Failure::UpstreamTimedOut),
            (ConnectTimedout, Upstream, false, Failure::UpstreamTimedOut),
            (ReadTimedout, Upstream, false, Failure::UpstreamTimedOut),
            (
                TLSHandshakeTimedout,
                Upstream,
                false,
                Failure::UpstreamTimedOut,
            ),
            (
                ConnectRefused,
                Upstream,
                false,
                Failure::UpstreamUnreachable,
            ),
            (
                ConnectNoRoute,
                Upstream,
                false,
                Failure::UpstreamUnreachable,
            ),
            (ReadError, Downstream, false, Failure::ClientGone),
            (ConnectionClosed, Downstream, false, Failure::ClientGone),
            (InvalidHTTPHeader, Downstream, false, Failure::BadRequest),
            (InternalError, Internal, false, Failure::Internal),
        ];
        for (etype, source, deadline, want) in cases {
            assert_eq!(
                Failure::of(&etype, &source, deadline),
                want,
                "{etype:?} from {source:?}, deadline passed: {deadline}"
            );
        }
    }

    #[test]
    fn each_failure_has_its_answer() {
        assert_eq!(Failure::RealmRefused.answer().unwrap().0, 502);
        assert_eq!(
            Failure::CredentialsRefused.answer(),
            Some((
                502,
                "the upstream registry refused the gateway's credentials"
            ))
        );
        assert_eq!(Failure::UpstreamTimedOut.answer().unwrap().0, 504);
        assert_eq!(Failure::UpstreamUnreachable.answer().unwrap().0, 502);
        assert_eq!(Failure::ClientGone.answer(), None);
        assert_eq!(Failure::BadRequest.answer().unwrap().0, 400);
        assert_eq!(Failure::Status(503).answer(), Some((503, "internal error")));
        assert_eq!(Failure::Status(413).answer(), Some((413, "bad request")));
        assert_eq!(Failure::Internal.answer().unwrap().0, 500);
        // Only an error the gateway found itself names the credentials.
        assert_ne!(
            Failure::Status(502).answer(),
            Failure::CredentialsRefused.answer()
        );
    }
}
