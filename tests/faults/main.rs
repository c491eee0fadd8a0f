//! The fault suite: DESIGN.md's guarantees checked by breaking things on
//! purpose, with real processes.
//!
//! Each scenario starts a `microclaw receiver`, two `microclaw worker`s and the
//! admin role as OS processes, on a database of its own on a Postgres cluster
//! and a Redis the suite owns (so it can stop and restart them), with a fake
//! model and a fake platform on loopback. It drives steady traffic, breaks
//! something, and balances the obligation ledger (`ledger.rs`). At the end a
//! summary table is printed; any violation fails the run.
//!
//! Run alone: `cargo test --test faults` (positional arguments select scenarios
//! by name, like a test filter). Needs the PostgreSQL server binaries and
//! `redis-server` (`.ci/run` installs both).

mod cluster;
mod fakes;
mod ledger;
mod servers;

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use cluster::{Cluster, Role, Tuning};
use fakes::{FakeModel, FakePlatform, ModelMode};
use ledger::{Failures, Traffic, Verdict};
use servers::{Postgres, Redis};

/// What the suite shares between scenarios.
struct Suite {
    dir: PathBuf,
    postgres: Postgres,
    redis: Redis,
}

/// One scenario's running parts.
struct Run {
    cluster: Cluster,
    traffic: Traffic,
    model: FakeModel,
    backup: FakeModel,
    platform: FakePlatform,
    /// Messages whose dead reply an operator retried (see `Failures::retried`).
    retried: std::collections::BTreeSet<String>,
}

/// A row of the summary table.
struct Row {
    scenario: &'static str,
    verdict: Verdict,
    /// Checks of the scenario itself beyond the ledger, failed.
    failed_checks: Vec<String>,
    seconds: f64,
}

const SESSIONS: u32 = 12;
const RATE: f64 = 8.0;
const LOAD: Duration = Duration::from_secs(24);

fn plain(id: &str) -> String {
    format!("{id} hello, what is on my calendar tomorrow?")
}

impl Suite {
    async fn start(name: &str, tuning: Tuning, suite: &Suite) -> anyhow::Result<Run> {
        let model = FakeModel::start(Duration::from_millis(150)).await?;
        let backup = FakeModel::start(Duration::from_millis(150)).await?;
        let platform = FakePlatform::start().await?;
        let mut cluster = Cluster::create(
            name,
            &suite.dir,
            &suite.postgres,
            &suite.redis,
            &model,
            &backup,
            &platform,
            tuning,
        )
        .await?;
        cluster.start_all().await?;
        let traffic = Traffic::new(&cluster.receiver_url);
        Ok(Run {
            cluster,
            traffic,
            model,
            backup,
            platform,
            retried: Default::default(),
        })
    }
}

impl Run {
    /// The steady traffic every scenario breaks things under, in the background.
    fn steady_load(&self) -> tokio::task::JoinHandle<()> {
        let traffic = self.traffic.clone();
        tokio::spawn(async move { traffic.run(SESSIONS, RATE, LOAD, plain).await })
    }

    /// The messages whose reply the admin queue shows as dead.
    async fn dead(&self) -> anyhow::Result<Failures> {
        let mut failures = Failures {
            retried: self.retried.clone(),
            ..Failures::default()
        };
        let page = self
            .cluster
            .admin(
                reqwest::Method::GET,
                "/deliveries?status=dead&limit=500",
                None,
            )
            .await?;
        for item in page["items"].as_array().into_iter().flatten() {
            let id = item["id"].as_str().unwrap_or_default();
            let detail = self
                .cluster
                .admin(reqwest::Method::GET, &format!("/deliveries/{id}"), None)
                .await?;
            for message in detail["target"]["in_reply_to"]
                .as_array()
                .into_iter()
                .flatten()
            {
                failures.dead.extend(message.as_str().map(str::to_owned));
            }
        }
        Ok(failures)
    }

    /// Waits (up to `deadline`) until every acknowledged message is answered or
    /// visibly dead, lets late duplicates arrive, and balances the ledger.
    async fn settle(&self, deadline: Duration) -> anyhow::Result<(Verdict, Failures)> {
        let until = Instant::now() + deadline;
        loop {
            let failures = self.dead().await?;
            let done = ledger::settled(&self.traffic.sent(), &self.platform.arrivals(), &failures);
            if done || Instant::now() > until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Anything sent twice would arrive within a couple of seconds.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let failures = self.dead().await?;
        let verdict = ledger::judge(&self.traffic, &self.platform.arrivals(), &failures);
        Ok((verdict, failures))
    }

    async fn finish(
        self,
        scenario: &'static str,
        started: Instant,
        mut failed_checks: Vec<String>,
    ) -> anyhow::Result<Row> {
        let (verdict, _) = self.settle(Duration::from_secs(90)).await?;
        if self.platform.unreadable() > 0 {
            failed_checks.push(format!("{} unreadable replies", self.platform.unreadable()));
        }
        failed_checks.extend(self.cluster.stop().await);
        Ok(Row {
            scenario,
            verdict,
            failed_checks,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// 1. SIGKILL a worker mid-turn, again and again, under load.
async fn worker_kills(suite: &mut Suite) -> anyhow::Result<Row> {
    let started = Instant::now();
    let mut run = Suite::start("worker_kills", Tuning::default(), suite).await?;
    // Turns long enough for kills to land in them.
    run.model.set_latency(Duration::from_millis(800));
    let load = run.steady_load();
    let mut kills = 0;
    while !load.is_finished() {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let worker = Role::Worker(kills % 2);
        run.cluster.kill(worker).await;
        kills += 1;
        run.cluster.start(worker).await?;
    }
    load.await?;
    let mut checks = Vec::new();
    if kills < 5 {
        checks.push(format!("only {kills} kills"));
    }
    // Settle first: the killed turns rerun within the recovery window.
    run.settle(Duration::from_secs(90)).await?;
    let pool = sqlx::PgPool::connect(&run.cluster.database_url).await?;
    let turns: i64 = sqlx::query_scalar("SELECT count(*) FROM turns")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    let (calls, _) = run.model.calls();
    if calls <= turns as u64 {
        checks.push(format!(
            "no kill landed in a turn ({calls} model calls for {turns} turns)"
        ));
    }
    run.finish("SIGKILL a worker every 3 s", started, checks)
        .await
}

/// 2. Postgres goes down (a crash: immediate stop) under load and comes back.
async fn postgres_restart(suite: &mut Suite) -> anyhow::Result<Row> {
    let started = Instant::now();
    let run = Suite::start("postgres_restart", Tuning::default(), suite).await?;
    let load = run.steady_load();
    tokio::time::sleep(Duration::from_secs(6)).await;
    suite.postgres.stop("immediate").await?;
    run.traffic.outage_begins();
    // Give the receiver time to be asked while the database is away.
    tokio::time::sleep(Duration::from_secs(6)).await;
    run.traffic.outage_over();
    suite.postgres.start().await?;
    load.await?;
    let mut checks = Vec::new();
    if run.traffic.unavailable_in_outage() == 0 {
        checks.push("the receiver answered no 503 while the database was down".into());
    }
    run.finish("Postgres crash and restart", started, checks)
        .await
}

/// 3. Redis is killed under load and comes back empty.
async fn redis_restart(suite: &mut Suite) -> anyhow::Result<Row> {
    let started = Instant::now();
    let run = Suite::start("redis_restart", Tuning::default(), suite).await?;
    let load = run.steady_load();
    tokio::time::sleep(Duration::from_secs(6)).await;
    suite.redis.kill().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    suite.redis.start().await?;
    load.await?;
    // The receivers went back to Redis: it came back empty, so any dedup entry
    // there was written after the restart.
    let mut checks = Vec::new();
    let mut redis = redis::Client::open(suite.redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("faults_redis_restart:dedup:*")
        .query_async(&mut redis)
        .await?;
    if keys.is_empty() {
        checks.push("nothing was written to Redis after it came back".into());
    }
    run.finish("Redis killed and restarted", started, checks)
        .await
}

/// 4. Every webhook three times at once, and once more a minute later.
async fn duplicate_storm(suite: &mut Suite) -> anyhow::Result<Row> {
    let started = Instant::now();
    let run = Suite::start("duplicate_storm", Tuning::default(), suite).await?;
    let traffic = run.traffic.clone();
    let storm = |traffic: Traffic| async move {
        let every = Duration::from_secs_f64(1.0 / RATE);
        let mut sends = tokio::task::JoinSet::new();
        for k in 0..(RATE * 15.0) as u32 {
            let (session, seq) = (k % SESSIONS, k / SESSIONS + 1);
            let traffic = traffic.clone();
            sends.spawn(async move {
                let text = plain(&ledger::message_id(session, seq));
                let copies =
                    (0..3).map(|_| traffic.deliver(session, seq, &text, Duration::from_secs(60)));
                futures::future::join_all(copies).await;
            });
            tokio::time::sleep(every).await;
        }
        while sends.join_next().await.is_some() {}
    };
    let first = Instant::now();
    storm(traffic.clone()).await;
    // The platform's retry, a minute after each first send.
    tokio::time::sleep_until((first + Duration::from_secs(60)).into()).await;
    storm(traffic).await;
    let model_calls = run.model.calls().0 + run.backup.calls().0;
    let acknowledged = run
        .traffic
        .sent()
        .values()
        .filter(|s| s.acknowledged)
        .count() as u64;
    let mut checks = Vec::new();
    // Collect mode may fold messages into fewer turns, never more.
    if model_calls > acknowledged {
        checks.push(format!(
            "{model_calls} model calls for {acknowledged} messages"
        ));
    }
    run.finish(
        "duplicate storm (3x now, 1x a minute later)",
        started,
        checks,
    )
    .await
}

/// 5. The primary model fails: all calls for a while (breakers open), then
///    every other call with each kind of fault.
async fn model_faults(suite: &mut Suite) -> anyhow::Result<Row> {
    let started = Instant::now();
    let run = Suite::start("model_faults", Tuning::default(), suite).await?;
    run.model.set_mode(ModelMode::Down);
    let load = run.steady_load();
    let mut checks = Vec::new();
    tokio::time::sleep(Duration::from_secs(6)).await;
    if run
        .cluster
        .worker_metric_max("microclaw_breaker_open")
        .await
        < 1.0
    {
        checks.push("no breaker opened while the primary model was down".into());
    }
    run.model.set_mode(ModelMode::Flaky);
    load.await?;
    run.model.set_mode(ModelMode::Healthy);
    // A probe after the cool-down closes the breakers again.
    let until = Instant::now() + Duration::from_secs(20);
    let mut seq = 1000;
    while run
        .cluster
        .worker_metric_max("microclaw_breaker_open")
        .await
        > 0.0
    {
        if Instant::now() > until {
            checks.push("a breaker stayed open after the model recovered".into());
            break;
        }
        let id = ledger::message_id(SESSIONS, seq);
        run.traffic
            .deliver(SESSIONS, seq, &plain(&id), Duration::from_secs(10))
            .await;
        seq += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (_, faults) = run.model.calls();
    if faults == 0 {
        checks.push("the model never failed".into());
    }
    run.finish("model faults (down, then flaky)", started, checks)
        .await
}

/// 6. The platform rate-limits and fails, and refuses some conversations for
///    good; the dead replies are retried from the admin API and arrive once.
///    Now and then a reply of another conversation dies too, its attempts used
///    up by the flaky platform; the later replies of its conversation then go
///    ahead of it, so the retry delivers it after them (`Failures::retried`).
async fn platform_faults(suite: &mut Suite) -> anyhow::Result<Row> {
    let started = Instant::now();
    let mut run = Suite::start("platform_faults", Tuning::default(), suite).await?;
    run.platform.set_flaky(true);
    run.platform.set_refusing(true);
    run.traffic.run(SESSIONS, RATE, LOAD, plain).await;
    let mut checks = Vec::new();
    let (_, dead) = run.settle(Duration::from_secs(90)).await?;
    let refused: Vec<String> = run
        .traffic
        .sent()
        .into_iter()
        .filter(|(_, s)| {
            s.acknowledged && fakes::refused_conversation(&format!("dm-{}", s.session))
        })
        .map(|(id, _)| id)
        .collect();
    let invisible = refused.iter().filter(|id| !dead.dead.contains(*id)).count();
    if refused.is_empty() || invisible > 0 {
        checks.push(format!(
            "{invisible} of {} refused replies not in the admin queue as dead",
            refused.len()
        ));
    }
    run.platform.set_refusing(false);
    run.platform.set_flaky(false);
    // An operator's bulk retry, sent twice: the second finds nothing dead left.
    let mut retried = Vec::new();
    for _ in 0..2 {
        let answer = run
            .cluster
            .admin(
                reqwest::Method::POST,
                "/deliveries/retry",
                Some(serde_json::json!({"filter": {}})),
            )
            .await?;
        retried.push(answer["results"].as_array().map_or(0, Vec::len));
    }
    if retried[0] == 0 || retried[1] != 0 {
        checks.push(format!(
            "bulk retries selected {retried:?} deliveries (expected some, then none)"
        ));
    }
    run.retried = dead.dead;
    run.finish("platform faults + admin retry", started, checks)
        .await
}

/// 7. A message whose turn always fails (the store refuses to record it).
async fn poison(suite: &mut Suite) -> anyhow::Result<Row> {
    let started = Instant::now();
    let run = Suite::start("poison", Tuning::default(), suite).await?;
    let pool = sqlx::PgPool::connect(&run.cluster.database_url).await?;
    for statement in [
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.status = 'completed' AND EXISTS (SELECT 1 FROM inbound_events e
                WHERE e.session_id = NEW.session_id AND e.seq BETWEEN NEW.first_seq AND NEW.last_seq
                  AND e.text LIKE '%poison%') THEN
             RAISE EXCEPTION 'poisoned turn';
           END IF;
           RETURN NEW;
         END $$",
        "CREATE TRIGGER poison BEFORE INSERT ON turns FOR EACH ROW EXECUTE FUNCTION poison()",
    ] {
        sqlx::query(statement).execute(&pool).await?;
    }
    pool.close().await;
    fn text(id: &str) -> String {
        // The second message of one person is poison.
        if id == "m3x2" {
            format!("{id} poison")
        } else {
            plain(id)
        }
    }
    run.traffic.run(SESSIONS, RATE, LOAD, text).await;
    let mut checks = Vec::new();
    let (verdict, _) = run.settle(Duration::from_secs(90)).await?;
    let failed = run
        .cluster
        .admin(reqwest::Method::GET, "/turns?status=failed", None)
        .await?;
    let failed = failed["items"].as_array().map_or(0, Vec::len);
    if failed == 0 {
        checks.push("the poison message's turn is not in the failed-turn list".into());
    }
    if verdict.apologies == 0 {
        checks.push("the poison message got no apology".into());
    }
    let later: usize = run
        .traffic
        .sent()
        .into_iter()
        .filter(|(_, s)| s.session == 3 && s.seq > 2)
        .count();
    if later == 0 {
        checks.push("the poisoned person sent nothing after the poison".into());
    }
    run.finish("poison message", started, checks).await
}

/// 8. SIGTERM to every process under load, then everything restarted.
async fn terminate_all(suite: &mut Suite) -> anyhow::Result<Row> {
    let started = Instant::now();
    let mut run = Suite::start("terminate_all", Tuning::default(), suite).await?;
    let load = run.steady_load();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut checks = Vec::new();
    for (name, status) in run.cluster.terminate_all().await {
        if !status.is_some_and(|s| s.success()) {
            checks.push(format!(
                "{name} did not exit cleanly on SIGTERM ({status:?})"
            ));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.cluster.start_all().await?;
    load.await?;
    run.finish("SIGTERM every process, restart", started, checks)
        .await
}

type Scenario =
    for<'a> fn(&'a mut Suite) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<Row>> + 'a>>;

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        [$((stringify!($name), (|suite| Box::pin($name(suite))) as Scenario)),*]
    };
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<44} {:>8} {:>6} {:>8} {:>6} {:>5} {:>5} {:>5} {:>5} {:>7} {:>6}",
        "scenario",
        "messages",
        "acked",
        "answered",
        "apolog",
        "dead",
        "dup",
        "lost",
        "order",
        "resent",
        "secs"
    );
    for row in rows {
        let v = &row.verdict;
        println!(
            "{:<44} {:>8} {:>6} {:>8} {:>6} {:>5} {:>5} {:>5} {:>5} {:>7} {:>6.0}",
            row.scenario,
            v.messages,
            v.acknowledged,
            v.answered,
            v.apologies,
            v.dead,
            v.duplicates,
            v.lost,
            v.order_violations,
            v.resent,
            row.seconds
        );
    }
}

async fn run_suite(filters: Vec<String>) -> anyhow::Result<bool> {
    let dir = std::env::temp_dir().join(format!("microclaw-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut suite = Suite {
        postgres: Postgres::start_new(&dir).await?,
        redis: Redis::start_new().await?,
        dir: dir.clone(),
    };
    let mut rows = Vec::new();
    let mut ok = true;
    for (name, scenario) in scenarios![
        worker_kills,
        postgres_restart,
        redis_restart,
        duplicate_storm,
        model_faults,
        platform_faults,
        poison,
        terminate_all,
    ] {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        println!("faults: {name} …");
        let row = scenario(&mut suite).await?;
        let mut violations = row.verdict.violations();
        violations.extend(row.failed_checks.iter().cloned());
        if violations.is_empty() {
            println!("faults: {name} ok ({:.0} s)", row.seconds);
        } else {
            ok = false;
            println!("faults: {name} FAILED: {}", violations.join("; "));
            println!("        logs: {}", dir.join(name).display());
        }
        rows.push(row);
    }
    print_table(&rows);
    drop(suite);
    if ok {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(ok)
}

fn main() -> ExitCode {
    // Positional arguments filter scenarios; flags the test runner passes are ignored.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    microclaw::install_tls_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run_suite(filters)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("faults: the suite could not run: {e:#}");
            ExitCode::FAILURE
        }
    }
}
