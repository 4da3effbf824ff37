//! Build logs across hosts. A worker writes a build's log files on its own disk (`build::log`) and
//! ships what they gained to the PostgreSQL history every [`SHIP_EVERY`], and all of it before the
//! build's end is recorded. A `serve` or `live` instance asked for the log of a build whose files
//! are not in its `logs_dir` first copies what it lacks into `<logs_dir>/copies`, so that every
//! reader of log files (windows, search, download, live catch-up) works on the copy unchanged.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::log::{copies_dir, copy_path, index_path, log_path, sections_path};
use crate::model::BuildId;
use crate::store::{Backend, Lease, LogPart, Store};

/// How often a worker ships what its build logs gained.
pub const SHIP_EVERY: Duration = Duration::from_millis(250);

/// Most bytes of one file shipped as one chunk.
const MAX_CHUNK: u64 = 1 << 20;

/// The order a reader fetches and a shipper looks at the files in: the index and the sections
/// before the log. `BuildLog` writes the log first; a shipper stores what it saw of the index
/// and sections only after the log bytes they point into, and a reader fetches them before the
/// log, so an index never points past the log it comes with.
const INDEX_FIRST: [LogPart; 3] = [LogPart::Index, LogPart::Sections, LogPart::Log];

fn path_of(logs_dir: &Path, id: BuildId, part: LogPart) -> PathBuf {
    match part {
        LogPart::Log => log_path(logs_dir, id),
        LogPart::Index => index_path(logs_dir, id),
        LogPart::Sections => sections_path(logs_dir, id),
    }
}

/// Ships one build's log to a PostgreSQL history while the build runs.
pub struct LogShipper {
    last: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl LogShipper {
    /// Starts shipping the log of `lease`'s build from `logs_dir`.
    pub fn start(store: Store, logs_dir: PathBuf, lease: Lease) -> Self {
        let last = Arc::new(Notify::new());
        let ending = last.clone();
        let task = tokio::spawn(async move {
            let mut shipped = [0u64; 3];
            loop {
                let done = tokio::select! {
                    () = tokio::time::sleep(SHIP_EVERY) => false,
                    () = ending.notified() => true,
                };
                match ship(&store, &logs_dir, lease, &mut shipped).await {
                    Ok(true) if !done => {}
                    Ok(true) => return,
                    Ok(false) => {
                        tracing::warn!(build = %lease.build, "the build was taken over: its log here is not shipped");
                        return;
                    }
                    Err(e) if !done => tracing::warn!(build = %lease.build, "cannot ship the build log yet: {e:#}"),
                    Err(e) => {
                        // The last of the log must reach the history before the build's end does.
                        tracing::warn!(build = %lease.build, "cannot ship the end of the build log (trying again): {e:#}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        ending.notify_one();
                    }
                }
            }
        });
        Self { last, task }
    }

    /// Ships what is left of the log, then stops: call once the log is closed.
    pub async fn finish(self) {
        self.last.notify_one();
        if let Err(e) = self.task.await {
            tracing::error!("the log shipper failed: {e}");
        }
    }
}

/// Ships every file's new bytes (`shipped`: how far each of [`INDEX_FIRST`] went); false when
/// the lease is no longer the build's.
async fn ship(store: &Store, logs_dir: &Path, lease: Lease, shipped: &mut [u64; 3]) -> anyhow::Result<bool> {
    let length = |part| {
        let path = path_of(logs_dir, lease.build, part);
        std::fs::metadata(path).map_or(0, |meta| meta.len())
    };
    let (index_end, sections_end) = (length(LogPart::Index), length(LogPart::Sections));
    let [index, sections, log] = shipped;
    Ok(ship_part(store, logs_dir, lease, LogPart::Log, log, u64::MAX).await?
        && ship_part(store, logs_dir, lease, LogPart::Index, index, index_end).await?
        && ship_part(store, logs_dir, lease, LogPart::Sections, sections, sections_end).await?)
}

/// Ships `part` from byte `shipped` up to `end` (or its end); false when the lease is stale.
async fn ship_part(
    store: &Store,
    logs_dir: &Path,
    lease: Lease,
    part: LogPart,
    shipped: &mut u64,
    end: u64,
) -> anyhow::Result<bool> {
    let path = path_of(logs_dir, lease.build, part);
    while *shipped < end {
        let (path, from, most) = (path.clone(), *shipped, (end - *shipped).min(MAX_CHUNK));
        let bytes = tokio::task::spawn_blocking(move || read_from(&path, from, most)).await??;
        if bytes.is_empty() {
            break;
        }
        match store.append_log(lease, part, *shipped, &bytes).await? {
            // What the history holds from there: more or less than sent when an earlier attempt
            // stored that chunk and its answer was lost.
            Some(stored) => *shipped += stored,
            None => return Ok(false),
        }
    }
    Ok(true)
}

/// Up to `most` bytes of the file at `path` from byte `from` (none when it is missing).
fn read_from(path: &Path, from: u64, most: u64) -> std::io::Result<Vec<u8>> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.take(most).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Copies the logs of builds other hosts ran from the history into `<logs_dir>/copies`.
pub struct RemoteLogs {
    store: Option<Store>,
    logs_dir: PathBuf,
}

impl RemoteLogs {
    /// Copies from `store` when it is a PostgreSQL history (there are no other hosts otherwise).
    pub fn new(store: Option<Store>, logs_dir: PathBuf) -> Self {
        let store = store.filter(|store| store.backend() == Backend::Postgres);
        Self { store, logs_dir }
    }

    /// The directory to read build `id`'s log files from: `logs_dir` when the log was written
    /// here (by a build on this host, or one sharing this `data_dir`); otherwise the copies, first
    /// brought up to what the build's worker shipped. A failure to copy is logged: the reader then
    /// reads what is here.
    pub async fn fetch(&self, id: BuildId) -> PathBuf {
        let copies = copies_dir(&self.logs_dir);
        let Some(store) = &self.store else { return self.logs_dir.clone() };
        if tokio::fs::try_exists(log_path(&self.logs_dir, id)).await.unwrap_or(true) {
            return self.logs_dir.clone();
        }
        if let Err(e) = copy(store, &copies, id).await {
            tracing::warn!(build = %id, "cannot copy the build log from the history: {e:#}");
        }
        copies
    }
}

/// Brings the copy of build `id`'s log in `copies` up to what the history holds of its current
/// run. Several processes sharing a `data_dir` may copy at once: the note of the copy is locked.
async fn copy(store: &Store, copies: &Path, id: BuildId) -> anyhow::Result<()> {
    if store.get(id).await?.is_none_or(|build| build.worker.is_none()) {
        return Ok(()); // not started, or a recipes reload (never on a worker)
    }
    let generation = store.claims_of(id).await?;
    let note = copy_path(copies, id);
    let copies_owned = copies.to_path_buf();
    let (mut note, copied_from) = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&copies_owned)?;
        let mut note = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&note)?;
        note.lock()?;
        let mut text = String::new();
        note.read_to_string(&mut text)?;
        Ok::<_, std::io::Error>((note, text.trim().parse::<i64>().ok()))
    })
    .await??;
    if copied_from != Some(generation) {
        // Nothing here yet, or a copy of an earlier run of the build (its worker was lost).
        for part in INDEX_FIRST {
            let _ = tokio::fs::remove_file(path_of(copies, id, part)).await;
        }
        note.set_len(0)?;
        note.seek(SeekFrom::Start(0))?;
        note.write_all(format!("{generation}\n").as_bytes())?;
    }
    // The index and sections are read before the log and written after it, so that a reader
    // of these files never finds a line the log does not have yet.
    let mut fetched = Vec::new();
    for part in INDEX_FIRST {
        let path = path_of(copies, id, part);
        let have = tokio::fs::metadata(&path).await.map_or(0, |meta| meta.len());
        let mut chunks = Vec::new();
        let mut next = have;
        loop {
            let more = store.log_chunks(id, generation, part, next).await?;
            let Some((offset, bytes)) = more.last() else { break };
            next = *offset as u64 + bytes.len() as u64;
            chunks.extend(more);
        }
        fetched.push((path, have, chunks));
    }
    fetched.reverse();
    tokio::task::spawn_blocking(move || {
        for (path, have, chunks) in fetched {
            append_chunks(&path, have, chunks)?;
        }
        drop(note); // and its lock
        Ok::<_, std::io::Error>(())
    })
    .await??;
    Ok(())
}

/// Appends `chunks` to the file at `path` (`have` bytes long), each where it belongs; stops at a
/// gap (a chunk not shipped yet).
fn append_chunks(path: &Path, have: u64, chunks: Vec<(i64, Vec<u8>)>) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let mut end = have;
    for (offset, bytes) in chunks {
        if offset as u64 != end {
            break;
        }
        file.write_all(&bytes)?;
        end += bytes.len() as u64;
    }
    Ok(())
}
