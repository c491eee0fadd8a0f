//! `/admin`: a small server-rendered page over the admin queue (no JavaScript,
//! no build step): queue overview, dead deliveries with retry and discard
//! buttons, a delivery's history, failed turns with rerun and discard buttons.
//!
//! Same tokens as the API: the login form puts the token in an HttpOnly,
//! `SameSite=Strict` cookie scoped to `/admin` (so another site cannot make the
//! browser post a retry); viewing needs `read`, buttons need `operate`. Every
//! value from the store is HTML-escaped.

use std::sync::Arc;

use axum::{
    Form, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use serde::Deserialize;
use uuid::Uuid;

use super::scope_of;
use crate::{
    config::AdminScope,
    deployment::Deployment,
    store::{AdminOutcome, DeliveryFilter},
};

const COOKIE: &str = "microclaw_admin";

pub fn router() -> Router<Arc<Deployment>> {
    Router::new()
        .route("/admin", get(overview))
        .route("/admin/login", post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/deliveries/{id}", get(delivery))
        .route("/admin/deliveries/{id}/retry", post(retry))
        .route("/admin/deliveries/{id}/discard", post(discard))
        .route("/admin/turns/{id}/rerun", post(rerun_turn))
        .route("/admin/turns/{id}/discard", post(discard_turn))
}

/// The scope of the token in the request's cookie.
fn session_scope(deployment: &Deployment, headers: &HeaderMap) -> Option<AdminScope> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    let token = cookies
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)?
        .1;
    scope_of(deployment, token)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · MicroClaw admin</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .3em .8em; text-align: left; vertical-align: top; }}
form.inline {{ display: inline; }}
.dead {{ color: #a00; }}
</style></head>
<body><h1>{title}</h1>
{body}
</body></html>"#,
        title = escape(title)
    ))
}

fn login_page(status: StatusCode, note: &str) -> Response {
    (
        status,
        page(
            "Sign in",
            &format!(
                r#"<p>{}</p>
<form method="post" action="/admin/login">
<label>Admin token <input type="password" name="token" id="token" autocomplete="off"></label>
<button type="submit" id="sign-in">Sign in</button>
</form>"#,
                escape(note)
            ),
        ),
    )
        .into_response()
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

async fn login(State(deployment): State<Arc<Deployment>>, Form(form): Form<Login>) -> Response {
    let token = form.token.trim();
    if scope_of(&deployment, token).is_none() {
        return login_page(StatusCode::UNAUTHORIZED, "That token is not valid.");
    }
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!("{COOKIE}={token}; Path=/admin; HttpOnly; SameSite=Strict"),
            ),
            (header::LOCATION, "/admin".to_owned()),
        ],
    )
        .into_response()
}

async fn logout() -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0"),
            ),
            (header::LOCATION, "/admin".to_owned()),
        ],
    )
        .into_response()
}

async fn overview(State(deployment): State<Arc<Deployment>>, headers: HeaderMap) -> Response {
    if session_scope(&deployment, &headers).is_none() {
        return login_page(StatusCode::OK, "Sign in with an admin token.");
    }
    let store = &deployment.store;
    let (queues, dead) = match (
        store.queue_stats().await,
        store
            .list_deliveries(
                &DeliveryFilter {
                    status: Some("dead".into()),
                    ..DeliveryFilter::default()
                },
                None,
                100,
            )
            .await,
    ) {
        (Ok(queues), Ok(dead)) => (queues, dead),
        _ => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                page(
                    "Admin",
                    "<p>The store did not answer; reload in a moment.</p>",
                ),
            )
                .into_response();
        }
    };
    let mut body = String::from(
        "<h2>Queues</h2><table><tr><th>Queue</th><th>Waiting</th><th>Delayed</th><th>Running</th><th>Failed</th><th>Oldest waiting</th></tr>",
    );
    for q in &queues {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&q.queue),
            q.waiting,
            q.delayed,
            q.running,
            q.failed,
            q.oldest_waiting_secs
                .map_or("-".into(), |s| format!("{s}s"))
        ));
    }
    body.push_str("</table><h2>Failed deliveries</h2>");
    if dead.is_empty() {
        body.push_str("<p id=\"no-dead\">None.</p>");
    } else {
        body.push_str("<table><tr><th>Delivery</th><th>Channel</th><th>Error</th><th>Attempts</th><th>Died</th><th></th></tr>");
        for d in &dead {
            body.push_str(&format!(
                r#"<tr class="dead" data-delivery="{id}"><td><a href="/admin/deliveries/{id}">{id}</a></td><td>{channel} ({connector})</td><td>{class}: {error}</td><td>{attempts}</td><td>{died}</td>
<td><form class="inline" method="post" action="/admin/deliveries/{id}/retry"><button type="submit" class="retry">Retry</button></form>
<form class="inline" method="post" action="/admin/deliveries/{id}/discard"><input name="reason" placeholder="reason" required><button type="submit" class="discard">Discard</button></form></td></tr>"#,
                id = d.id,
                channel = escape(&d.channel),
                connector = escape(&d.connector_id),
                class = escape(d.error_class.as_deref().unwrap_or("-")),
                error = escape(d.last_error.as_deref().unwrap_or("")),
                attempts = d.attempts,
                died = d
                    .dead_at
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default(),
            ));
        }
        body.push_str("</table>");
    }
    body.push_str("<h2>Failed turns</h2>");
    match store
        .list_turns(
            &crate::store::TurnFilter {
                status: Some("failed".into()),
                unresolved: Some(true),
                ..crate::store::TurnFilter::default()
            },
            None,
            100,
        )
        .await
    {
        Ok(turns) if turns.is_empty() => body.push_str("<p id=\"no-failed-turns\">None.</p>"),
        Ok(turns) => {
            body.push_str("<table><tr><th>Turn</th><th>Agent</th><th>Messages</th><th>Error</th><th>Finished</th><th></th></tr>");
            for t in &turns {
                body.push_str(&format!(
                    r#"<tr class="failed-turn" data-turn="{id}"><td>{id}</td><td>{agent}</td><td>{events}</td><td>{error}</td><td>{finished}</td>
<td><form class="inline" method="post" action="/admin/turns/{id}/rerun"><button type="submit" class="rerun">Rerun</button></form>
<form class="inline" method="post" action="/admin/turns/{id}/discard"><input name="reason" placeholder="reason" required><button type="submit" class="discard">Discard</button></form></td></tr>"#,
                    id = t.id,
                    agent = escape(&t.agent),
                    events = t.events,
                    error = escape(t.error.as_deref().unwrap_or("")),
                    finished = t.finished_at.format("%Y-%m-%d %H:%M:%S"),
                ));
            }
            body.push_str("</table>");
        }
        Err(_) => body.push_str("<p>The store did not answer.</p>"),
    }
    body.push_str(r#"<form method="post" action="/admin/logout"><button type="submit">Sign out</button></form>"#);
    page("Admin", &body).into_response()
}

async fn delivery(
    State(deployment): State<Arc<Deployment>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Response {
    if session_scope(&deployment, &headers).is_none() {
        return login_page(StatusCode::UNAUTHORIZED, "Sign in with an admin token.");
    }
    let detail = match deployment.store.show_delivery(id).await {
        Ok(Some(detail)) => detail,
        Ok(None) => {
            return (
                StatusCode::NOT_FOUND,
                page("Not found", "<p>No such delivery.</p>"),
            )
                .into_response();
        }
        Err(_) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                page(
                    "Delivery",
                    "<p>The store did not answer; reload in a moment.</p>",
                ),
            )
                .into_response();
        }
    };
    let d = &detail.summary;
    let mut body = format!(
        r#"<p><a href="/admin">← Admin</a></p>
<table>
<tr><th>Status</th><td id="status">{status}</td></tr>
<tr><th>Channel</th><td>{channel} ({connector}), part {part}</td></tr>
<tr><th>Error</th><td>{class}: {error}</td></tr>
<tr><th>Trace</th><td>{trace}</td></tr>
<tr><th>Text</th><td><pre>{text}</pre></td></tr>
</table><h2>Attempts</h2><table><tr><th>#</th><th>Started</th><th>Outcome</th><th>Status</th><th>Error</th></tr>"#,
        status = escape(&d.status),
        channel = escape(&d.channel),
        connector = escape(&d.connector_id),
        part = d.part,
        class = escape(d.error_class.as_deref().unwrap_or("-")),
        error = escape(d.last_error.as_deref().unwrap_or("")),
        trace = escape(&detail.trace_id),
        text = escape(&detail.text),
    );
    for a in &detail.history {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            a.attempt,
            a.started_at.format("%Y-%m-%d %H:%M:%S"),
            escape(a.outcome.as_deref().unwrap_or("running")),
            a.status_code.map_or("-".into(), |c| c.to_string()),
            escape(a.error.as_deref().unwrap_or("")),
        ));
    }
    body.push_str("</table>");
    page(&format!("Delivery {id}"), &body).into_response()
}

/// Runs an operate action for the signed-in operator, then goes to `then`.
async fn act(
    deployment: &Deployment,
    headers: &HeaderMap,
    then: String,
    action: impl Future<Output = Result<AdminOutcome, crate::store::StoreError>>,
) -> Response {
    match session_scope(deployment, headers) {
        None => return login_page(StatusCode::UNAUTHORIZED, "Sign in with an admin token."),
        Some(AdminScope::Read) => {
            return (
                StatusCode::FORBIDDEN,
                page("Not allowed", "<p>This token may only read; retrying and discarding need an operate token.</p>"),
            )
                .into_response();
        }
        Some(AdminScope::Operate) => {}
    }
    match action.await {
        Ok(AdminOutcome::NotFound) => (
            StatusCode::NOT_FOUND,
            page("Not found", "<p>Nothing by that id.</p>"),
        )
            .into_response(),
        Ok(_) => Redirect::to(&then).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            page("Admin", "<p>The store did not answer; try again.</p>"),
        )
            .into_response(),
    }
}

async fn retry(
    State(deployment): State<Arc<Deployment>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Response {
    let store = deployment.store.clone();
    act(
        &deployment,
        &headers,
        format!("/admin/deliveries/{id}"),
        async move { store.retry_delivery(id).await },
    )
    .await
}

#[derive(Deserialize)]
struct Discard {
    reason: String,
}

async fn discard(
    State(deployment): State<Arc<Deployment>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Form(form): Form<Discard>,
) -> Response {
    let store = deployment.store.clone();
    act(
        &deployment,
        &headers,
        format!("/admin/deliveries/{id}"),
        async move { store.discard_delivery(id, form.reason.trim()).await },
    )
    .await
}

async fn rerun_turn(
    State(deployment): State<Arc<Deployment>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Response {
    let store = deployment.store.clone();
    let attempts = deployment.settings.worker.turn_job_attempts;
    act(&deployment, &headers, "/admin".into(), async move {
        store.rerun_turn(id, attempts).await
    })
    .await
}

async fn discard_turn(
    State(deployment): State<Arc<Deployment>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Form(form): Form<Discard>,
) -> Response {
    let store = deployment.store.clone();
    act(&deployment, &headers, "/admin".into(), async move {
        store.discard_turn(id, form.reason.trim()).await
    })
    .await
}
