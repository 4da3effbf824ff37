//! The `autobuilder` command: `serve` runs the service, `live` the websocket server, `hooks sync`
//! sets up webhooks, `check` validates a recipes checkout.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use std::sync::Arc;

use autobuilder::app::{App, Role};
use autobuilder::build::reload::{apply_rules, hooked_repositories, set_up_hooks};
use autobuilder::build::shipped_log::RemoteLogs;
use autobuilder::build::worker::Claims;
use autobuilder::bus::Bus;
use autobuilder::config::{Config, LogFormat};
use autobuilder::github::api::GithubApi;
use autobuilder::github::hook_setup::Change;
use autobuilder::live::Live;
use autobuilder::recipes::RecipeSet;
use autobuilder::store::{Backend, Store};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Builds pushed commits in Docker, publishes their artifacts, reports GitHub statuses")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: webhooks, builds, build API and monitor page.
    Serve {
        /// Configuration file (see config.sample.toml); AUTOBUILDER_* variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Once listening, write the bound address (e.g. 127.0.0.1:5560) to this file: for scripts
        /// and tests that listen on port 0.
        #[arg(long)]
        address_file: Option<PathBuf>,
    },
    /// Run a live websocket server: build events from Redis to the monitor pages. Needs [redis] url;
    /// several may run at once. Without Redis, `serve` carries the websocket itself.
    Live {
        /// The configuration file of the service ([redis] and [live] are read).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Once listening, write the bound address (e.g. 127.0.0.1:3333) to this file: for scripts
        /// and tests that listen on port 0.
        #[arg(long)]
        address_file: Option<PathBuf>,
    },
    /// Run builds on this host's Docker engine, taken from the queue of the PostgreSQL history that
    /// `serve` uses (same configuration file; `[worker]` names this worker and its concurrency).
    Worker {
        /// The configuration file of the service; this host's own `[worker] name` and `data_dir`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Manage the GitHub webhooks of the recipes and tracked repositories.
    Hooks {
        /// What to do with the webhooks.
        #[command(subcommand)]
        action: HooksAction,
    },
    /// Validate a recipes checkout: print every problem, exit 1 on any (or when it holds no recipe).
    Check {
        /// Root of the recipes repository checkout.
        dir: PathBuf,
        /// The service's configuration file: its [builds] caps (max_timeout_minutes, max_memory, ...)
        /// are applied as `serve` applies them. Without it, the defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The project these recipes belong to (its image namespace and `images_from` apply);
        /// default: the one project of --config, if it has one.
        #[arg(long)]
        project: Option<String>,
    },
}

#[derive(Subcommand)]
enum HooksAction {
    /// Give every tracked repository and every recipes repository exactly one webhook to
    /// <public_url>/build/<project>/hook with the project's secret and the events push,
    /// pull_request and issue_comment; print what changed. Exit 1 when a repository failed.
    Sync {
        /// The service's configuration file ([github] credentials, public_url, [projects.*]).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Only print what would change.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, address_file } => serve(config, address_file),
        Command::Live { config, address_file } => live(config, address_file),
        Command::Worker { config } => worker(config),
        Command::Hooks { action: HooksAction::Sync { config, dry_run } } => hooks_sync(config, dry_run),
        Command::Check { dir, config, project } => check(&dir, config, project),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("autobuilder: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn,octocrab=warn".into());
    match format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
    }
}

/// How often `serve` and `worker` check that they still hold their claims on a PostgreSQL history.
const CLAIMS_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

fn serve(config_path: Option<PathBuf>, address_file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path.as_deref())?;
    init_logging(config.log_format);
    rustls::crypto::ring::default_provider().install_default().ok();
    if config.projects.is_empty() {
        tracing::warn!(
            "no project is configured: every webhook will be refused; add a [projects.NAME] table (see config.sample.toml)"
        );
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        // The port first: a second instance on the same port stops here, before it touches anything.
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let app = App::build(config, Role::Serve).await?;
        app.load_recipes().await;
        autobuilder::build::resume(&app).await.context("cannot take over the builds of the previous run")?;
        tokio::spawn(autobuilder::build::sweep_lost(app.clone()));
        tokio::spawn(autobuilder::build::reload::follow_other_serves(app.clone()));
        if app.builds_here() && app.store.backend() == Backend::Postgres {
            // The builds starting from a committed image: they run on the engine that holds it.
            let app = app.clone();
            tokio::spawn(async move {
                let fault = autobuilder::build::worker::work(app, Claims::Chained).await;
                tracing::error!("stopped taking the builds that start from a committed image: {fault:#}");
            });
        }
        autobuilder::server::intake::act_on_unprocessed(&app).await?;
        prune(&app).await;
        tokio::spawn(retention(app.clone()));
        tracing::info!("listening on http://{}", listener.local_addr()?);
        write_address(address_file.as_deref(), listener.local_addr()?)?;
        let store = app.store.clone();
        let router = autobuilder::server::router(app)?;
        let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let serving = axum::serve(listener, service).with_graceful_shutdown(shutdown_signal());
        tokio::select! {
            served = serving.into_future() => served?,
            lost = store.hold_claims(CLAIMS_CHECK) => return Err(lost),
        }
        tracing::info!(
            "stopped taking webhooks; running builds are handed over to the next start, which re-attaches them"
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// Writes `address` to `file` (`--address-file`), whole: a reader never sees half of it.
fn write_address(file: Option<&Path>, address: std::net::SocketAddr) -> anyhow::Result<()> {
    let Some(file) = file else {
        return Ok(());
    };
    let partial = file.with_extension("partial");
    std::fs::write(&partial, format!("{address}\n"))
        .and_then(|()| std::fs::rename(&partial, file))
        .with_context(|| format!("cannot write the address to --address-file {}", file.display()))
}

/// Forgets old history and logs per `[retention]`: once before serving, then hourly.
async fn retention(app: Arc<App>) {
    let mut hourly = tokio::time::interval(std::time::Duration::from_secs(3600));
    hourly.tick().await; // the first tick is now: that pass ran before serving
    loop {
        hourly.tick().await;
        prune(&app).await;
    }
}

async fn prune(app: &App) {
    let retention = &app.config.retention;
    if retention.days == 0 && retention.builds == 0 {
        return;
    }
    let max_age = (retention.days > 0).then(|| retention.days as i64 * 24 * 3600 * 1000);
    let max_count = (retention.builds > 0).then_some(retention.builds as i64);
    match app.store.prune(max_age, max_count).await {
        Ok(pruned) => {
            for id in &pruned {
                autobuilder::build::log::remove_log(&app.config.logs_dir(), *id).await;
            }
            if !pruned.is_empty() {
                tracing::info!("retention: forgot {} builds and their logs", pruned.len());
            }
        }
        Err(e) => tracing::warn!("retention failed: {e:#}"),
    }
}

fn live(config_path: Option<PathBuf>, address_file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path.as_deref())?;
    init_logging(config.log_format);
    if config.redis.url.is_empty() {
        anyhow::bail!(
            "autobuilder live needs [redis] url (AUTOBUILDER_REDIS_URL); without Redis, serve carries /live itself"
        );
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let bus = Bus::redis_subscriber(&config.redis.url)?;
        // With a PostgreSQL history, the logs of builds on other hosts are copied from it.
        let store = match config.database.url.expose() {
            "" => None,
            url => Some(Store::connect(url, &config.data_dir).await?),
        };
        let remote_logs = Arc::new(RemoteLogs::new(store, config.logs_dir()));
        let live = Live::new(bus, config.logs_dir(), &config.live, Some(remote_logs));
        let router = autobuilder::live::dedicated_router(Arc::new(live));
        let listener = tokio::net::TcpListener::bind(&config.live.listen)
            .await
            .with_context(|| format!("cannot listen on [live] listen = {}", config.live.listen))?;
        tracing::info!("live websocket listening on ws://{}/live", listener.local_addr()?);
        write_address(address_file.as_deref(), listener.local_addr()?)?;
        let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(listener, service).with_graceful_shutdown(shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

fn worker(config_path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path.as_deref())?;
    init_logging(config.log_format);
    if config.database.url.expose().is_empty() {
        anyhow::bail!(
            "autobuilder worker needs the PostgreSQL history that serve uses: set [database] url \
             (AUTOBUILDER_DATABASE_URL) in both"
        );
    }
    if config.redis.url.is_empty() {
        tracing::warn!("[redis] url is empty: the monitor pages will not show this worker's builds live");
    }
    rustls::crypto::ring::default_provider().install_default().ok();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let app = App::build(config, Role::Worker).await?;
        autobuilder::build::resume(&app).await.context("cannot take over the builds of this worker's previous run")?;
        tokio::spawn(autobuilder::build::sweep_lost(app.clone()));
        // The recipes, for the dependents of the images this worker makes (`rebuild_dependents`),
        // loaded before the first claim.
        autobuilder::build::reload::load_as_loaded(&app).await;
        tokio::spawn(autobuilder::build::reload::follow_other_serves(app.clone()));
        let store = app.store.clone();
        tokio::select! {
            fault = autobuilder::build::worker::work(app, Claims::Any) => return Err(fault),
            lost = store.hold_claims(CLAIMS_CHECK) => return Err(lost),
            () = shutdown_signal() => {}
        }
        tracing::info!(
            "stopped taking builds; running builds are re-attached when this worker starts again within \
             [worker] lease_seconds, and taken over by another worker after that"
        );
        Ok(ExitCode::SUCCESS)
    })
}

fn hooks_sync(config_path: Option<PathBuf>, dry_run: bool) -> anyhow::Result<ExitCode> {
    let Some(config_path) = config_path else {
        anyhow::bail!("hooks sync needs the service's configuration: autobuilder hooks sync --config config.toml");
    };
    let config = Config::load(Some(&config_path))?;
    if config.projects.is_empty() {
        anyhow::bail!("{} configures no project: there is no webhook to set up", config_path.display());
    }
    rustls::crypto::ring::default_provider().install_default().ok();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let api = GithubApi::new(&config.github)?
            .context("hooks sync needs [github] token, or app_id, private_key_path and installation_id")?;
        let mut failed = false;
        for project in config.projects.keys() {
            let repos = hooked_repositories(&config, project)
                .await
                .with_context(|| format!("cannot read the recipes of project {project}"))?;
            for (repo, result) in set_up_hooks(&api, &config, project, repos, dry_run).await {
                match result {
                    Ok(changes) => {
                        for change in changes {
                            let would = if dry_run && change != Change::Unchanged { "would have " } else { "" };
                            println!("{project} {repo}: {would}{change}");
                        }
                    }
                    Err(e) => {
                        println!("{project} {repo}: failed: {e:#}");
                        failed = true;
                    }
                }
            }
        }
        Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("can listen for SIGTERM");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn check(dir: &std::path::Path, config_path: Option<PathBuf>, project: Option<String>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path.as_deref())?;
    let only = (config.projects.len() == 1).then(|| config.projects.keys().next().cloned()).flatten();
    let project = project.or(only).unwrap_or_else(|| "check".into());
    if config_path.is_some() && !config.projects.is_empty() && !config.projects.contains_key(&project) {
        anyhow::bail!(
            "--project {project} is not configured in the --config file: name one of {}",
            config.projects.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let project = project.as_str();
    let mut set = RecipeSet::parse_dir(project, dir).with_context(|| format!("cannot read {}", dir.display()))?;
    apply_rules(&mut set, &config, project);
    for recipe in set.recipes.values() {
        let scripts: Vec<&str> = recipe.scripts.iter().map(|s| s.script.as_str()).collect();
        println!("ok       {}: {} {} builds {}", recipe.file, recipe.repository, recipe.branch, scripts.join(", "));
    }
    for problem in &set.problems {
        println!("problem  {}: {}", problem.file, problem.reason);
    }
    println!("{} recipes, {} problems", set.recipes.len(), set.problems.len());
    if set.recipes.is_empty() && set.problems.is_empty() {
        println!(
            "warning: no recipe found in {}: recipes are <org>/<repo>/<branch>.yaml files at its root",
            dir.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(if set.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
