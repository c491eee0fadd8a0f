//! Microsoft Teams end to end: activities with real RS256 JWTs (a throwaway test
//! key served as the Bot Framework's JWKS by a fake) into the real receiver, the
//! turn on a real worker, the reply at a fake Connector API with a token from a
//! fake OAuth endpoint.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Uri},
    routing::{get, post},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestConfig};

const SAMPLE: &str = include_str!("../fixtures/teams.json");
const KEY: &[u8] = include_bytes!("../fixtures/teams_test_key.pem");
const JWKS: &str = include_str!("../fixtures/teams_test_jwks.json");
const APP_ID: &str = "3c1e7a52-8b9d-4f0e-a1b2-c3d4e5f60718";

/// The Bot Framework's key and token endpoints and the Connector API.
#[derive(Clone, Default)]
struct FakeBotFramework {
    base: Arc<Mutex<String>>,
    metadata_fetches: Arc<AtomicUsize>,
    token_requests: Arc<AtomicUsize>,
    /// Extra key ids the JWKS serves (rotation).
    extra_kids: Arc<Mutex<Vec<String>>>,
    /// (path, Authorization, body) of each Connector call.
    activities: Arc<Mutex<Vec<(String, String, Value)>>>,
}

async fn metadata(State(fake): State<FakeBotFramework>) -> Json<Value> {
    fake.metadata_fetches.fetch_add(1, Ordering::SeqCst);
    let base = fake.base.lock().unwrap().clone();
    Json(json!({ "issuer": "https://api.botframework.com", "jwks_uri": format!("{base}/keys") }))
}

async fn keys(State(fake): State<FakeBotFramework>) -> Json<Value> {
    let mut jwks: Value = serde_json::from_str(JWKS).unwrap();
    let key = jwks["keys"][0].clone();
    for kid in fake.extra_kids.lock().unwrap().iter() {
        let mut rotated = key.clone();
        rotated["kid"] = json!(kid);
        jwks["keys"].as_array_mut().unwrap().push(rotated);
    }
    Json(jwks)
}

async fn token(State(fake): State<FakeBotFramework>, body: Bytes) -> Json<Value> {
    let form = microclaw::channels::form_pairs(&body);
    assert!(form.contains(&("grant_type".into(), "client_credentials".into())));
    assert!(form.contains(&("client_id".into(), APP_ID.into())));
    assert!(form.contains(&("client_secret".into(), "teams-client-secret".into())));
    let n = fake.token_requests.fetch_add(1, Ordering::SeqCst) + 1;
    Json(
        json!({"token_type": "Bearer", "expires_in": 3600, "access_token": format!("connector-token-{n}")}),
    )
}

async fn activity(
    State(fake): State<FakeBotFramework>,
    uri: Uri,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    fake.activities
        .lock()
        .unwrap()
        .push((uri.path().to_owned(), authorization, body));
    Json(json!({"id": "reply-1"}))
}

impl FakeBotFramework {
    async fn start() -> Self {
        let fake = FakeBotFramework::default();
        let router = Router::new()
            .route("/openid", get(metadata))
            .route("/keys", get(keys))
            .route("/token", post(token))
            .fallback(post(activity))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        *fake.base.lock().unwrap() = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        fake
    }

    fn base(&self) -> String {
        self.base.lock().unwrap().clone()
    }
}

async fn spawn(fake: &FakeBotFramework) -> TestApp {
    let base = fake.base();
    TestApp::spawn_with_worker(TestConfig {
        extra: format!(
            r#"
[[connectors]]
id = "teams"
channel = "teams"
agent = "assistant"
app_id = "{APP_ID}"
bot_token_env = "TEST_TEAMS_SECRET"
openid_metadata_url = "{base}/openid"
token_url = "{base}/token"
service_url_hosts = ["127.0.0.1"]
"#
        ),
        ..TestConfig::default()
    })
    .await
}

/// The sample activity with `id`, sent from `service_url`.
fn activity_body(id: &str, service_url: &str) -> String {
    let mut activity: Value = serde_json::from_str(SAMPLE).unwrap();
    activity["id"] = json!(id);
    activity["serviceUrl"] = json!(service_url);
    activity.to_string()
}

fn jwt(kid: &str, audience: &str, service_url: &str, expires_in: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "iss": "https://api.botframework.com",
        "aud": audience,
        // As the Bot Connector spells it.
        "serviceurl": service_url,
        "nbf": now - 60,
        "iat": now - 60,
        "exp": now + expires_in,
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(KEY).unwrap()).unwrap()
}

async fn send(app: &TestApp, token: Option<&str>, body: &str) -> reqwest::Response {
    let mut request = app
        .http
        .post(format!("{}/hooks/teams", app.address))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn wait_for_activities(fake: &FakeBotFramework, n: usize) -> Vec<(String, String, Value)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let sent = fake.activities.lock().unwrap().clone();
        if sent.len() >= n {
            return sent;
        }
        assert!(std::time::Instant::now() < deadline, "sent: {sent:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_authenticated_activity_is_answered_in_its_thread_with_a_cached_token() {
    let fake = FakeBotFramework::start().await;
    let app = spawn(&fake).await;
    let service_url = format!("{}/emea/", fake.base());
    for (n, id) in ["1767225661553", "1767225661999"].into_iter().enumerate() {
        let token = jwt("microclaw-test-kid", APP_ID, &service_url, 3600);
        let response = send(&app, Some(&token), &activity_body(id, &service_url)).await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        wait_for_activities(&fake, n + 1).await;
    }
    let sent = wait_for_activities(&fake, 2).await;
    let conversation = "19:2c5fd0a1b2c34d5e8f90a1b2c3d4e5f6@thread.tacv2;messageid=1767225600001";
    let paths: Vec<&str> = sent.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            format!("/emea/v3/conversations/{conversation}/activities/1767225661553"),
            format!("/emea/v3/conversations/{conversation}/activities/1767225661999"),
        ],
        "each reply in the thread of the activity it answers"
    );
    for (_, authorization, body) in &sent {
        assert_eq!(
            authorization, "Bearer connector-token-1",
            "one token, cached"
        );
        assert_eq!(body["type"], "message");
        assert_eq!(body["textFormat"], "markdown");
        assert_eq!(
            body["text"], "answer to [what is the status of ticket 8812?]",
            "the <at> mention is taken out"
        );
    }
    assert_eq!(fake.token_requests.load(Ordering::SeqCst), 1);
    assert_eq!(
        fake.metadata_fetches.load(Ordering::SeqCst),
        1,
        "keys cached"
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_tokens_are_refused_and_record_nothing() {
    let fake = FakeBotFramework::start().await;
    let app = spawn(&fake).await;
    let service_url = format!("{}/emea/", fake.base());
    let body = activity_body("1767225661553", &service_url);
    assert_eq!(send(&app, None, &body).await.status(), 401);
    for (token, why) in [
        (
            jwt("microclaw-test-kid", "another-bot", &service_url, 3600),
            "audience",
        ),
        (
            jwt("microclaw-test-kid", APP_ID, &service_url, -3600),
            "expired",
        ),
        (
            jwt(
                "microclaw-test-kid",
                APP_ID,
                "https://smba.trafficmanager.net/emea/",
                3600,
            ),
            "serviceUrl differs from the activity's",
        ),
        (
            jwt("unknown-kid", APP_ID, &service_url, 3600),
            "unknown key",
        ),
        ("not.a.jwt".to_owned(), "garbage"),
    ] {
        let response = send(&app, Some(&token), &body).await;
        assert_eq!(response.status(), 403, "{why}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "forbidden", "{why}");
    }
    // A token signed by another key under our kid.
    let mut forged = jwt("microclaw-test-kid", APP_ID, &service_url, 3600);
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    assert_eq!(send(&app, Some(&forged), &body).await.status(), 403);
    assert_eq!(app.count("SELECT COUNT(*) FROM inbound_events").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_rotated_key_is_fetched_on_demand_but_not_on_every_unknown_kid() {
    let fake = FakeBotFramework::start().await;
    let app = spawn(&fake).await;
    let service_url = format!("{}/emea/", fake.base());
    let first = jwt("microclaw-test-kid", APP_ID, &service_url, 3600);
    assert_eq!(
        send(&app, Some(&first), &activity_body("1", &service_url))
            .await
            .status(),
        200
    );
    fake.extra_kids.lock().unwrap().push("rotated-kid".into());
    let rotated = jwt("rotated-kid", APP_ID, &service_url, 3600);
    // Right after a fetch an unknown kid waits (forged kids cannot hammer the endpoint).
    assert_eq!(
        send(&app, Some(&rotated), &activity_body("2", &service_url))
            .await
            .status(),
        403
    );
    assert_eq!(fake.metadata_fetches.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(5200)).await;
    assert_eq!(
        send(&app, Some(&rotated), &activity_body("2", &service_url))
            .await
            .status(),
        200
    );
    assert_eq!(fake.metadata_fetches.load(Ordering::SeqCst), 2);
    app.stop().await;
}

#[tokio::test]
async fn the_token_is_never_sent_to_a_service_url_off_the_allow_list() {
    let fake = FakeBotFramework::start().await;
    let app = spawn(&fake).await;
    // Validly signed, but for a host the allow-list does not name.
    let service_url = format!("{}/emea/", fake.base().replace("127.0.0.1", "localhost"));
    let token = jwt("microclaw-test-kid", APP_ID, &service_url, 3600);
    assert_eq!(
        send(&app, Some(&token), &activity_body("9", &service_url))
            .await
            .status(),
        200
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while app
        .count("SELECT COUNT(*) FROM deliveries WHERE status = 'dead'")
        .await
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "no dead delivery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(fake.activities.lock().unwrap().is_empty());
    assert_eq!(
        fake.token_requests.load(Ordering::SeqCst),
        0,
        "no token even fetched"
    );
    app.stop().await;
}
