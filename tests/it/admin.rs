//! The admin API and its CLI: auth and scopes, the admin queue (list, show,
//! retry, discard, in bulk and sent twice), queues, people, and the OpenAPI
//! document against the routes; on both store backends.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    fakes::PlatformMode,
    helpers::{ADMIN_READ_TOKEN, ADMIN_TOKEN, Backend, TestApp, TestConfig, TestMessage},
};

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = app
        .http
        .request(method, format!("{}/admin/v1{path}", app.address));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A reply the platform refused for good: one dead delivery.
pub(crate) async fn with_dead_delivery(backend: Backend) -> TestApp {
    let app = TestApp::spawn_with_worker(TestConfig {
        backend,
        ..TestConfig::default()
    })
    .await;
    app.platform.set_mode(PlatformMode::Fail(400, None));
    app.post_message(&TestMessage::direct("a1", "ada", "ada:hello"))
        .await;
    app.wait_until(
        "SELECT count(*) FROM deliveries WHERE status = 'dead'",
        1,
        Duration::from_secs(20),
    )
    .await;
    app.drain(Duration::from_secs(10)).await;
    app
}

async fn tokens_and_scopes_guard_every_route(backend: Backend) {
    let app = with_dead_delivery(backend).await;
    let (status, body) = call(&app, Method::GET, "/deliveries", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "unauthorized");
    let (status, _) = call(
        &app,
        Method::GET,
        "/queues",
        Some("mcadm_not_a_real_token_00"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(
        &app,
        Method::GET,
        "/deliveries",
        Some(ADMIN_READ_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(
        &app,
        Method::POST,
        "/deliveries/retry",
        Some(ADMIN_READ_TOKEN),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        app.count("SELECT count(*) FROM deliveries WHERE status = 'dead'")
            .await,
        1
    );
    app.stop().await;
}

async fn a_dead_delivery_is_listed_shown_and_retried_exactly_once(backend: Backend) {
    let app = with_dead_delivery(backend).await;
    let (status, page) = call(
        &app,
        Method::GET,
        "/deliveries?status=dead&channel=custom",
        Some(ADMIN_READ_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    let (_, none) = call(
        &app,
        Method::GET,
        "/deliveries?channel=slack",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert!(none["items"].as_array().unwrap().is_empty());
    let id = page["items"][0]["id"].as_str().unwrap().to_owned();
    let (_, shown) = call(
        &app,
        Method::GET,
        &format!("/deliveries/{id}"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(shown["error_class"], "permanent");
    assert!(
        shown["text"].as_str().unwrap().starts_with("answer to"),
        "{shown}"
    );
    assert_eq!(shown["history"][0]["status_code"], 400);

    app.platform.set_mode(PlatformMode::Accept);
    let before = app.platform.replies().len();
    // The same bulk request twice: one new attempt.
    for _ in 0..2 {
        let response = app
            .http
            .post(format!("{}/admin/v1/deliveries/retry", app.address))
            .bearer_auth(ADMIN_TOKEN)
            .header("idempotency-key", "retry-dead-1")
            .json(&json!({"filter": {"channel": "custom"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["results"][0]["outcome"]["result"], "done", "{body}");
    }
    app.wait_for_replies(before + 1, Duration::from_secs(20))
        .await;
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(
        app.platform.replies().len(),
        before + 1,
        "delivered exactly once"
    );
    assert_eq!(
        app.attempt_history().await,
        ["1:permanent:400", "2:delivered:0"]
    );
    // Delivered now: a retry leaves it alone.
    let (_, again) = call(
        &app,
        Method::POST,
        &format!("/deliveries/{id}/retry"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(again, json!({"result": "skipped", "status": "delivered"}));
    let (status, _) = call(
        &app,
        Method::POST,
        &format!("/deliveries/{}/retry", uuid::Uuid::now_v7()),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}

async fn a_dead_delivery_is_discarded_with_its_reason_from_the_cli(backend: Backend) {
    let app = with_dead_delivery(backend).await;
    let url = app.address.clone();
    let (ok, out, err) = app
        .run_binary(&[
            "admin",
            "deliveries",
            "list",
            "--status",
            "dead",
            "--url",
            &url,
            "--token",
            ADMIN_READ_TOKEN,
        ])
        .await;
    assert!(ok, "{err}");
    assert!(out.contains("dead") && out.contains("permanent"), "{out}");
    let (ok, out, err) = app
        .run_binary(&[
            "admin",
            "deliveries",
            "discard",
            "--all",
            "--reason",
            "customer left",
            "--url",
            &url,
            "--token",
            ADMIN_TOKEN,
        ])
        .await;
    assert!(ok, "{err}");
    assert!(out.contains("discard done"), "{out}");
    assert_eq!(
        app.strings("SELECT status || ':' || discard_reason FROM deliveries")
            .await,
        ["discarded:customer left"]
    );
    let (ok, out, err) = app
        .run_binary(&[
            "admin",
            "queues",
            "--json",
            "--url",
            &url,
            "--token",
            ADMIN_READ_TOKEN,
        ])
        .await;
    assert!(ok, "{err}");
    let queues: Value = serde_json::from_str(out.trim()).unwrap();
    assert!(
        queues
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["queue"] == "microclaw.deliveries"),
        "{queues}"
    );
    let (ok, _, err) = app
        .run_binary(&[
            "admin",
            "deliveries",
            "retry",
            "--all",
            "--url",
            &url,
            "--token",
            ADMIN_READ_TOKEN,
        ])
        .await;
    assert!(!ok && err.contains("403"), "{err}");
    app.stop().await;
}

async fn people_are_shown_linked_and_forgotten_through_the_api(backend: Backend) {
    let app = with_dead_delivery(backend).await;
    app.post_message(&TestMessage::direct("a2", "bea", "bea:hi"))
        .await;
    app.drain(Duration::from_secs(10)).await;
    let (status, ada) = call(
        &app,
        Method::GET,
        "/identities/web:ada",
        Some(ADMIN_READ_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{ada}");
    let (status, linked) = call(
        &app,
        Method::POST,
        "/identities/link",
        Some(ADMIN_TOKEN),
        Some(json!({"person": "web:ada", "other": "web:bea"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{linked}");
    assert_eq!(linked["identity"], ada["identity"]);
    assert_eq!(linked["accounts"].as_array().unwrap().len(), 2);
    let (status, report) = call(
        &app,
        Method::POST,
        &format!("/identities/{}/forget", ada["identity"].as_str().unwrap()),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["accounts"], 2);
    let (status, _) = call(
        &app,
        Method::GET,
        "/identities/web:ada",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}

async fn a_failed_turn_is_rerun_once_and_another_discarded(backend: Backend) {
    let app = TestApp::spawn_with_worker(TestConfig {
        backend,
        model_attempts: 1,
        ..TestConfig::default()
    })
    .await;
    app.model.always_fail(500);
    app.post_message(&TestMessage::direct("t1", "ada", "ada:first"))
        .await;
    app.post_message(&TestMessage::direct("t2", "bea", "bea:second"))
        .await;
    app.wait_for_replies(2, Duration::from_secs(20)).await;
    app.drain(Duration::from_secs(10)).await;
    app.model.heal();

    let (status, page) = call(
        &app,
        Method::GET,
        "/turns?status=failed&unresolved=true",
        Some(ADMIN_READ_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{page}");
    // Which is whose: the turns of two sessions ran side by side.
    let mut turns = Vec::new();
    for item in items {
        let id = item["id"].as_str().unwrap().to_owned();
        let (_, shown) = call(
            &app,
            Method::GET,
            &format!("/turns/{id}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
        turns.push((id, shown));
    }
    turns.sort_by_key(|(_, shown)| shown["messages"][0]["content"].as_str().unwrap().to_owned());
    let [(ada_turn, shown), (bea_turn, _)] = <[(String, Value); 2]>::try_from(turns).unwrap();
    assert!(shown["error"].as_str().unwrap().contains("500"), "{shown}");
    assert_eq!(shown["messages"][0]["content"], "ada:first");

    for _ in 0..2 {
        let (status, _) = call(
            &app,
            Method::POST,
            &format!("/turns/{ada_turn}/rerun"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let replies = app.wait_for_replies(3, Duration::from_secs(20)).await;
    assert_eq!(replies[2].event.data.text, "answer to [ada:first]");
    let (_, discarded) = call(
        &app,
        Method::POST,
        &format!("/turns/{bea_turn}/discard"),
        Some(ADMIN_TOKEN),
        Some(json!({"reason": "answered by phone"})),
    )
    .await;
    assert_eq!(discarded["result"], "done", "{discarded}");
    app.drain(Duration::from_secs(10)).await;
    assert_eq!(app.platform.replies().len(), 3, "the rerun answered once");
    let (_, open) = call(
        &app,
        Method::GET,
        "/turns?status=failed&unresolved=true",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert!(open["items"].as_array().unwrap().is_empty(), "{open}");

    // Sessions, the transcript (which model answered) and usage.
    let (_, sessions) = call(
        &app,
        Method::GET,
        "/sessions?agent=assistant",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(sessions.as_array().unwrap().len(), 2, "{sessions}");
    let ada_session = shown["session_id"].as_str().unwrap();
    let (_, transcript) = call(
        &app,
        Method::GET,
        &format!("/sessions/{ada_session}/transcript"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    let last = transcript.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["content"], "answer to [ada:first]", "{transcript}");
    assert_eq!(last["model"], "fake-gpt");
    let (_, usage) = call(&app, Method::GET, "/usage", Some(ADMIN_TOKEN), None).await;
    assert!(
        usage
            .as_array()
            .unwrap()
            .iter()
            .any(|row| row["model"] == "fake-gpt" && row["calls"].as_i64() >= Some(1)),
        "{usage}"
    );
    app.stop().await;
}

crate::on_both_backends!(
    a_failed_turn_is_rerun_once_and_another_discarded,
    tokens_and_scopes_guard_every_route,
    a_dead_delivery_is_listed_shown_and_retried_exactly_once,
    a_dead_delivery_is_discarded_with_its_reason_from_the_cli,
    people_are_shown_linked_and_forgotten_through_the_api,
);

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_served_routes() {
    let app = TestApp::spawn(TestConfig::default()).await;
    let (status, doc) = call(
        &app,
        Method::GET,
        "/openapi.json",
        Some(ADMIN_READ_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    assert_eq!(
        documented,
        [
            "GET /deliveries",
            "GET /deliveries/{id}",
            "GET /identities/{person}",
            "GET /queues",
            "GET /scheduled",
            "GET /sessions",
            "GET /sessions/{id}/transcript",
            "GET /turns",
            "GET /turns/{id}",
            "GET /usage",
            "POST /deliveries/discard",
            "POST /deliveries/retry",
            "POST /deliveries/{id}/discard",
            "POST /deliveries/{id}/retry",
            "POST /identities/link",
            "POST /identities/unlink",
            "POST /identities/{person}/forget",
            "POST /scheduled/{id}/cancel",
            "POST /turns/{id}/discard",
            "POST /turns/{id}/rerun",
        ]
    );
    // Every documented route is served: a request reaches its handler, which
    // answers in the API's own terms (never the router's bare 404 or 405).
    let id = uuid::Uuid::now_v7().to_string();
    for route in &documented {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path.replace("{id}", &id).replace("{person}", "web:nobody");
        let body = (method == "POST").then(|| {
            json!({"reason": "r", "person": "web:nobody", "other": "web:nobody", "account": "web:nobody"})
        });
        let (status, answer) = call(
            &app,
            method.parse().unwrap(),
            &path,
            Some(ADMIN_TOKEN),
            body,
        )
        .await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{route}");
        assert!(
            status.is_success() || answer["code"].is_string(),
            "{route}: {status} {answer}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn the_admin_page_lists_failed_turns_and_reruns_one() {
    let app = TestApp::spawn_with_worker(TestConfig {
        model_attempts: 1,
        ..TestConfig::default()
    })
    .await;
    app.model.always_fail(500);
    app.post_message(&TestMessage::direct("pt1", "ada", "ada:first"))
        .await;
    app.wait_for_replies(1, Duration::from_secs(20)).await;
    app.drain(Duration::from_secs(10)).await;
    app.model.heal();
    let (_, page) = call(
        &app,
        Method::GET,
        "/turns?status=failed",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    let turn = page["items"][0]["id"].as_str().unwrap().to_owned();

    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |token: &'static str| {
        browser
            .get(format!("{}/admin", app.address))
            .header("cookie", format!("microclaw_admin={token}"))
            .send()
    };
    let html = get(ADMIN_READ_TOKEN).await.unwrap().text().await.unwrap();
    assert!(html.contains(&format!("data-turn=\"{turn}\"")), "{html}");
    let rerun = |token: &'static str| {
        browser
            .post(format!("{}/admin/turns/{turn}/rerun", app.address))
            .header("cookie", format!("microclaw_admin={token}"))
            .send()
    };
    assert_eq!(
        rerun(ADMIN_READ_TOKEN).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let done = rerun(ADMIN_TOKEN).await.unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    let replies = app.wait_for_replies(2, Duration::from_secs(20)).await;
    assert_eq!(replies[1].event.data.text, "answer to [ada:first]");
    let html = get(ADMIN_TOKEN).await.unwrap().text().await.unwrap();
    assert!(html.contains("id=\"no-failed-turns\""), "{html}");
    app.stop().await;
}
