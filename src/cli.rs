//! The `microclaw` command line: one binary, one subcommand per role.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};

use crate::{
    config::{DEFAULT_PATH, Settings},
    deployment::Deployment,
    roles::{self, Shutdown},
};

#[derive(Debug, Parser)]
#[command(
    name = "microclaw",
    version,
    about = "A durable runtime for AI agents that live in chat",
    long_about = "A durable runtime for AI agents that live in chat.\n\n\
        Receivers verify webhooks and enqueue every message in Postgres before answering; \
        workers run turns against a model and deliver the replies. Each role scales on its own."
)]
pub struct Cli {
    /// Configuration file (TOML). Built-in defaults apply underneath; MICROCLAW_SECTION__KEY
    /// environment variables override it.
    #[arg(long, short, global = true, env = "MICROCLAW_CONFIG", default_value = DEFAULT_PATH)]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the webhook endpoints (POST/GET /hooks/{connector}) plus /healthz and /readyz.
    ///
    /// Stateless: verifies each request, records the inbound event and its turn job in one
    /// Postgres transaction, then answers 2xx (503 when Postgres is unreachable).
    Receiver,
    /// Run turn and delivery jobs from the Postgres queue, with /healthz and /readyz on
    /// worker.listen.
    ///
    /// Refuses to start when the worst-case model time of a turn exceeds
    /// worker.recovery_window. On SIGTERM, finishes in-flight jobs within
    /// worker.shutdown_grace and returns the rest to the queue.
    Worker,
    /// Receiver and worker in one process (health endpoints on receiver.listen).
    All {
        /// Create the database if missing and apply migrations before starting.
        #[arg(long)]
        migrate: bool,
    },
    /// Hold the Discord Gateway connection of every Discord connector with
    /// gateway = true, feeding direct messages and mentions into the durable path,
    /// with /healthz and /readyz on worker.listen.
    DiscordGateway,
    /// Create the database if missing, apply migrations (the queue's and MicroClaw's), exit.
    Migrate,
    /// Try MicroClaw with nothing to set up: receiver and worker in one process on an
    /// embedded SQLite store, the mock model unless OPENAI_API_KEY or ANTHROPIC_API_KEY is set.
    ///
    /// Everything lives in --data-dir: the store, the generated webhook secret, and
    /// dev.json, which `microclaw send` reads. History survives restarts. A config file,
    /// if given with --config (or ./microclaw.toml exists), is applied on top.
    Dev {
        /// Where the store and the dev secret live.
        #[arg(long, default_value = "microclaw-data")]
        data_dir: PathBuf,
        /// Address to serve webhooks on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// Send a message to a running `microclaw dev` and print the reply.
    Send {
        /// The message.
        text: String,
        /// The data directory of the running dev instance.
        #[arg(long, default_value = "microclaw-data")]
        data_dir: PathBuf,
        /// Who the message is from (one conversation per sender).
        #[arg(long, default_value = "you")]
        from: String,
        /// How long to wait for the reply, in seconds.
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
    },
    /// Serve the admin API (/admin/v1 on admin.listen), or, with a subcommand, talk to it.
    ///
    /// `microclaw admin deliveries list --status dead --channel slack`, `… show ID`,
    /// `… retry ID | --all [filters]`, `… discard ID | --all [filters] --reason …`,
    /// `microclaw admin queues`. Tables by default, --json for scripts.
    Admin {
        #[command(subcommand)]
        command: Option<crate::admin::client::AdminCommand>,
        #[command(flatten)]
        client: crate::admin::client::ClientArgs,
    },
    /// People: show, link and unlink accounts, forget someone entirely.
    ///
    /// PERSON is an identity id, or an account as CONNECTOR:SENDER_ID (e.g. slack:U0123).
    /// Works directly on the store named by database.url (only that key of the
    /// configuration is read), or on a `microclaw dev` store with --data-dir.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
        /// The data directory of a `microclaw dev` instance, instead of database.url.
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print every problem with the key that holds it.
    ///
    /// Exits 0 when the configuration is valid, 1 otherwise. Secrets are read from the
    /// environment as they would be at start, and never printed.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Show a person's identity id and accounts.
    Show { person: String },
    /// Make two people one: the older identity absorbs the younger one's accounts,
    /// facts and direct conversations.
    Link { person: String, other: String },
    /// Give one account an identity of its own again (its history stays behind).
    Unlink { account: String },
    /// Delete everything of a person: accounts, conversations, messages, facts, and
    /// group summaries that may contain them. Prints what was deleted.
    Forget { person: String },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Send {
            text,
            data_dir,
            from,
            wait_secs,
        } => runtime.block_on(async {
            let info = crate::dev::read_info(&data_dir)?;
            let reply =
                crate::dev::send(&info, &from, &text, Duration::from_secs(wait_secs)).await?;
            println!("{reply}");
            Ok(())
        }),
        Command::Dev { data_dir, listen } => {
            runtime.block_on(run_dev(&cli.config, data_dir, &listen))
        }
        // Only the store is needed: the rest of the configuration (connectors and
        // their secrets) is not read, so it works from an operator's shell.
        Command::Identity {
            command,
            json,
            data_dir,
        } => runtime.block_on(async {
            let database = match data_dir {
                Some(dir) => {
                    let path = dir.join("microclaw.db");
                    anyhow::ensure!(
                        path.exists(),
                        "no dev store at {}: start `microclaw dev --data-dir {}` first",
                        path.display(),
                        dir.display()
                    );
                    crate::config::DatabaseConfig {
                        url: format!("sqlite://{}", path.display()),
                        ..Default::default()
                    }
                }
                None => {
                    crate::config::RawConfig::load(&cli.config)
                        .map_err(|errors| anyhow::anyhow!("{errors}"))?
                        .database
                }
            };
            let store = crate::store::Store::open(&database).await?;
            println!("{}", identity_command(&store, command, json).await?);
            Ok(())
        }),
        // A client of the admin API: no configuration needed.
        Command::Admin {
            command: Some(command),
            client,
        } => runtime.block_on(async {
            crate::install_tls_provider();
            println!("{}", crate::admin::client::run(&client, command).await?);
            Ok(())
        }),
        command => {
            let settings = match Settings::load(&cli.config) {
                Ok(settings) => settings,
                Err(errors) => {
                    eprint!("{errors}");
                    return ExitCode::FAILURE;
                }
            };
            if let Command::Config {
                command: ConfigCommand::Check,
            } = command
            {
                return config_check(&cli.config, &settings);
            }
            let telemetry = crate::telemetry::init(&settings.log, &settings.telemetry);
            let result = runtime.block_on(run(command, settings));
            // Flushes the last spans: outside the runtime, as it blocks.
            drop(telemetry);
            result
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "microclaw stopped with an error");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `microclaw dev`: everything in one process on the embedded store.
async fn run_dev(config: &Path, data_dir: PathBuf, listen: &str) -> anyhow::Result<()> {
    let _lock = crate::dev::lock_data_dir(&data_dir)?;
    let secret = crate::dev::dev_secret(&data_dir)?;
    let listener = roles::bind(listen).await?;
    let bound = listener.local_addr()?.to_string();
    let mut settings = crate::dev::settings(&data_dir, &bound, config, &secret)?;
    let admin_token = crate::dev::admin_token(&data_dir)?;
    settings.admin.tokens.push((
        secrecy::SecretString::from(admin_token.clone()),
        crate::config::AdminScope::Operate,
    ));
    let telemetry =
        tokio::task::block_in_place(|| crate::telemetry::init(&settings.log, &settings.telemetry));
    let agent_model = settings
        .agents
        .values()
        .next()
        .map(|a| a.model.clone())
        .unwrap_or_default();
    let deployment = Deployment::new(settings).await?;
    deployment.store.migrate().await?;
    crate::dev::recover(&deployment.store).await?;
    let address = format!("http://{}", crate::dev::loopback(&bound));
    crate::dev::write_info(
        &data_dir,
        &crate::dev::DevInfo {
            address: address.clone(),
            connector: crate::dev::DEV_CONNECTOR.to_owned(),
            secret: secret.clone(),
            admin_token: admin_token.clone(),
        },
    )?;
    println!("MicroClaw dev is running.");
    println!(
        "  store:    {} (SQLite)",
        data_dir.join("microclaw.db").display()
    );
    println!("  model:    {agent_model}");
    for connector in deployment.connectors.values() {
        match connector.channel.kind() {
            crate::config::ChannelKind::Webchat => {
                println!("  chat:     {address}/chat/{} (web chat)", connector.id())
            }
            kind => println!(
                "  webhook:  POST {address}/hooks/{} ({} channel; secret in {})",
                connector.id(),
                kind.as_str(),
                data_dir.join("dev.json").display()
            ),
        }
    }
    println!(
        "  admin:    {address}/admin (page) and {address}{} (API); token {admin_token}",
        crate::admin::PREFIX
    );
    println!("  health:   {address}/healthz");
    println!("Try it:    microclaw send \"hello\"");

    let (trigger, shutdown) = Shutdown::new();
    tokio::spawn(async move {
        roles::termination_signal().await;
        trigger.trigger();
    });
    let app = crate::receiver::router(deployment.clone())
        .merge(crate::dev::router(deployment.clone(), &secret)?)
        .merge(crate::admin::router(deployment.clone()));
    let receiver = tokio::spawn({
        let deployment = deployment.clone();
        let shutdown = shutdown.clone();
        async move { roles::serve_http(app, listener, shutdown, &deployment).await }
    });
    let gateway = tokio::spawn(crate::discord_gateway::run(
        deployment.clone(),
        shutdown.clone(),
    ));
    let worker = roles::run_worker(deployment, None, shutdown).await;
    receiver.await??;
    gateway.await??;
    tokio::task::block_in_place(|| drop(telemetry));
    worker
}

fn config_check(path: &std::path::Path, settings: &Settings) -> ExitCode {
    let source = if path.exists() {
        path.display().to_string()
    } else {
        "built-in defaults".to_owned()
    };
    println!(
        "{source}: ok ({} agent(s), {} connector(s), {} model(s))",
        settings.agents.len(),
        settings.connectors.len(),
        settings.models.len()
    );
    for (name, model) in &settings.models {
        println!(
            "  model {name}: worst-case turn time {:.1}s, recovery window {:.1}s",
            model.worst_case_model_time().as_secs_f64(),
            settings.worker.recovery_window.0.as_secs_f64()
        );
    }
    ExitCode::SUCCESS
}

/// Creates the database when missing, then applies every migration.
async fn migrate(deployment: &Deployment) -> anyhow::Result<()> {
    let store = &deployment.store;
    if store
        .create_database_if_missing(&deployment.settings.database.url)
        .await?
    {
        tracing::info!("database created");
    }
    store.migrate().await?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    let (trigger, shutdown) = Shutdown::new();
    tokio::spawn(async move {
        roles::termination_signal().await;
        trigger.trigger();
    });
    match command {
        Command::Migrate => {
            let deployment = Deployment::new(settings).await?;
            migrate(&deployment).await
        }
        Command::Receiver => {
            let listener = roles::bind(&settings.receiver.listen).await?;
            let deployment = Deployment::new(settings).await?;
            roles::serve_receiver(deployment, listener, shutdown).await
        }
        Command::DiscordGateway => {
            let listener = roles::bind(&settings.worker.listen).await?;
            let deployment = Deployment::new(settings).await?;
            let gateways = deployment
                .connectors
                .values()
                .filter(|c| c.settings.config.gateway)
                .count();
            if gateways == 0 {
                anyhow::bail!("no Discord connector sets gateway = true: nothing to connect");
            }
            let health = tokio::spawn({
                let deployment = deployment.clone();
                let shutdown = shutdown.clone();
                let app = crate::health::router(deployment.store.clone());
                async move { roles::serve_http(app, listener, shutdown, &deployment).await }
            });
            crate::discord_gateway::run(deployment, shutdown).await?;
            health.await?
        }
        Command::Worker => {
            let listener = roles::bind(&settings.worker.listen).await?;
            let deployment = Deployment::new(settings).await?;
            roles::run_worker(deployment, Some(listener), shutdown).await
        }
        Command::All {
            migrate: migrate_first,
        } => {
            let listener = roles::bind(&settings.receiver.listen).await?;
            let deployment = Deployment::new(settings).await?;
            if migrate_first {
                migrate(&deployment).await?;
            }
            let app = crate::receiver::router(deployment.clone())
                .merge(crate::admin::router(deployment.clone()));
            let receiver = tokio::spawn({
                let deployment = deployment.clone();
                let shutdown = shutdown.clone();
                async move { roles::serve_http(app, listener, shutdown, &deployment).await }
            });
            let gateway = tokio::spawn(crate::discord_gateway::run(
                deployment.clone(),
                shutdown.clone(),
            ));
            let worker = roles::run_worker(deployment, None, shutdown).await;
            receiver.await??;
            gateway.await??;
            worker
        }
        Command::Admin {
            command: None,
            client: _,
        } => {
            let listener = roles::bind(&settings.admin.listen).await?;
            if settings.admin.tokens.is_empty() {
                tracing::warn!(
                    "admin.tokens is empty: every admin request will be refused with 401"
                );
            }
            let deployment = Deployment::new(settings).await?;
            let app = crate::admin::router(deployment.clone())
                .merge(crate::health::router(deployment.store.clone()));
            roles::serve_http(app, listener, shutdown, &deployment).await
        }
        // Answered in `main`.
        Command::Admin {
            command: Some(_), ..
        }
        | Command::Identity { .. }
        | Command::Config { .. }
        | Command::Dev { .. }
        | Command::Send { .. } => Ok(()),
    }
}

/// An identity id, or the identity of an account given as CONNECTOR:SENDER_ID.
async fn resolve_person(store: &crate::store::Store, person: &str) -> anyhow::Result<uuid::Uuid> {
    if let Ok(id) = person.parse::<uuid::Uuid>() {
        return Ok(id);
    }
    let (connector, sender) = split_account(person)?;
    store
        .identity_of(connector, sender)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no account {person}: it has never written to us"))
}

fn split_account(account: &str) -> anyhow::Result<(&str, &str)> {
    account
        .split_once(':')
        .filter(|(c, s)| !c.is_empty() && !s.is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "`{account}` is neither an identity id nor an account as CONNECTOR:SENDER_ID"
            )
        })
}

/// Runs an `identity` subcommand; the text (or JSON) to print.
async fn identity_command(
    store: &crate::store::Store,
    command: IdentityCommand,
    json: bool,
) -> anyhow::Result<String> {
    let describe = |id: uuid::Uuid, accounts: Vec<crate::store::Account>| {
        if json {
            serde_json::json!({"identity": id, "accounts": accounts}).to_string()
        } else {
            let mut out = format!("identity {id}");
            for account in accounts {
                out.push_str(&format!(
                    "\n  {} ({}){}",
                    account.key(),
                    account.channel,
                    account
                        .display_name
                        .map(|n| format!(" \"{n}\""))
                        .unwrap_or_default()
                ));
            }
            out
        }
    };
    match command {
        IdentityCommand::Show { person } => {
            let id = resolve_person(store, &person).await?;
            let accounts = store.accounts(id).await?;
            anyhow::ensure!(!accounts.is_empty(), "no identity {id}");
            Ok(describe(id, accounts))
        }
        IdentityCommand::Link { person, other } => {
            let a = resolve_person(store, &person).await?;
            let b = resolve_person(store, &other).await?;
            let survivor = store
                .link_identities(a, b)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no identity {a} or {b}"))?;
            Ok(describe(survivor, store.accounts(survivor).await?))
        }
        IdentityCommand::Unlink { account } => {
            let (connector, sender) = split_account(&account)?;
            let id = store
                .unlink_account(connector, sender)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no account {account}"))?;
            Ok(describe(id, store.accounts(id).await?))
        }
        IdentityCommand::Forget { person } => {
            let id = resolve_person(store, &person).await?;
            let report = store
                .forget_identity(id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no identity {id}"))?;
            Ok(if json {
                serde_json::json!({"identity": id, "deleted": report}).to_string()
            } else {
                format!(
                    "forgot identity {id}: deleted {} account(s), {} session(s), {} inbound \
                     message(s), {} transcript message(s), {} turn(s), {} deliver(ies), {} \
                     fact(s); dropped {} group summar(ies)",
                    report.accounts,
                    report.sessions,
                    report.inbound_events,
                    report.messages,
                    report.turns,
                    report.deliveries,
                    report.memories,
                    report.summaries_dropped
                )
            })
        }
    }
}
