//! The `microclaw` command line: one binary, one subcommand per role.

use std::{path::PathBuf, process::ExitCode};

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
    /// Create the database if missing, apply migrations (the queue's and MicroClaw's), exit.
    Migrate,
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

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.config) {
        Ok(settings) => settings,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Config {
        command: ConfigCommand::Check,
    } = cli.command
    {
        return config_check(&cli.config, &settings);
    }
    crate::telemetry::init(&settings.log);
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
    match runtime.block_on(run(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "microclaw stopped with an error");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
            model.worst_case_turn_time().as_secs_f64(),
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
            let receiver = tokio::spawn(roles::serve_receiver(
                deployment.clone(),
                listener,
                shutdown.clone(),
            ));
            let worker = roles::run_worker(deployment, None, shutdown).await;
            receiver.await??;
            worker
        }
        // Answered in `main` before any runtime starts.
        Command::Config { .. } => Ok(()),
    }
}
