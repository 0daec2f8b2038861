//! What handlers take from a request: JSON bodies, path and query parameters whose rejections
//! are API errors (JSON 4xx, see [`crate::error`]), the caller's verified bearer token, and a
//! relay's cluster token.

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

pub use crate::auth::Bearer;
use crate::auth::bearer_token;
use crate::error::ApiError;
use crate::state::AppState;

/// A JSON body whose rejections are API errors.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(req, state).await.map(|Json(v)| Body(v)).map_err(ApiError::from)
    }
}

/// An optional JSON body: empty means `T::default()`.
pub struct OptionalBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE { ApiError::TooLarge } else { ApiError::bad(r.body_text()) }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        serde_json::from_slice(&bytes).map(Self).map_err(|e| ApiError::bad(format!("invalid request: {e}")))
    }
}

/// Path parameters whose rejections are API errors.
pub struct PathParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParam<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state).await.map(|p| PathParam(p.0)).map_err(ApiError::from)
    }
}

/// A query string whose rejections are API errors.
pub struct QueryParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParam<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParam(q.0))
            .map_err(ApiError::from)
    }
}

impl FromRequestParts<AppState> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts)?;
        state.keys.verify(token).map(Bearer)
    }
}

/// A relay, authenticated by the cluster token.
#[derive(Debug, Clone, Copy)]
pub struct RelayAuth;

impl FromRequestParts<AppState> for RelayAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        use subtle::ConstantTimeEq;
        let token = bearer_token(parts)?;
        if token.as_bytes().ct_eq(state.config.cluster_token.as_bytes()).into() {
            Ok(RelayAuth)
        } else {
            Err(ApiError::Unauthorized("cluster token is invalid".into()))
        }
    }
}
