//! The admin API under `/admin/v1`: the admin queue of failed deliveries (list,
//! show, retry, discard, one at a time or in bulk), failed turns (list, show,
//! rerun, discard), queue depth, sessions and their transcripts, usage, and people
//! (show, link, unlink, forget). Served by the `admin` role, and by `all` and
//! `dev` beside the webhooks.
//!
//! Every request carries `Authorization: Bearer <token>`; the token is compared in
//! constant time with each configured one. A `read` token may GET; changing
//! anything (POST) needs an `operate` token. Missing or unknown token: 401; too
//! weak a scope: 403. Bulk actions honour an `Idempotency-Key` header: the same
//! key acts once and answers again with the first answer.
//!
//! The OpenAPI document (`/admin/v1/openapi.json`) is generated from the handlers'
//! annotations by the same router that serves them, so the two cannot disagree.

pub mod client;
mod page;

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    config::AdminScope,
    deployment::Deployment,
    store::{
        Account, AdminOutcome, DeliveryDetail, DeliveryFilter, DeliverySummary, ForgetReport,
        QueueStats, ScheduledMessage, SessionSummary, StoreError, TranscriptMessage, TurnFilter,
        TurnSummary, UsageRow,
    },
};

pub const PREFIX: &str = "/admin/v1";

/// Deliveries a bulk action selects at most.
const BULK_LIMIT: i64 = 1_000;

type AppState = Arc<Deployment>;

/// An error answer: `{code, detail}` like the receiver's.
#[derive(Debug)]
pub struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"code": self.1, "detail": self.2}))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "admin request failed on the store");
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the store did not answer; try again".into(),
        )
    }
}

fn not_found(what: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "not_found", format!("no {what}"))
}

/// The admin router (paths under [`PREFIX`]) and its OpenAPI document.
pub fn router(deployment: Arc<Deployment>) -> axum::Router {
    let (api, openapi) = api_router().split_for_parts();
    let openapi = Arc::new(openapi);
    let app = api.route(
        "/openapi.json",
        axum::routing::get(move || {
            let openapi = openapi.clone();
            async move { Json(openapi.as_ref().clone()) }
        }),
    );
    axum::Router::new()
        .nest(PREFIX, app)
        .layer(axum::middleware::from_fn_with_state(
            deployment.clone(),
            authorize,
        ))
        .merge(page::router())
        .with_state(deployment)
}

/// The documented routes, as [`router`] serves them (without the prefix).
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_deliveries))
        .routes(routes!(show_delivery))
        .routes(routes!(retry_delivery))
        .routes(routes!(discard_delivery))
        .routes(routes!(retry_deliveries))
        .routes(routes!(discard_deliveries))
        .routes(routes!(queues))
        .routes(routes!(list_turns))
        .routes(routes!(show_turn))
        .routes(routes!(rerun_turn))
        .routes(routes!(discard_turn))
        .routes(routes!(list_sessions))
        .routes(routes!(session_transcript))
        .routes(routes!(usage))
        .routes(routes!(show_identity))
        .routes(routes!(link_identities))
        .routes(routes!(unlink_account))
        .routes(routes!(forget_identity))
        .routes(routes!(list_scheduled))
        .routes(routes!(cancel_scheduled))
}

/// The OpenAPI document of the admin API, with its base path.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut openapi) = api_router().split_for_parts();
    openapi.servers = Some(vec![utoipa::openapi::Server::new(PREFIX)]);
    openapi
}

/// The scope of a presented token; None for an unknown one. Every configured
/// token is compared in constant time, so the time taken does not tell which (or
/// whether one) matched.
pub(crate) fn scope_of(deployment: &Deployment, presented: &str) -> Option<AdminScope> {
    let mut scope = None;
    for (token, token_scope) in &deployment.settings.admin.tokens {
        if crate::channels::constant_time_eq(token.expose_secret().as_bytes(), presented.as_bytes())
        {
            scope = Some(*token_scope);
        }
    }
    scope
}

async fn authorize(State(deployment): State<AppState>, request: Request, next: Next) -> Response {
    let needed = if request.method() == Method::GET || request.method() == Method::HEAD {
        AdminScope::Read
    } else {
        AdminScope::Operate
    };
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <admin token>".into(),
        )
        .into_response();
    };
    let scope = scope_of(&deployment, presented);
    match scope {
        None => ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin token is not valid".into(),
        )
        .into_response(),
        Some(scope) if scope < needed => ApiError(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token may only read; retrying, discarding and changing people need an operate token"
                .into(),
        )
        .into_response(),
        Some(_) => next.run(request).await,
    }
}

/// A page of deliveries.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryPage {
    pub items: Vec<DeliverySummary>,
    /// Pass as `before` for the next page; absent on the last page.
    pub next_before: Option<Uuid>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// The `next_before` of the previous page.
    pub before: Option<Uuid>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<i64>,
}

/// List deliveries, newest first.
#[utoipa::path(get, path = "/deliveries", params(DeliveryFilter, Page),
    responses((status = 200, body = DeliveryPage)))]
async fn list_deliveries(
    State(deployment): State<AppState>,
    Query(filter): Query<DeliveryFilter>,
    Query(page): Query<Page>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let limit = page.limit.unwrap_or(50).clamp(1, 500);
    let items = deployment
        .store
        .list_deliveries(&filter, page.before, limit)
        .await?;
    let next_before = (items.len() as i64 == limit)
        .then(|| items.last().map(|d| d.id))
        .flatten();
    Ok(Json(DeliveryPage { items, next_before }))
}

/// One delivery: its reply text, target and every attempt.
#[utoipa::path(get, path = "/deliveries/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = DeliveryDetail), (status = 404)))]
async fn show_delivery(
    State(deployment): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<DeliveryDetail>, ApiError> {
    deployment
        .store
        .show_delivery(id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found("delivery"))
}

fn outcome(result: AdminOutcome) -> Result<Json<AdminOutcome>, ApiError> {
    match result {
        AdminOutcome::NotFound => Err(not_found("delivery")),
        other => Ok(Json(other)),
    }
}

/// Retry a dead delivery: its reply's earliest dead part gets one new attempt.
#[utoipa::path(post, path = "/deliveries/{id}/retry", params(("id" = Uuid, Path)),
    responses((status = 200, body = AdminOutcome), (status = 404)))]
async fn retry_delivery(
    State(deployment): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<AdminOutcome>, ApiError> {
    outcome(deployment.store.retry_delivery(id).await?)
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct DiscardRequest {
    /// Why; kept with the delivery.
    pub reason: String,
}

/// Discard a dead delivery, keeping the reason.
#[utoipa::path(post, path = "/deliveries/{id}/discard", params(("id" = Uuid, Path)),
    request_body = DiscardRequest,
    responses((status = 200, body = AdminOutcome), (status = 404)))]
async fn discard_delivery(
    State(deployment): State<AppState>,
    Path(id): Path<Uuid>,
    Json(request): Json<DiscardRequest>,
) -> Result<Json<AdminOutcome>, ApiError> {
    outcome(
        deployment
            .store
            .discard_delivery(id, request.reason.trim())
            .await?,
    )
}

#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct BulkRequest {
    /// Which dead deliveries (every field narrows; status is always dead).
    #[serde(default)]
    pub filter: DeliveryFilter,
    /// Required for a discard.
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkResult {
    pub id: Uuid,
    pub outcome: AdminOutcome,
}

/// What a bulk action did, per selected delivery.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkResponse {
    pub results: Vec<BulkResult>,
}

/// Retry every dead delivery matching the filter (1,000 at most per request).
#[utoipa::path(post, path = "/deliveries/retry", request_body = BulkRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "acts once per key")),
    responses((status = 200, body = BulkResponse), (status = 409)))]
async fn retry_deliveries(
    State(deployment): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<BulkRequest>,
) -> Result<Response, ApiError> {
    bulk(&deployment, &headers, "retry", &request, |id| {
        let store = deployment.store.clone();
        async move { store.retry_delivery(id).await }
    })
    .await
}

/// Discard every dead delivery matching the filter, with a reason.
#[utoipa::path(post, path = "/deliveries/discard", request_body = BulkRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "acts once per key")),
    responses((status = 200, body = BulkResponse), (status = 400), (status = 409)))]
async fn discard_deliveries(
    State(deployment): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<BulkRequest>,
) -> Result<Response, ApiError> {
    let Some(reason) = request.reason.clone().filter(|r| !r.trim().is_empty()) else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "reason_required",
            "a discard keeps its reason: send {\"reason\": \"…\"}".into(),
        ));
    };
    bulk(&deployment, &headers, "discard", &request, |id| {
        let store = deployment.store.clone();
        let reason = reason.clone();
        async move { store.discard_delivery(id, reason.trim()).await }
    })
    .await
}

/// Runs `act` on each selected dead delivery, once per Idempotency-Key.
async fn bulk<F, Fut>(
    deployment: &Deployment,
    headers: &HeaderMap,
    action: &str,
    request: &BulkRequest,
    act: F,
) -> Result<Response, ApiError>
where
    F: Fn(Uuid) -> Fut,
    Fut: Future<Output = Result<AdminOutcome, StoreError>>,
{
    let store = &deployment.store;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|k| format!("{action}:{k}"));
    if let Some(key) = &key {
        match store.claim_admin_request(key).await? {
            None => {}
            Some(Some(stored)) => {
                return Ok((
                    StatusCode::OK,
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    stored,
                )
                    .into_response());
            }
            Some(None) => {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    "in_progress",
                    "a request with this Idempotency-Key is still running".into(),
                ));
            }
        }
    }
    let ids = store.dead_delivery_ids(&request.filter, BULK_LIMIT).await?;
    let mut results = Vec::with_capacity(ids.len());
    for id in ids {
        results.push(BulkResult {
            id,
            outcome: act(id).await?,
        });
    }
    let body = serde_json::to_string(&BulkResponse { results }).unwrap_or_default();
    if let Some(key) = &key {
        store.finish_admin_request(key, &body).await?;
    }
    Ok((
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// Depth, age and outcome counts of every queue.
#[utoipa::path(get, path = "/queues", responses((status = 200, body = Vec<QueueStats>)))]
async fn queues(State(deployment): State<AppState>) -> Result<Json<Vec<QueueStats>>, ApiError> {
    Ok(Json(deployment.store.queue_stats().await?))
}

/// A page of turns.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TurnPage {
    pub items: Vec<TurnSummary>,
    pub next_before: Option<Uuid>,
}

/// List turns, newest first (`status=failed&unresolved=true`: the failed-turn queue).
#[utoipa::path(get, path = "/turns", params(TurnFilter, Page),
    responses((status = 200, body = TurnPage)))]
async fn list_turns(
    State(deployment): State<AppState>,
    Query(filter): Query<TurnFilter>,
    Query(page): Query<Page>,
) -> Result<Json<TurnPage>, ApiError> {
    let limit = page.limit.unwrap_or(50).clamp(1, 500);
    let items = deployment
        .store
        .list_turns(&filter, page.before, limit)
        .await?;
    let next_before = (items.len() as i64 == limit)
        .then(|| items.last().map(|t| t.id))
        .flatten();
    Ok(Json(TurnPage { items, next_before }))
}

/// A turn with the messages it wrote.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TurnDetail {
    #[serde(flatten)]
    pub turn: TurnSummary,
    pub messages: Vec<TranscriptMessage>,
}

/// One turn: what it answered, its tool calls and reply, which model, why it failed.
#[utoipa::path(get, path = "/turns/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = TurnDetail), (status = 404)))]
async fn show_turn(
    State(deployment): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<TurnDetail>, ApiError> {
    let (turn, messages) = deployment
        .store
        .show_turn(id)
        .await?
        .ok_or_else(|| not_found("turn"))?;
    Ok(Json(TurnDetail { turn, messages }))
}

/// Answer a failed turn's messages again (once, however often it is asked).
#[utoipa::path(post, path = "/turns/{id}/rerun", params(("id" = Uuid, Path)),
    responses((status = 200, body = AdminOutcome), (status = 404)))]
async fn rerun_turn(
    State(deployment): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<AdminOutcome>, ApiError> {
    let attempts = deployment.settings.worker.turn_job_attempts;
    match deployment.store.rerun_turn(id, attempts).await? {
        AdminOutcome::NotFound => Err(not_found("turn")),
        other => Ok(Json(other)),
    }
}

/// Mark a failed turn discarded, keeping the reason.
#[utoipa::path(post, path = "/turns/{id}/discard", params(("id" = Uuid, Path)),
    request_body = DiscardRequest,
    responses((status = 200, body = AdminOutcome), (status = 404)))]
async fn discard_turn(
    State(deployment): State<AppState>,
    Path(id): Path<Uuid>,
    Json(request): Json<DiscardRequest>,
) -> Result<Json<AdminOutcome>, ApiError> {
    match deployment
        .store
        .discard_turn(id, request.reason.trim())
        .await?
    {
        AdminOutcome::NotFound => Err(not_found("turn")),
        other => Ok(Json(other)),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SessionQuery {
    pub agent: Option<String>,
    /// Sessions of one person.
    pub identity: Option<Uuid>,
}

/// List sessions, newest first.
#[utoipa::path(get, path = "/sessions", params(SessionQuery, Page),
    responses((status = 200, body = Vec<SessionSummary>)))]
async fn list_sessions(
    State(deployment): State<AppState>,
    Query(query): Query<SessionQuery>,
    Query(page): Query<Page>,
) -> Result<Json<Vec<SessionSummary>>, ApiError> {
    let limit = page.limit.unwrap_or(50).clamp(1, 500);
    Ok(Json(
        deployment
            .store
            .list_sessions(query.agent.as_deref(), query.identity, page.before, limit)
            .await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TranscriptQuery {
    /// Newest messages to show, 1 to 1,000 (default 100).
    pub limit: Option<i64>,
}

/// A session's transcript: messages, tool calls and results, which model answered.
#[utoipa::path(get, path = "/sessions/{id}/transcript", params(("id" = Uuid, Path), TranscriptQuery),
    responses((status = 200, body = Vec<TranscriptMessage>)))]
async fn session_transcript(
    State(deployment): State<AppState>,
    Path(id): Path<Uuid>,
    Query(query): Query<TranscriptQuery>,
) -> Result<Json<Vec<TranscriptMessage>>, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1_000);
    Ok(Json(deployment.store.transcript(id, limit).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// From this time on (RFC 3339); the last 30 days by default.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

/// Tokens and cost by agent, model and UTC day.
#[utoipa::path(get, path = "/usage", params(UsageQuery),
    responses((status = 200, body = Vec<UsageRow>)))]
async fn usage(
    State(deployment): State<AppState>,
    Query(query): Query<UsageQuery>,
) -> Result<Json<Vec<UsageRow>>, ApiError> {
    let since = query
        .since
        .unwrap_or_else(|| chrono::Utc::now() - chrono::Duration::days(30));
    Ok(Json(deployment.store.usage(since).await?))
}

/// A person and their accounts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IdentityView {
    pub identity: Uuid,
    pub accounts: Vec<Account>,
}

/// An identity id, or an account as CONNECTOR:SENDER_ID.
async fn resolve_person(deployment: &Deployment, person: &str) -> Result<Uuid, ApiError> {
    if let Ok(id) = person.parse::<Uuid>() {
        return Ok(id);
    }
    let (connector, sender) = person.split_once(':').ok_or_else(|| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "bad_person",
            format!("`{person}` is neither an identity id nor CONNECTOR:SENDER_ID"),
        )
    })?;
    deployment
        .store
        .identity_of(connector, sender)
        .await?
        .ok_or_else(|| not_found("such account"))
}

async fn view(deployment: &Deployment, identity: Uuid) -> Result<Json<IdentityView>, ApiError> {
    let accounts = deployment.store.accounts(identity).await?;
    if accounts.is_empty() {
        return Err(not_found("identity"));
    }
    Ok(Json(IdentityView { identity, accounts }))
}

/// A person, by identity id or account (CONNECTOR:SENDER_ID).
#[utoipa::path(get, path = "/identities/{person}", params(("person" = String, Path)),
    responses((status = 200, body = IdentityView), (status = 404)))]
async fn show_identity(
    State(deployment): State<AppState>,
    Path(person): Path<String>,
) -> Result<Json<IdentityView>, ApiError> {
    let id = resolve_person(&deployment, &person).await?;
    view(&deployment, id).await
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct LinkRequest {
    /// Identity ids or accounts (CONNECTOR:SENDER_ID).
    pub person: String,
    pub other: String,
}

/// Make two people one (the older identity absorbs the younger).
#[utoipa::path(post, path = "/identities/link", request_body = LinkRequest,
    responses((status = 200, body = IdentityView), (status = 404)))]
async fn link_identities(
    State(deployment): State<AppState>,
    Json(request): Json<LinkRequest>,
) -> Result<Json<IdentityView>, ApiError> {
    let a = resolve_person(&deployment, &request.person).await?;
    let b = resolve_person(&deployment, &request.other).await?;
    let survivor = deployment
        .store
        .link_identities(a, b)
        .await?
        .ok_or_else(|| not_found("identity"))?;
    view(&deployment, survivor).await
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct UnlinkRequest {
    /// CONNECTOR:SENDER_ID
    pub account: String,
}

/// Give one account a person of its own again.
#[utoipa::path(post, path = "/identities/unlink", request_body = UnlinkRequest,
    responses((status = 200, body = IdentityView), (status = 404)))]
async fn unlink_account(
    State(deployment): State<AppState>,
    Json(request): Json<UnlinkRequest>,
) -> Result<Json<IdentityView>, ApiError> {
    let (connector, sender) = request.account.split_once(':').ok_or_else(|| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "bad_account",
            "an account is CONNECTOR:SENDER_ID".into(),
        )
    })?;
    let id = deployment
        .store
        .unlink_account(connector, sender)
        .await?
        .ok_or_else(|| not_found("such account"))?;
    view(&deployment, id).await
}

/// Delete everything of a person; answers what was deleted.
#[utoipa::path(post, path = "/identities/{person}/forget", params(("person" = String, Path)),
    responses((status = 200, body = ForgetReport), (status = 404)))]
async fn forget_identity(
    State(deployment): State<AppState>,
    Path(person): Path<String>,
) -> Result<Json<ForgetReport>, ApiError> {
    let id = resolve_person(&deployment, &person).await?;
    deployment
        .store
        .forget_identity(id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found("identity"))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ScheduledQuery {
    /// Messages of one person (identity id).
    pub identity: Option<Uuid>,
    /// `pending` (the default) or `all`.
    pub status: Option<String>,
    pub limit: Option<i64>,
}

/// Messages agents scheduled for later, soonest first.
#[utoipa::path(get, path = "/scheduled", params(ScheduledQuery),
    responses((status = 200, body = Vec<ScheduledMessage>), (status = 400)))]
async fn list_scheduled(
    State(deployment): State<AppState>,
    Query(query): Query<ScheduledQuery>,
) -> Result<Json<Vec<ScheduledMessage>>, ApiError> {
    let all = match query.status.as_deref() {
        None | Some("pending") => false,
        Some("all") => true,
        Some(other) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("status `{other}`: use pending or all"),
            ));
        }
    };
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(
        deployment
            .store
            .scheduled_messages(query.identity, all, limit)
            .await?,
    ))
}

/// Cancel a scheduled message that is not sent yet.
#[utoipa::path(post, path = "/scheduled/{id}/cancel", params(("id" = Uuid, Path)),
    responses((status = 200, body = ScheduledMessage), (status = 404), (status = 409)))]
async fn cancel_scheduled(
    State(deployment): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<ScheduledMessage>, ApiError> {
    match deployment
        .store
        .cancel_scheduled(id, None, "operator")
        .await?
    {
        Some(message) if message.cancelled_by.as_deref() == Some("operator") => Ok(Json(message)),
        Some(message) => Err(ApiError(
            StatusCode::CONFLICT,
            "not_pending",
            format!("the message is already {}", message.status),
        )),
        None => Err(not_found("scheduled message")),
    }
}
