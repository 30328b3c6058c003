//! Every way a request can fail, and the one place each maps to an HTTP status and a JSON body
//! `{"error": {"code", "message", ...}}` naming what was wrong.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::rollout::RolloutError;
use crate::rollout::catalog::ResolveError;
use retort_model::encode::{EncodeError, Location};
use retort_model::{InferError, ObjectiveError};

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
    #[error("unknown model `{name}`; serving: {serving}")]
    UnknownModel { name: String, serving: String },
    #[error("the request names no model and several are served ({serving}); name one")]
    ModelRequired { serving: String },
    #[error("no model is loaded yet")]
    NotReady,
    #[error("no such endpoint: {0}")]
    NotFound(String),
    #[error("{path} does not take {method}")]
    MethodNotAllowed { method: String, path: String },
    #[error("the inference queue is full; retry shortly")]
    Overloaded,
    #[error("the request's budget of {budget_ms} ms ran out before inference could start")]
    DeadlineExceeded { budget_ms: f64 },
    #[error("the request's budget of {budget_ms} ms cannot be met ({}), and the model's degradation ladder sheds it", reason.as_str())]
    Shed { reason: Reason, budget_ms: f64 },
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
}

impl From<ResolveError> for ApiError {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::UnknownModel { name, serving } => ApiError::UnknownModel { name, serving },
            ResolveError::ModelRequired { serving } => ApiError::ModelRequired { serving },
            ResolveError::NotReady => ApiError::NotReady,
        }
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
        "inference_failed",
        "internal",
        "unauthorized",
        "admin_disabled",
        "unknown_version",
        "invalid_model",
        "wrong_state",
        "nothing_to_roll_back",
    ];

    /// A short stable identifier, used in the JSON body and as the `outcome` metric label.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::InvalidFeature(_) => "invalid_feature",
            ApiError::InvalidObjective(_) => "invalid_objective",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::UnsupportedEncoding(_) => "unsupported_encoding",
            ApiError::TooManyCandidates { .. } => "too_many_candidates",
            ApiError::UnknownModel { .. } => "unknown_model",
            ApiError::ModelRequired { .. } => "model_required",
            ApiError::NotReady => "not_ready",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Overloaded => "overloaded",
            ApiError::DeadlineExceeded { .. } => "deadline_exceeded",
            ApiError::Shed { .. } => "shed",
            ApiError::Inference(_) => "inference_failed",
            ApiError::Internal(_) => "internal",
            ApiError::Unauthorized => "unauthorized",
            ApiError::AdminDisabled => "admin_disabled",
            ApiError::Rollout(e) => match e {
                RolloutError::Unknown { .. } => "unknown_version",
                RolloutError::Invalid { .. } => "invalid_model",
                RolloutError::WrongState { .. } => "wrong_state",
                RolloutError::NothingToRollBack { .. } => "nothing_to_roll_back",
                RolloutError::Percent(_) => "invalid_request",
            },
        }
    }

    /// Refused for want of time or capacity, not for anything the request or the model did:
    /// the client may retry (`Retry-After`), and the version's error rate does not count it.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ApiError::Overloaded
                | ApiError::NotReady
                | ApiError::DeadlineExceeded { .. }
                | ApiError::Shed { .. }
        )
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidRequest(_)
            | ApiError::InvalidFeature(_)
            | ApiError::InvalidObjective(_)
            | ApiError::ModelRequired { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BodyTooLarge { .. } | ApiError::TooManyCandidates { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::UnknownModel { .. } | ApiError::Rollout(RolloutError::Unknown { .. }) => {
                StatusCode::NOT_FOUND
            }
            ApiError::Rollout(RolloutError::Invalid { .. } | RolloutError::Percent(_)) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Rollout(RolloutError::WrongState { .. } | RolloutError::NothingToRollBack { .. }) => {
                StatusCode::CONFLICT
            }
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::AdminDisabled => StatusCode::FORBIDDEN,
            ApiError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Overloaded | ApiError::Shed { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::DeadlineExceeded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Inference(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
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
            ApiError::UnknownModel { name: String::new(), serving: String::new() },
            ApiError::ModelRequired { serving: String::new() },
            ApiError::NotReady,
            ApiError::NotFound(String::new()),
            ApiError::MethodNotAllowed { method: String::new(), path: String::new() },
            ApiError::Overloaded,
            ApiError::DeadlineExceeded { budget_ms: 1.0 },
            ApiError::Shed { reason: Reason::Budget, budget_ms: 1.0 },
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
                | ApiError::UnknownModel { .. }
                | ApiError::ModelRequired { .. }
                | ApiError::NotReady
                | ApiError::NotFound(_)
                | ApiError::MethodNotAllowed { .. }
                | ApiError::Overloaded
                | ApiError::DeadlineExceeded { .. }
                | ApiError::Shed { .. }
                | ApiError::Inference(_)
                | ApiError::Internal(_)
                | ApiError::Unauthorized
                | ApiError::AdminDisabled
                | ApiError::Rollout(_) => {}
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
}
