//! One configured deployment: settings, the database pool, the connectors with
//! their channels, the model routes, and the optional Redis dedup cache. Every
//! role (receiver, worker) runs on one of these.

use std::{collections::HashMap, sync::Arc, time::Duration};

use crate::{
    channels::{self, Channel, pacing::Pacer},
    config::{ConnectorSettings, Settings},
    dedup::DedupCache,
    providers::{health::Health, router::Router},
    store::Store,
};

/// A connector ready to use: its settings and its channel.
#[derive(Clone)]
pub struct Connector {
    pub settings: ConnectorSettings,
    pub channel: Arc<dyn Channel>,
}

impl Connector {
    pub fn id(&self) -> &str {
        &self.settings.config.id
    }
    pub fn agent(&self) -> &str {
        &self.settings.config.agent
    }
}

pub struct Deployment {
    pub settings: Settings,
    pub store: Store,
    pub connectors: HashMap<String, Connector>,
    pub router: Router,
    pub pacer: Pacer,
    pub dedup: Option<DedupCache>,
    /// The ClickHouse sink, when configured.
    pub analytics: Option<crate::analytics::Analytics>,
    /// Each agent's tools, by agent name.
    pub toolboxes: HashMap<String, crate::tools::Toolbox>,
    /// Flips to true when the process stops serving: long-lived responses (the
    /// web chat's event streams) end so a graceful shutdown can finish.
    closing: tokio::sync::watch::Sender<bool>,
    /// The receiver's batch writer, started by the first webhook.
    group_commit: std::sync::OnceLock<crate::receiver::group_commit::GroupCommit>,
}

impl Deployment {
    /// Builds the deployment. Postgres and Redis connect lazily, so a role starts
    /// (and reports not ready) while they are down; an embedded SQLite file is opened.
    pub async fn new(settings: Settings) -> anyhow::Result<Arc<Self>> {
        let store = Store::open(&settings.database).await?;
        Self::with_store(settings, store)
    }

    pub fn with_store(settings: Settings, store: Store) -> anyhow::Result<Arc<Self>> {
        crate::install_tls_provider();
        let http = reqwest::Client::builder()
            .timeout(settings.delivery.request_timeout.0)
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("microclaw/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let connectors = settings
            .connectors
            .values()
            .map(|c| {
                let channel =
                    channels::build(c, &http, settings.receiver.signature_tolerance.0, &store);
                (
                    c.config.id.clone(),
                    Connector {
                        settings: c.clone(),
                        channel,
                    },
                )
            })
            .collect();
        // Model calls have their own per-call timeout (enforced by the route).
        let model_http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("microclaw/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let redis = crate::dedup::connect(&settings.redis)?;
        let health = Health::new(
            &settings.router,
            redis.clone(),
            &settings.redis.key_prefix,
            settings.redis.timeout.0,
        );
        let router = Router::new(&settings, &model_http, health);
        let pacer = Pacer::new(
            redis.clone(),
            &settings.redis.key_prefix,
            settings.redis.timeout.0,
        );
        let dedup = redis.map(|connection| DedupCache::new(&settings.redis, connection));
        let analytics = crate::analytics::Analytics::start(&settings.analytics, http);
        let egress = crate::tools::egress::Egress::new(&settings.tools);
        let tool_http = egress.client(Duration::from_secs(5))?;
        let toolboxes = settings
            .agents
            .values()
            .map(|agent| {
                (
                    agent.name.clone(),
                    crate::tools::Toolbox::for_agent(agent, &settings.tools, &egress, &tool_http),
                )
            })
            .collect();
        Ok(Arc::new(Self {
            settings,
            store,
            connectors,
            router,
            pacer,
            dedup,
            analytics,
            toolboxes,
            closing: tokio::sync::watch::Sender::new(false),
            group_commit: std::sync::OnceLock::new(),
        }))
    }

    /// The group-commit writer of inbound messages, unless configured off
    /// (`receiver.group_commit.max_batch = 1`). Called from a webhook, so on a runtime.
    pub(crate) fn group_commit(&self) -> Option<&crate::receiver::group_commit::GroupCommit> {
        let config = &self.settings.receiver.group_commit;
        (config.max_batch > 1).then(|| {
            self.group_commit.get_or_init(|| {
                crate::receiver::group_commit::GroupCommit::start(
                    self.store.clone(),
                    config,
                    self.settings.worker.turn_job_attempts,
                )
            })
        })
    }

    /// Ends every open event stream (at shutdown).
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`Self::close_streams`] was called.
    pub fn streams_closing(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closing = self.closing.subscribe();
        async move {
            let _ = closing.wait_for(|closing| *closing).await;
        }
    }
}
