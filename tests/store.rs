//! The history store on both of its backends: every scenario runs on a new SQLite file and on a new
//! database of a real PostgreSQL (a throwaway cluster of the harness, see `common::Postgres`).

mod common;

use std::time::Duration;

use autobuilder::model::{
    Branch, BuildId, BuildKind, BuildStatus, CommitSha, CommitState, NewBuild, Outcome, RepoName,
};
use autobuilder::store::{Backend, HistoryFilter, Holder, OutboxStatus, Renewal, Store};
use common::Postgres;

/// A database of one backend, opened as often as a scenario likes.
enum Database {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Database {
    fn sqlite() -> Self {
        Database::Sqlite(tempfile::tempdir().unwrap())
    }

    fn postgres() -> Self {
        Database::Postgres(Postgres::shared().fresh_database())
    }

    async fn open(&self) -> Store {
        match self {
            Database::Sqlite(dir) => Store::open(dir.path()).await.unwrap(),
            Database::Postgres(url) => Store::open_postgres(url).await.unwrap(),
        }
    }
}

/// Each scenario as two tests, `sqlite::<name>` and `postgres::<name>`.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $scenario() {
                    super::$scenario(super::Database::sqlite()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $scenario() {
                    super::$scenario(super::Database::postgres()).await
                }
            )*
        }
    };
}

on_both_backends!(
    history_survives_reopening_and_filters,
    history_pages_with_a_cursor_and_keeps_its_filters,
    a_finished_build_and_its_status_are_stored_together,
    the_status_outbox_goes_out_in_order_and_retries,
    concurrent_copies_of_a_delivery_store_it_once,
    deliveries_are_stored_once,
    a_delivery_id_is_unique_per_project_only,
    stored_deliveries_follow_retention,
    reopening_migrates_nothing_again,
    a_build_taken_over_after_its_lease_ran_out_refuses_the_old_holders_writes,
    claims_of_queued_builds_keep_to_project_limits,
    concurrent_claims_take_each_build_once,
    a_build_behind_many_the_worker_may_not_run_is_claimed,
    log_chunks_are_fenced_and_a_retry_goes_on_after_what_is_stored,
    the_newest_image_is_recorded_under_its_lease_only,
    a_claim_within_the_limit_counts_every_host_and_knows_a_build_taken,
);

fn new_build(repo: &str, branch: &str, script: &str) -> NewBuild {
    NewBuild {
        kind: BuildKind::Build,
        project: "p".into(),
        repository: RepoName::parse(repo).unwrap(),
        branch: Branch::parse(branch).unwrap(),
        commit: Some(CommitSha::parse(&"a".repeat(40)).unwrap()),
        script: script.into(),
        baseimage: Some("busybox:latest".into()),
        message: Some("a commit".into()),
        author: None,
    }
}

fn ids(builds: &[autobuilder::model::Build]) -> Vec<BuildId> {
    builds.iter().map(|b| b.id).collect()
}

fn status(context: &str) -> OutboxStatus {
    OutboxStatus {
        id: 0,
        repository: RepoName::parse("o/a").unwrap(),
        commit: CommitSha::parse(&"b".repeat(40)).unwrap(),
        state: CommitState::Failure,
        context: context.into(),
        description: "script exited 1".into(),
        target_url: "http://autobuilder.test/build/1".into(),
        attempts: 0,
        next_attempt: 0,
    }
}

async fn history_survives_reopening_and_filters(database: Database) {
    let store = database.open().await;
    let a = store.insert(&new_build("o/a", "master", "build.sh"), Some("{\"x\":1}")).await.unwrap().id;
    let b = store.insert(&new_build("o/b", "dev", "build.sh"), None).await.unwrap().id;
    let (_, lease) = store.claim(a, "w1", Duration::from_secs(30)).await.unwrap().unwrap();
    let failed = Outcome::failed(BuildStatus::Failure, "script exited 1");
    store.finish(a, &failed, None, Holder::Lease(lease)).await.unwrap().unwrap();
    drop(store);

    let store = database.open().await;
    let all = store.history(&HistoryFilter::default()).await.unwrap();
    assert_eq!(ids(&all), vec![b, a]);
    assert_eq!(all[1].new.baseimage.as_deref(), Some("busybox:latest"));
    assert_eq!(all[1].new.commit.as_ref().unwrap().as_str(), "a".repeat(40));
    let failed =
        store.history(&HistoryFilter { status: Some(BuildStatus::Failure), ..Default::default() }).await.unwrap();
    assert_eq!(ids(&failed), vec![a]);
    assert_eq!(failed[0].outcome.error.as_deref(), Some("script exited 1"));
    assert!(failed[0].started.is_some() && failed[0].ended.is_some());
    let dev = store
        .history(&HistoryFilter { branch: Some("dev".into()), limit: Some(5), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(ids(&dev), vec![b]);
    let repo = HistoryFilter { repository: Some("o/a".into()), ..Default::default() };
    assert_eq!(ids(&store.history(&repo).await.unwrap()), vec![a]);
    assert_eq!(store.settings(a).await.unwrap().as_deref(), Some("{\"x\":1}"));
    assert_eq!(store.settings(b).await.unwrap(), None);

    assert_eq!(ids(&store.active().await.unwrap()), vec![b]);
    let mut counts = store.count_by_status().await.unwrap();
    counts.sort_by_key(|(status, _)| status.as_str());
    assert_eq!(counts, vec![(BuildStatus::Failure, 1), (BuildStatus::Queued, 1)]);
    let pruned = store.prune(None, Some(1)).await.unwrap();
    assert_eq!(pruned, vec![a], "only finished entries beyond the newest one go");
    assert!(store.get(a).await.unwrap().is_none());
    assert!(store.get(b).await.unwrap().is_some());
    store.ping().await.unwrap();
}

async fn history_pages_with_a_cursor_and_keeps_its_filters(database: Database) {
    let store = database.open().await;
    let mut built = Vec::new();
    for n in 0..7 {
        let script = if n % 2 == 0 { "build.sh" } else { "docs.sh" };
        built.push(store.insert(&new_build("o/a", "master", script), None).await.unwrap().id);
    }
    store
        .finish(built[1], &Outcome::failed(BuildStatus::Failure, "exit 1"), None, Holder::Queue)
        .await
        .unwrap()
        .unwrap();
    let page = |before: Option<BuildId>| HistoryFilter { limit: Some(3), before, ..Default::default() };
    assert_eq!(ids(&store.history(&page(None)).await.unwrap()), vec![built[6], built[5], built[4]]);
    assert_eq!(ids(&store.history(&page(Some(built[4]))).await.unwrap()), vec![built[3], built[2], built[1]]);
    assert_eq!(ids(&store.history(&page(Some(built[1]))).await.unwrap()), vec![built[0]]);

    let docs = HistoryFilter { script: Some("docs.sh".into()), before: Some(built[5]), ..Default::default() };
    assert_eq!(ids(&store.history(&docs).await.unwrap()), vec![built[3], built[1]]);
    let finished = HistoryFilter { finished: true, ..Default::default() };
    assert_eq!(ids(&store.history(&finished).await.unwrap()), vec![built[1]]);
    let reloads = HistoryFilter { kind: Some(BuildKind::Reload), ..Default::default() };
    assert!(store.history(&reloads).await.unwrap().is_empty());
}

async fn a_finished_build_and_its_status_are_stored_together(database: Database) {
    let store = database.open().await;
    let id = store.insert(&new_build("o/a", "master", "build.sh"), None).await.unwrap().id;
    let mut outcome = Outcome::failed(BuildStatus::Failure, "script exited 1");
    outcome.artifact = Some("a.tar.gz".into());
    let build =
        store.finish(id, &outcome, Some(&status("autobuilder/build.sh")), Holder::Queue).await.unwrap().unwrap();
    assert_eq!((build.outcome.status, build.outcome.artifact.as_deref()), (BuildStatus::Failure, Some("a.tar.gz")));
    assert!(build.started.is_some(), "a build that never ran still gets a start time");
    let queued = store.next_status().await.unwrap().expect("the final status is in the outbox");
    assert_eq!((queued.state, queued.context.as_str()), (CommitState::Failure, "autobuilder/build.sh"));

    // A build that is not there: neither the row nor its status is written.
    store.status_done(queued.id, None).await.unwrap();
    let other = status("autobuilder/other.sh");
    let missing = store.finish(BuildId(999_999), &outcome, Some(&other), Holder::Anyone);
    assert!(missing.await.unwrap().is_none());
    assert!(store.next_status().await.unwrap().is_none(), "the status went back with the failed update");
}

async fn a_build_taken_over_after_its_lease_ran_out_refuses_the_old_holders_writes(database: Database) {
    let store = database.open().await;
    let id = store.insert(&new_build("o/a", "master", "build.sh"), Some("{}")).await.unwrap().id;
    let short = Duration::from_millis(300);
    let (running, first) = store.claim(id, "w1", short).await.unwrap().expect("a queued build is claimed");
    assert_eq!((running.outcome.status, running.worker.as_deref()), (BuildStatus::Running, Some("w1")));
    assert!(store.claim(id, "w2", short).await.unwrap().is_none(), "a running build is claimed once");
    assert_eq!(store.renew(first, short).await.unwrap(), Renewal::Held { cancel: None });
    assert!(store.request_cancel(id, "cancelled by admin").await.unwrap());
    let asked = Renewal::Held { cancel: Some("cancelled by admin".into()) };
    assert_eq!(store.renew(first, short).await.unwrap(), asked, "the holder hears of the cancel when it renews");

    // w1 stops renewing (frozen): once its lease ran out, the build goes back to the queue.
    common::wait_until("the lease to run out", async || {
        store.expired_leases().await.unwrap().into_iter().find(|(build, _, _)| build.id == id)
    })
    .await;
    let expired = store.expired_leases().await.unwrap();
    let asked = Some("cancelled by admin".to_string());
    assert_eq!(
        expired.iter().map(|(_, lease, cancel)| (*lease, cancel.clone())).collect::<Vec<_>>(),
        vec![(first, asked)]
    );
    assert!(store.requeue(first).await.unwrap().is_none(), "a build asked to stop is not queued again");
    sqlx_reset_cancel(&database, id).await;
    // Its holder renews after all (it came back, or re-attached after a restart): not taken.
    assert_eq!(store.renew(first, short).await.unwrap(), Renewal::Held { cancel: None });
    assert!(store.requeue(first).await.unwrap().is_none(), "a renewed lease is not taken over");
    let lost = Outcome::failed(BuildStatus::Error, "worker w1 lost");
    assert!(store.finish(id, &lost, None, Holder::Expired(first)).await.unwrap().is_none(), "nor ended as lost");
    common::wait_until("the lease to run out again", async || {
        store.expired_leases().await.unwrap().into_iter().find(|(build, _, _)| build.id == id)
    })
    .await;
    let queued = store.requeue(first).await.unwrap().expect("queued again");
    assert_eq!((queued.outcome.status, queued.worker), (BuildStatus::Queued, None));
    assert!(store.requeue(first).await.unwrap().is_none(), "queued again once");
    let (_, second) =
        store.claim_next("w2", Duration::from_secs(30), &Default::default(), |_, _, _| true).await.unwrap().unwrap();
    assert_eq!((second.build, second.generation), (id, first.generation + 1));
    assert_eq!(store.get(id).await.unwrap().unwrap().worker.as_deref(), Some("w2"));

    // w1 wakes up: whatever it writes with its stale lease is refused, its status too.
    assert_eq!(store.renew(first, short).await.unwrap(), Renewal::Lost);
    let late = Outcome::plain(BuildStatus::Success);
    let final_status = status("autobuilder/build.sh");
    let stale = store.finish(id, &late, Some(&final_status), Holder::Lease(first));
    assert!(stale.await.unwrap().is_none(), "a stale lease writes nothing");
    let unclaimed = store.finish(id, &late, None, Holder::Queue);
    assert!(unclaimed.await.unwrap().is_none(), "a running build does not end as if it were queued");
    assert!(store.next_status().await.unwrap().is_none(), "no status of the stale holder was stored");
    assert_eq!(store.get(id).await.unwrap().unwrap().outcome.status, BuildStatus::Running);

    let failed = Outcome::failed(BuildStatus::Failure, "script exited 1");
    let ended = store.finish(id, &failed, Some(&final_status), Holder::Lease(second));
    let ended = ended.await.unwrap().expect("the current holder records the end");
    assert_eq!((ended.outcome.status, ended.worker.as_deref()), (BuildStatus::Failure, Some("w2")));
    assert_eq!(store.next_status().await.unwrap().unwrap().state, CommitState::Failure);
    assert_eq!(store.renew(second, short).await.unwrap(), Renewal::Lost, "an ended build holds no lease");
    assert!(store.expired_leases().await.unwrap().is_empty());
}

/// Forgets the stop asked of build `id` (as if none had been asked), straight in the database.
async fn sqlx_reset_cancel(database: &Database, id: BuildId) {
    let url = match database {
        Database::Sqlite(dir) => format!("sqlite://{}", dir.path().join("autobuilder.sqlite").display()),
        Database::Postgres(url) => url.clone(),
    };
    sqlx::any::install_default_drivers();
    let mut connection = <sqlx::AnyConnection as sqlx::Connection>::connect(&url).await.unwrap();
    sqlx::query("UPDATE builds SET cancel = NULL WHERE id = $1").bind(id.0).execute(&mut connection).await.unwrap();
}

async fn a_build_behind_many_the_worker_may_not_run_is_claimed(database: Database) {
    let store = database.open().await;
    for n in 0..210 {
        store.insert(&new_build(&format!("o/gpu{n}"), "master", "build.sh"), Some("gpu")).await.unwrap();
    }
    let plain = store.insert(&new_build("o/plain", "master", "build.sh"), Some("{}")).await.unwrap().id;
    let lease = Duration::from_secs(30);
    let (claimed, _) =
        store.claim_next("w1", lease, &Default::default(), |_, _, s| s != Some("gpu")).await.unwrap().unwrap();
    assert_eq!(claimed.id, plain, "210 builds for other workers do not hide it");
}

async fn log_chunks_are_fenced_and_a_retry_goes_on_after_what_is_stored(database: Database) {
    use autobuilder::store::LogPart;
    let store = database.open().await;
    let id = store.insert(&new_build("o/a", "master", "build.sh"), Some("{}")).await.unwrap().id;
    let (_, lease) = store.claim(id, "w1", Duration::from_secs(30)).await.unwrap().unwrap();
    assert_eq!(store.append_log(lease, LogPart::Log, 0, b"one\n").await.unwrap(), Some(4));
    // The answer to that was lost: the worker sends more from the same offset.
    assert_eq!(store.append_log(lease, LogPart::Log, 0, b"one\ntwo\n").await.unwrap(), Some(4));
    assert_eq!(store.append_log(lease, LogPart::Log, 4, b"two\n").await.unwrap(), Some(4));
    let chunks = store.log_chunks(id, lease.generation, LogPart::Log, 0).await.unwrap();
    assert_eq!(chunks, vec![(0, b"one\n".to_vec()), (4, b"two\n".to_vec())]);
    assert_eq!(store.log_chunks(id, lease.generation, LogPart::Log, 4).await.unwrap().len(), 1);
    let stale = autobuilder::store::Lease { generation: lease.generation - 1, ..lease };
    assert_eq!(store.append_log(stale, LogPart::Log, 8, b"late\n").await.unwrap(), None, "a stale lease ships nothing");
    assert!(store.log_chunks(id, lease.generation, LogPart::Log, 8).await.unwrap().is_empty());
}

async fn the_newest_image_is_recorded_under_its_lease_only(database: Database) {
    use autobuilder::store::{ImageHolder, ImageRecord};
    let store = database.open().await;
    let key = ("p".to_string(), "o/base".to_string(), "master".to_string());
    let lease = Duration::from_secs(30);
    let older = store.insert(&new_build("o/base", "master", "b.sh"), Some("{}")).await.unwrap().id;
    let newer = store.insert(&new_build("o/base", "master", "b.sh"), Some("{}")).await.unwrap().id;
    let (_, older) = store.claim(older, "w1", lease).await.unwrap().unwrap();
    let (_, newer) = store.claim(newer, "w2", lease).await.unwrap().unwrap();
    assert!(store.image_holders().await.unwrap().is_empty());

    assert_eq!(store.record_image(older, &key, "w1", "c1").await.unwrap(), ImageRecord::Recorded);
    let holders = store.image_holders().await.unwrap();
    assert_eq!(holders.get(&key), Some(&ImageHolder { worker: "w1".into(), commit: "c1".into() }));
    assert_eq!(store.record_image(newer, &key, "w2", "c2").await.unwrap(), ImageRecord::Recorded, "a later build's");
    let late = store.record_image(older, &key, "w1", "c1").await.unwrap();
    assert_eq!(late, ImageRecord::LaterRecorded, "an older build's image is not the newest");
    let stale = autobuilder::store::Lease { generation: newer.generation - 1, ..newer };
    let refused = store.record_image(stale, &key, "w3", "c3").await.unwrap();
    assert_eq!(refused, ImageRecord::LeaseLost, "a stale lease records nothing");
    let holders = store.image_holders().await.unwrap();
    assert_eq!(holders.get(&key), Some(&ImageHolder { worker: "w2".into(), commit: "c2".into() }));
    assert_eq!(holders.len(), 1);
}

async fn a_claim_within_the_limit_counts_every_host_and_knows_a_build_taken(database: Database) {
    use autobuilder::store::Claim;
    let store = database.open().await;
    let lease = Duration::from_secs(30);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(store.insert(&new_build("o/a", "master", "build.sh"), Some("{}")).await.unwrap().id);
    }
    let (_, running) = store.claim(ids[0], "w1", lease).await.unwrap().unwrap();
    let waits = store.claim_within_limit(ids[1], "serve", lease, "p", 1).await.unwrap();
    assert!(matches!(waits, Claim::ProjectAtLimit), "{waits:?}");
    // Taken by another worker meanwhile: not queued any more, whatever the limit says.
    store.claim(ids[2], "w2", lease).await.unwrap().unwrap();
    let taken = store.claim_within_limit(ids[2], "serve", lease, "p", 1).await.unwrap();
    assert!(matches!(taken, Claim::NotQueued), "{taken:?}");
    let done = Outcome::plain(BuildStatus::Success);
    store.finish(ids[0], &done, None, Holder::Lease(running)).await.unwrap().unwrap();
    let limit_two = store.claim_within_limit(ids[1], "serve", lease, "p", 2).await.unwrap();
    assert!(matches!(limit_two, Claim::Claimed(ref build, _) if build.id == ids[1]), "{limit_two:?}");
}

async fn claims_of_queued_builds_keep_to_project_limits(database: Database) {
    let store = database.open().await;
    let lease = Duration::from_secs(30);
    let limits = std::collections::HashMap::from([("p".to_string(), 1)]);
    assert!(store.claim_next("w1", lease, &limits, |_, _, _| true).await.unwrap().is_none(), "nothing queued");
    let reload = NewBuild { kind: BuildKind::Reload, ..new_build("o/recipes", "master", "recipes") };
    store.insert(&reload, None).await.unwrap();
    let first = store.insert(&new_build("o/a", "master", "build.sh"), Some("{}")).await.unwrap().id;
    let second = store.insert(&new_build("o/b", "master", "build.sh"), Some("{}")).await.unwrap().id;
    let (claimed, _) = store.claim_next("w1", lease, &limits, |_, _, _| true).await.unwrap().expect("the oldest build");
    assert_eq!(claimed.id, first, "reloads are not builds to claim");
    assert!(
        store.claim_next("w2", lease, &limits, |_, _, _| true).await.unwrap().is_none(),
        "project p runs its limit"
    );
    let gpu = store.insert(&new_build("o/c", "master", "build.sh"), Some("gpu")).await.unwrap().id;
    let (claimed, _) =
        store.claim_next("w2", lease, &Default::default(), |_, _, s| s != Some("gpu")).await.unwrap().unwrap();
    assert_eq!(claimed.id, second, "without a limit the next one is claimed");
    let refused = store.claim_next("w2", lease, &Default::default(), |_, _, s| s != Some("gpu")).await.unwrap();
    assert!(refused.is_none(), "a build the worker may not run is left for another");
    let (claimed, _) = store.claim_next("w3", lease, &Default::default(), |_, _, _| true).await.unwrap().unwrap();
    assert_eq!(claimed.id, gpu);
}

async fn concurrent_claims_take_each_build_once(database: Database) {
    let store = database.open().await;
    let mut queued = Vec::new();
    for n in 0..30 {
        queued.push(store.insert(&new_build(&format!("o/r{n}"), "master", "build.sh"), Some("{}")).await.unwrap().id);
    }
    let workers = (0..6).map(|n| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut claimed = Vec::new();
            let worker = format!("w{n}");
            while let Some((build, _)) =
                store.claim_next(&worker, Duration::from_secs(30), &Default::default(), |_, _, _| true).await.unwrap()
            {
                assert_eq!(build.worker.as_deref(), Some(worker.as_str()));
                claimed.push(build.id);
            }
            claimed
        })
    });
    let mut claimed: Vec<BuildId> = Vec::new();
    for worker in workers {
        claimed.extend(worker.await.unwrap());
    }
    claimed.sort();
    assert_eq!(claimed, queued, "every build claimed, and by one worker");
}

async fn the_status_outbox_goes_out_in_order_and_retries(database: Database) {
    let store = database.open().await;
    for context in ["first", "second"] {
        store.queue_status(&status(context)).await.unwrap();
    }
    let first = store.next_status().await.unwrap().unwrap();
    assert_eq!(first.context, "first");
    store.status_retry(first.id, 60_000, "GitHub answered 502").await.unwrap();
    let again = store.next_status().await.unwrap().unwrap();
    assert_eq!((again.id, again.attempts), (first.id, 1), "the oldest stays first until delivered");
    assert!(again.next_attempt > autobuilder::store::now_ms() + 50_000);
    store.status_done(first.id, None).await.unwrap();
    let second = store.next_status().await.unwrap().unwrap();
    assert_eq!(second.context, "second");
    store.status_done(second.id, Some("gave up: 422")).await.unwrap();
    assert!(store.next_status().await.unwrap().is_none());
}

async fn concurrent_copies_of_a_delivery_store_it_once(database: Database) {
    let store = database.open().await;
    let copies: Vec<_> = (0..50)
        .map(|i| {
            let store = store.clone();
            let id = if i % 2 == 0 { "same".to_string() } else { format!("other-{i}") };
            tokio::spawn(async move {
                (id.clone(), store.record_delivery(&id, "p", "push", "{}", b"x", None).await.unwrap())
            })
        })
        .collect();
    let mut stored_same = 0;
    for copy in copies {
        let (id, new) = copy.await.unwrap();
        if id == "same" {
            stored_same += usize::from(new);
        } else {
            assert!(new, "{id} is new");
        }
    }
    assert_eq!(stored_same, 1, "exactly one copy is new");
    assert_eq!(store.deliveries(100).await.unwrap().len(), 26);
}

async fn deliveries_are_stored_once(database: Database) {
    let store = database.open().await;
    assert!(store.record_delivery("d1", "p", "push", "{}", b"payload", None).await.unwrap());
    assert!(!store.record_delivery("d1", "p", "push", "{}", b"other", None).await.unwrap());
    assert_eq!(store.unprocessed_deliveries().await.unwrap(), vec![("p".to_string(), "d1".to_string())]);
    store.set_delivery_outcome("p", "d1", &serde_json::json!({"message": "done"})).await.unwrap();
    assert!(store.unprocessed_deliveries().await.unwrap().is_empty());
    let (delivery, payload) = store.delivery("p", "d1").await.unwrap().unwrap();
    assert_eq!(
        (delivery.outcome.unwrap()["message"].as_str(), payload.as_slice()),
        (Some("done"), b"payload".as_slice())
    );
    // Bytes that are not UTF-8 come back as they were sent.
    let binary = [0u8, 159, 146, 150, 255];
    assert!(store.record_delivery("d2", "p", "push", "{}", &binary, None).await.unwrap());
    assert_eq!(store.delivery("p", "d2").await.unwrap().unwrap().1, binary);
}

async fn a_delivery_id_is_unique_per_project_only(database: Database) {
    let store = database.open().await;
    // Another project's delivery (say, one an attacker with that project's secret sent first)
    // does not make this project's delivery with the same id a redelivery.
    assert!(store.record_delivery("d1", "evil", "push", "{}", b"evil", None).await.unwrap());
    assert!(store.record_delivery("d1", "p", "push", "{}", b"real", None).await.unwrap());
    assert!(!store.record_delivery("d1", "p", "push", "{}", b"again", None).await.unwrap());
    store.set_delivery_outcome("p", "d1", &serde_json::json!({"message": "built"})).await.unwrap();
    let (evil, payload) = store.delivery("evil", "d1").await.unwrap().unwrap();
    assert_eq!((evil.outcome, payload.as_slice()), (None, b"evil".as_slice()));
    assert_eq!(store.delivery("p", "d1").await.unwrap().unwrap().1, b"real");
    assert_eq!(store.projects_of_delivery("d1").await.unwrap(), vec!["evil", "p"]);
}

async fn stored_deliveries_follow_retention(database: Database) {
    let store = database.open().await;
    let done = serde_json::json!({"status": 200});
    for i in 0..5 {
        store.record_delivery(&format!("d{i}"), "p", "push", "{}", b"body", Some(&done)).await.unwrap();
    }
    store.record_delivery("waiting", "p", "push", "{}", b"body", None).await.unwrap();
    store.prune(None, Some(2)).await.unwrap();
    let kept: Vec<String> = store.deliveries(100).await.unwrap().into_iter().map(|d| d.id).collect();
    // The two newest are kept, and the one never acted on (it is acted on at the next start).
    assert_eq!(kept, vec!["waiting", "d4", "d3"]);
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.prune(Some(1), None).await.unwrap();
    let kept: Vec<String> = store.deliveries(100).await.unwrap().into_iter().map(|d| d.id).collect();
    assert_eq!(kept, vec!["waiting"]);
}

async fn reopening_migrates_nothing_again(database: Database) {
    let first = database.open().await;
    let id = first.insert(&new_build("o/a", "master", "build.sh"), None).await.unwrap().id;
    // A second process opening the same database at the same time (PostgreSQL: behind sqlx's
    // migration lock) finds the schema made and the rows there.
    let (second, third) = tokio::join!(database.open(), database.open());
    assert_eq!(second.get(id).await.unwrap().unwrap().id, id);
    assert_eq!(third.history(&HistoryFilter::default()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn one_process_at_a_time_builds_under_a_worker_name() {
    let database = Database::postgres();
    let first = database.open().await;
    assert_eq!(first.backend(), Backend::Postgres);
    first.claim_worker_name("w1").await.unwrap();
    let second = database.open().await;
    let refused = second.claim_worker_name("w1").await.unwrap_err();
    assert!(format!("{refused:#}").contains("another autobuilder process runs builds as worker \"w1\""), "{refused:#}");
    let third = database.open().await;
    third.claim_worker_name("w2").await.expect("another name is free");
    assert!(third.worker_running("w1").await.unwrap() && third.worker_running("w2").await.unwrap());
    assert!(!third.worker_running("w3").await.unwrap(), "nobody claimed w3");
    // Another database's claims are not this one's, on the same cluster.
    let elsewhere = Database::postgres().open().await;
    assert!(!elsewhere.worker_running("w1").await.unwrap());
    drop(first);
    // The claim ends with the process that held it (here: its store and its connection).
    common::wait_until("w1 to stop running", async || (!third.worker_running("w1").await.unwrap()).then_some(())).await;
    common::wait_until("the first claim to end", async || second.claim_worker_name("w1").await.ok()).await;
}

#[tokio::test]
async fn an_unreachable_postgres_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let error = Store::open_postgres(&format!("postgres://autobuilder:hunter2@127.0.0.1:{port}/history"))
        .await
        .err()
        .expect("nothing listens there");
    let message = format!("{error:#}");
    assert!(message.contains("is PostgreSQL running there?"), "{message}");
    assert!(!message.contains("hunter2"), "the password stays out of messages: {message}");
}

/// Whether some session holds an advisory lock on the database at `url` (a worker name).
async fn claimed(url: &str) -> bool {
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted)")
        .fetch_one(&mut connection)
        .await
        .unwrap()
}

/// A PostgreSQL cluster of the test's own, a database on it, and a store that claimed the worker
/// name `w1` on it, as a process that builds does.
async fn claimed_by_a_worker() -> (Postgres, String, Store) {
    let postgres = Postgres::own();
    let url = postgres.fresh_database();
    let store = Store::open_postgres(&url).await.unwrap();
    store.claim_worker_name("w1").await.unwrap();
    (postgres, url, store)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_name_is_claimed_again_after_a_postgres_restart() {
    let (postgres, url, first) = claimed_by_a_worker().await;
    let holding = tokio::spawn({
        let first = first.clone();
        async move { first.hold_claims(Duration::from_millis(100)).await }
    });
    postgres.stop(); // the session that held the lock is gone, and the lock with it
    postgres.start();
    common::wait_until("the name to be claimed again", async || claimed(&url).await.then_some(())).await;
    let second = Store::open_postgres(&url).await.unwrap();
    let refused = second.claim_worker_name("w1").await.unwrap_err();
    assert!(format!("{refused:#}").contains("runs builds as worker \"w1\""), "{refused:#}");
    assert!(!holding.is_finished(), "the first process goes on");
    holding.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_whose_worker_name_was_taken_during_a_restart_stops() {
    let (postgres, url, first) = claimed_by_a_worker().await;
    postgres.stop();
    postgres.start();
    // A second process starts under the same name while the first has not noticed yet.
    let second = Store::open_postgres(&url).await.unwrap();
    second.claim_worker_name("w1").await.unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(30), first.hold_claims(Duration::from_millis(100)))
        .await
        .expect("the first process notices within seconds");
    assert!(format!("{lost:#}").contains("another process took worker name \"w1\""), "{lost:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_history_over_tls() {
    let postgres = Postgres::own_with_tls();
    let url = postgres.fresh_database();
    let plain = Store::open_postgres(&format!("{url}?sslmode=disable")).await.err().expect("refused without TLS");
    assert!(format!("{plain:#}").contains("is PostgreSQL running there?"), "{plain:#}");
    // The server's certificate verified, for the address connected to.
    let verified = format!("{url}?sslmode=verify-full&sslrootcert={}", postgres.certificate().display());
    let store = Store::open_postgres(&verified).await.unwrap();
    let id = store.insert(&new_build("o/a", "master", "build.sh"), None).await.unwrap().id;
    assert_eq!(store.get(id).await.unwrap().unwrap().id, id);
    // A certificate that nothing vouches for is refused.
    let unverified = Store::open_postgres(&format!("{url}?sslmode=verify-full")).await.err().expect("unknown CA");
    assert!(format!("{unverified:#}").to_lowercase().contains("certificate"), "{unverified:#}");
}
