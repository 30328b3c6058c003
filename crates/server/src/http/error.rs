//! Every way a request can fail, and the one place each maps to an HTTP status and a JSON body
//! `{"error": {"code", "message", ...}}` naming what was wrong.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::rollout::RolloutError;
use crate::rollout::items::ItemsError;
use crate::rollout::routes::ResolveError;
use retort_model::encode::{EncodeError, Location};
use retort_model::{InferError, ObjectiveError};

use crate::admission::budget::BudgetError;
use crate::admission::degrade::Reason;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidFeature(#[from] EncodeError),
    #[error("{0}")]
    InvalidObjective(#[from] ObjectiveError),
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the request body did not arrive within {0} ms")]
    BodyTimeout(u64),
    #[error("Content-Encoding `{0}` is not supported; send the body uncompressed")]
    UnsupportedEncoding(String),
    #[error("request has {count} candidates; the limit is {limit}")]
    TooManyCandidates { count: usize, limit: usize },
    /// The request's `model` picks no route.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("no model is loaded yet")]
    NotReady,
    #[error("no such endpoint: {0}")]
    NotFound(String),
    #[error("{path} does not take {method}")]
    MethodNotAllowed { method: String, path: String },
    #[error("the inference queue is full; retry shortly")]
    Overloaded,
    #[error("the feedback log's queue is full; send the events again shortly")]
    FeedbackQueueFull,
    #[error("the request's budget of {budget_ms} ms ran out before inference could start")]
    DeadlineExceeded { budget_ms: f64 },
    #[error("the request's budget of {budget_ms} ms cannot be met ({}), and the model's degradation ladder sheds it", reason.as_str())]
    Shed { reason: Reason, budget_ms: f64 },
    #[error("the client went away before its answer")]
    Cancelled,
    #[error("inference failed: {0}")]
    Inference(#[from] InferError),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("the admin API needs `Authorization: Bearer <token>` with the server's admin token")]
    Unauthorized,
    #[error(
        "the admin API is off: no admin token is configured (set RETORT_ADMIN_TOKEN, or \
         --admin-open-on-loopback on a loopback address)"
    )]
    AdminDisabled,
    #[error(transparent)]
    Rollout(#[from] crate::rollout::RolloutError),
    #[error(transparent)]
    Items(#[from] ItemsError),
}

/// A budget that is not a positive number is the caller's mistake, named like any other.
impl From<BudgetError> for ApiError {
    fn from(e: BudgetError) -> Self {
        ApiError::InvalidRequest(e.to_string())
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    feature: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    head: Option<&'a str>,
    /// Why a request was shed: `budget` or `overload`.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

impl ApiError {
    /// Every value [`ApiError::code`] gives: the `outcome` label values of a version's metric
    /// series, removed when the version retires.
    pub const CODES: &[&'static str] = &[
        "malformed_json",
        "invalid_request",
        "invalid_feature",
        "invalid_objective",
        "body_too_large",
        "body_timeout",
        "unsupported_encoding",
        "too_many_candidates",
        "unknown_model",
        "model_required",
        "not_ready",
        "not_found",
        "method_not_allowed",
        "overloaded",
        "deadline_exceeded",
        "shed",
        "cancelled",
        "inference_failed",
        "internal",
        "unauthorized",
        "admin_disabled",
        "unknown_version",
        "invalid_model",
        "wrong_state",
        "nothing_to_roll_back",
        "invalid_catalog",
    ];

    /// How this error is answered and counted: the one table (status, code, what it counts
    /// as). Every other classification reads it.
    pub fn class(&self) -> Class {
        use Counts::{Expired, Fault, Refused, Shed};
        use StatusCode as S;
        let (status, code, counts) = match self {
            ApiError::MalformedJson(_) => (S::BAD_REQUEST, "malformed_json", Fault),
            ApiError::InvalidRequest(_) => (S::UNPROCESSABLE_ENTITY, "invalid_request", Fault),
            ApiError::InvalidFeature(_) => (S::UNPROCESSABLE_ENTITY, "invalid_feature", Fault),
            ApiError::InvalidObjective(_) => (S::UNPROCESSABLE_ENTITY, "invalid_objective", Fault),
            ApiError::BodyTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "body_too_large", Fault),
            ApiError::BodyTimeout(_) => (S::REQUEST_TIMEOUT, "body_timeout", Fault),
            ApiError::UnsupportedEncoding(_) => (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding", Fault),
            ApiError::TooManyCandidates { .. } => (S::PAYLOAD_TOO_LARGE, "too_many_candidates", Fault),
            ApiError::Resolve(e) => match e {
                ResolveError::UnknownModel { .. } => (S::NOT_FOUND, "unknown_model", Fault),
                ResolveError::ModelRequired { .. } => (S::UNPROCESSABLE_ENTITY, "model_required", Fault),
                ResolveError::NotReady => (S::SERVICE_UNAVAILABLE, "not_ready", Refused),
            },
            ApiError::NotReady => (S::SERVICE_UNAVAILABLE, "not_ready", Refused),
            ApiError::NotFound(_) => (S::NOT_FOUND, "not_found", Fault),
            ApiError::MethodNotAllowed { .. } => (S::METHOD_NOT_ALLOWED, "method_not_allowed", Fault),
            ApiError::Overloaded | ApiError::FeedbackQueueFull => (S::TOO_MANY_REQUESTS, "overloaded", Shed),
            ApiError::DeadlineExceeded { .. } => (S::SERVICE_UNAVAILABLE, "deadline_exceeded", Expired),
            ApiError::Shed { .. } => (S::TOO_MANY_REQUESTS, "shed", Shed),
            // nginx's "client closed request": nobody reads it, but the logs and metrics do.
            ApiError::Cancelled => {
                (S::from_u16(499).expect("a valid status"), "cancelled", Counts::Cancelled)
            }
            ApiError::Inference(_) => (S::INTERNAL_SERVER_ERROR, "inference_failed", Fault),
            ApiError::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal", Fault),
            ApiError::Unauthorized => (S::UNAUTHORIZED, "unauthorized", Fault),
            ApiError::AdminDisabled => (S::FORBIDDEN, "admin_disabled", Fault),
            ApiError::Rollout(e) => match e {
                RolloutError::Unknown { .. } => (S::NOT_FOUND, "unknown_version", Fault),
                RolloutError::Invalid { .. } => (S::UNPROCESSABLE_ENTITY, "invalid_model", Fault),
                RolloutError::WrongState { .. } => (S::CONFLICT, "wrong_state", Fault),
                RolloutError::NothingToRollBack { .. } => (S::CONFLICT, "nothing_to_roll_back", Fault),
                RolloutError::Percent(_) => (S::UNPROCESSABLE_ENTITY, "invalid_request", Fault),
            },
            ApiError::Items(e) => match e {
                ItemsError::Unknown { .. } => (S::NOT_FOUND, "unknown_version", Fault),
                ItemsError::Invalid { .. } => (S::UNPROCESSABLE_ENTITY, "invalid_catalog", Fault),
                ItemsError::NothingToRollBack { .. } => (S::CONFLICT, "nothing_to_roll_back", Fault),
            },
        };
        Class { status, code, counts }
    }

    /// A short stable identifier, used in the JSON body and as the `outcome` metric label.
    pub fn code(&self) -> &'static str {
        self.class().code
    }

    pub fn status(&self) -> StatusCode {
        self.class().status
    }

    /// Refused for want of time or capacity, not for anything the request or the model did:
    /// the client may retry (`Retry-After`), and the version's error rate does not count it.
    pub fn is_refusal(&self) -> bool {
        self.class().counts != Counts::Fault
    }
}

/// One row of [`ApiError::class`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub status: StatusCode,
    pub code: &'static str,
    pub counts: Counts,
}

/// What a failed request counts as in the budget outcomes (`retort_rank_outcomes_total`) and
/// in its version's error rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counts {
    /// The request's or the model's fault: an error of the version.
    Fault,
    /// Not served for want of a model (not ready): retried, not the version's error.
    Refused,
    /// Shed for capacity or budget.
    Shed,
    /// Its budget ran out before inference started.
    Expired,
    /// Its client went away.
    Cancelled,
}

impl Counts {
    /// The budget outcome label.
    pub fn outcome(self) -> &'static str {
        match self {
            Counts::Fault | Counts::Refused => "error",
            Counts::Shed => "shed",
            Counts::Expired => "expired",
            Counts::Cancelled => "cancelled",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let reason = match &self {
            ApiError::Shed { reason, .. } => Some(reason.as_str()),
            _ => None,
        };
        let (candidate, feature, head) = match &self {
            ApiError::InvalidFeature(e) => {
                let candidate = match e.location {
                    Location::Candidate(i) => Some(i),
                    Location::Context => None,
                };
                (candidate, Some(e.feature.as_str()), None)
            }
            ApiError::InvalidObjective(
                ObjectiveError::UnknownHead(h) | ObjectiveError::NotServing(h) | ObjectiveError::NonFinite(h),
            ) => (None, None, Some(h.as_str())),
            ApiError::InvalidObjective(ObjectiveError::Overflow { head, candidate }) => {
                (Some(*candidate), None, Some(head.as_str()))
            }
            _ => (None, None, None),
        };
        if status.is_server_error() {
            tracing::error!(code = self.code(), error = %self, "request failed");
        }
        let body = Body {
            error: Detail { code: self.code(), message: self.to_string(), candidate, feature, head, reason },
        };
        let json =
            serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"error\":{\"code\":\"internal\"}}".to_vec());
        let mut response = (status, json).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.is_refusal() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, ApiError::Unauthorized) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One error of every kind. The match below has no wildcard, so a new variant does not
    /// compile until it is added here too.
    fn one_of_each() -> Vec<ApiError> {
        let all = vec![
            ApiError::MalformedJson(String::new()),
            ApiError::InvalidRequest(String::new()),
            ApiError::InvalidFeature(EncodeError {
                location: Location::Context,
                feature: String::new(),
                problem: String::new(),
            }),
            ApiError::InvalidObjective(ObjectiveError::NonFinite(String::new())),
            ApiError::BodyTooLarge { limit: 1 },
            ApiError::BodyTimeout(1),
            ApiError::UnsupportedEncoding(String::new()),
            ApiError::TooManyCandidates { count: 2, limit: 1 },
            ApiError::Resolve(ResolveError::UnknownModel { name: String::new(), serving: String::new() }),
            ApiError::Resolve(ResolveError::ModelRequired { serving: String::new() }),
            ApiError::Resolve(ResolveError::NotReady),
            ApiError::NotReady,
            ApiError::NotFound(String::new()),
            ApiError::MethodNotAllowed { method: String::new(), path: String::new() },
            ApiError::Overloaded,
            ApiError::FeedbackQueueFull,
            ApiError::DeadlineExceeded { budget_ms: 1.0 },
            ApiError::Shed { reason: Reason::Budget, budget_ms: 1.0 },
            ApiError::Cancelled,
            ApiError::Inference(InferError::NonFinite { head: String::new(), candidate: 0 }),
            ApiError::Internal(String::new()),
            ApiError::Unauthorized,
            ApiError::AdminDisabled,
            ApiError::Rollout(RolloutError::Unknown { name: String::new(), version: String::new() }),
            ApiError::Rollout(RolloutError::Invalid {
                name: String::new(),
                version: String::new(),
                reason: String::new(),
            }),
            ApiError::Rollout(RolloutError::WrongState {
                name: String::new(),
                version: String::new(),
                state: crate::rollout::State::Staged,
                wanted: "",
            }),
            ApiError::Rollout(RolloutError::NothingToRollBack { name: String::new() }),
            ApiError::Rollout(RolloutError::Percent(101)),
            ApiError::Items(ItemsError::Unknown { name: String::new(), version: String::new() }),
            ApiError::Items(ItemsError::Invalid {
                name: String::new(),
                version: String::new(),
                reason: String::new(),
            }),
            ApiError::Items(ItemsError::NothingToRollBack { name: String::new() }),
        ];
        for e in &all {
            match e {
                ApiError::MalformedJson(_)
                | ApiError::InvalidRequest(_)
                | ApiError::InvalidFeature(_)
                | ApiError::InvalidObjective(_)
                | ApiError::BodyTooLarge { .. }
                | ApiError::BodyTimeout(_)
                | ApiError::UnsupportedEncoding(_)
                | ApiError::TooManyCandidates { .. }
                | ApiError::Resolve(_)
                | ApiError::NotReady
                | ApiError::NotFound(_)
                | ApiError::MethodNotAllowed { .. }
                | ApiError::Overloaded
                | ApiError::FeedbackQueueFull
                | ApiError::DeadlineExceeded { .. }
                | ApiError::Shed { .. }
                | ApiError::Cancelled
                | ApiError::Inference(_)
                | ApiError::Internal(_)
                | ApiError::Unauthorized
                | ApiError::AdminDisabled
                | ApiError::Rollout(_)
                | ApiError::Items(_) => {}
            }
        }
        all
    }

    #[test]
    fn every_code_is_listed_once() {
        let codes: std::collections::BTreeSet<&str> = one_of_each().iter().map(ApiError::code).collect();
        let listed: std::collections::BTreeSet<&str> = ApiError::CODES.iter().copied().collect();
        assert_eq!(codes, listed);
        assert_eq!(listed.len(), ApiError::CODES.len(), "a code listed twice");
    }

    #[test]
    fn only_faults_count_against_a_version_and_each_outcome_is_named() {
        for e in one_of_each() {
            let class = e.class();
            assert!(class.status.is_client_error() || class.status.is_server_error(), "{e:?}");
            let refusal = matches!(
                e,
                ApiError::NotReady
                    | ApiError::Resolve(ResolveError::NotReady)
                    | ApiError::Overloaded
                    | ApiError::FeedbackQueueFull
                    | ApiError::DeadlineExceeded { .. }
                    | ApiError::Shed { .. }
                    | ApiError::Cancelled
            );
            assert_eq!(e.is_refusal(), refusal, "{e:?}");
            let outcome = match e {
                ApiError::DeadlineExceeded { .. } => "expired",
                ApiError::Overloaded | ApiError::FeedbackQueueFull | ApiError::Shed { .. } => "shed",
                ApiError::Cancelled => "cancelled",
                _ => "error",
            };
            assert_eq!(class.counts.outcome(), outcome, "{e:?}");
            assert!(crate::http::metrics::OUTCOMES.contains(&outcome), "{outcome}");
        }
    }
}
