//! A build's full log: output split into lines on bytes (so a multi-byte character cut between two
//! chunks survives), decoded lossily, masked, and appended to `<data_dir>/logs/<id>.log`, up to
//! `[builds] max_log_bytes` (past it the output is still read, so the build goes on, but not kept).
//!
//! Next to each log, `<id>.idx` is its line index: one [`Mark`] per batch of lines written (the
//! number of its first line, where it starts in the log, when it arrived), so the raw log stays
//! raw, every line has a time, and a reader finds line N without scanning the file. Autobuilder's
//! own phases start with a note `[autobuilder] phase <name>` ([`PHASES`]): the build page shows
//! them as sections, each lasting until the next.
//!
//! `<id>.sections` lists the section markers of the log (`<line number> <line>`, one a line), so
//! that a window of a huge log knows which sections enclose it ([`sections_open_at`]).

use std::borrow::Cow;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::bus::{Bus, Event};
use crate::docker::{OutputSink, Stream};
use crate::model::BuildId;

/// A line longer than this is cut into several, so one endless line cannot eat the memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Prefix of the lines autobuilder itself writes into a build's log.
pub const NOTE_PREFIX: &str = "[autobuilder] ";
/// Bytes read at once when a log file is scanned.
const READ_BLOCK: usize = 256 * 1024;
/// Most bytes of section markers listed per log (read whole on every window asked for): a log
/// with more shows its later sections only where they are inside the window loaded.
const MAX_SECTIONS_BYTES: u64 = 1024 * 1024;

/// The phases of a build, in order, each started by the note `[autobuilder] phase <name>`.
pub const PHASES: [&str; 4] = ["fetch", "image", "script", "publish"];

/// Path of the log file of build `id`.
pub fn log_path(logs_dir: &Path, id: BuildId) -> PathBuf {
    logs_dir.join(format!("{}.log", id.0))
}

/// Path of the line index of build `id`'s log.
pub fn index_path(logs_dir: &Path, id: BuildId) -> PathBuf {
    logs_dir.join(format!("{}.idx", id.0))
}

/// Path of the list of section markers of build `id`'s log.
pub fn sections_path(logs_dir: &Path, id: BuildId) -> PathBuf {
    logs_dir.join(format!("{}.sections", id.0))
}

/// Where the copies of logs written on other hosts are kept (see `build::shipped_log`).
pub fn copies_dir(logs_dir: &Path) -> PathBuf {
    logs_dir.join("copies")
}

/// Path of the note saying which run of build `id` the copy of its log in `copies` is of.
pub fn copy_path(copies: &Path, id: BuildId) -> PathBuf {
    copies.join(format!("{}.copy", id.0))
}

/// Removes the log of build `id`, its index and its list of sections, and any copy of them.
pub async fn remove_log(logs_dir: &Path, id: BuildId) {
    let copies = copies_dir(logs_dir);
    for dir in [logs_dir, copies.as_path()] {
        let _ = tokio::fs::remove_file(log_path(dir, id)).await;
        let _ = tokio::fs::remove_file(index_path(dir, id)).await;
        let _ = tokio::fs::remove_file(sections_path(dir, id)).await;
    }
    let _ = tokio::fs::remove_file(copy_path(&copies, id)).await;
}

/// One entry of a line index: lines from number `line` on start at byte `offset` of the log and
/// arrived at `time_ms` (milliseconds since the Unix epoch). Stored as three little-endian u64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub line: u64,
    pub offset: u64,
    pub time_ms: u64,
}

const MARK_BYTES: usize = 24;

impl Mark {
    fn to_bytes(self) -> [u8; MARK_BYTES] {
        let mut bytes = [0; MARK_BYTES];
        bytes[..8].copy_from_slice(&self.line.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.offset.to_le_bytes());
        bytes[16..].copy_from_slice(&self.time_ms.to_le_bytes());
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Self { line: word(0), offset: word(8), time_ms: word(16) }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Appends lines to one build's log file. Lines are buffered in memory and written out by
/// [`BuildLog::write_pending`], which runs after every chunk of output (the container's output
/// comes in through [`OutputSink`]); once written, they are published on the bus, numbered from 1.
///
/// The three files are written in place, not through `tokio::fs` (which hands each write to a
/// blocking thread and back): a batch is a write to the page cache, and a line is in the file
/// before it is published (docs/benchmarks.md, "Line latency").
pub struct BuildLog {
    id: BuildId,
    file: std::fs::File,
    /// The line index: a [`Mark`] per batch written.
    index: std::fs::File,
    /// The section markers: `<line number> <line>` per marker line written.
    sections: std::fs::File,
    bus: Bus,
    pending: Vec<u8>,
    /// Entries of `sections` for the lines in `pending`.
    pending_sections: Vec<u8>,
    /// Bytes in `sections` (written and pending): past [`MAX_SECTIONS_BYTES`] no more are kept.
    sections_bytes: u64,
    lines: u64,
    published: u64,
    /// Secret values replaced by `***` in every line.
    masks: Vec<String>,
    /// Bytes in the file and in `pending`.
    size: u64,
    /// Most bytes of build output kept (0: no cap); once reached, `cut` is set.
    max_bytes: u64,
    cut: bool,
    /// The build's stdout and stderr (in this order), split into lines.
    outputs: [Output; 2],
}

/// The place of `stream` in [`BuildLog::outputs`].
fn index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

/// One output stream of a build: its unfinished line, and the end of a long line cut by the
/// splitter that is held back because it may be the start of a secret.
#[derive(Default)]
struct Output {
    splitter: LineSplitter,
    held: String,
}

/// What a masked secret shows as.
pub const MASK: &str = "***";
/// Lines of a multi-line secret shorter than this are not masked on their own (they would mask
/// ordinary text like `}`); the whole value always is.
const MIN_MASKED_PART: usize = 6;

impl BuildLog {
    pub async fn create(logs_dir: &Path, id: BuildId, bus: Bus) -> std::io::Result<Self> {
        tokio::fs::create_dir_all(logs_dir).await?;
        let file = tokio::fs::File::create(log_path(logs_dir, id)).await?.into_std().await;
        let index = tokio::fs::File::create(index_path(logs_dir, id)).await?.into_std().await;
        let sections = tokio::fs::File::create(sections_path(logs_dir, id)).await?.into_std().await;
        Ok(Self::new(id, [file, index, sections], bus, 0, 0))
    }

    /// `files`: the log, its index, its sections.
    fn new(id: BuildId, files: [std::fs::File; 3], bus: Bus, lines: u64, size: u64) -> Self {
        let [file, index, sections] = files;
        Self {
            id,
            file,
            index,
            sections,
            bus,
            pending: Vec::with_capacity(64 * 1024),
            pending_sections: Vec::new(),
            sections_bytes: 0,
            lines,
            published: lines,
            masks: Vec::new(),
            size,
            max_bytes: 0,
            cut: false,
            outputs: Default::default(),
        }
    }

    /// Opens the log of a build to append to it (after a restart), numbering on from its end.
    pub async fn reopen(logs_dir: &Path, id: BuildId, bus: Bus) -> std::io::Result<Self> {
        let path = log_path(logs_dir, id);
        let (mut lines, mut size, mut last) = (0u64, 0u64, b'\n');
        match tokio::fs::File::open(&path).await {
            Ok(mut existing) => {
                let mut block = vec![0; READ_BLOCK];
                loop {
                    let read = existing.read(&mut block).await?;
                    if read == 0 {
                        break;
                    }
                    lines += count_newlines(&block[..read]);
                    size += read as u64;
                    last = block[read - 1];
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await?;
        if last != b'\n' {
            file.write_all(b"\n").await?; // end a line cut by the crash
            lines += 1;
            size += 1;
        }
        let mut append = tokio::fs::OpenOptions::new();
        append.create(true).append(true);
        let index = append.open(index_path(logs_dir, id)).await?.into_std().await;
        let sections = append.open(sections_path(logs_dir, id)).await?.into_std().await;
        let sections_bytes = sections.metadata()?.len();
        let file = file.into_std().await;
        Ok(Self { sections_bytes, ..Self::new(id, [file, index, sections], bus, lines, size) })
    }

    /// Masks these secret values (and each long enough line of a multi-line one) in every line.
    pub fn masking(mut self, secrets: Vec<String>) -> Self {
        for secret in secrets {
            if secret.contains('\n') {
                self.masks
                    .extend(secret.lines().map(str::trim).filter(|l| l.len() >= MIN_MASKED_PART).map(String::from));
            }
            if !secret.is_empty() {
                self.masks.push(secret);
            }
        }
        // Longest first, so that a secret holding another is masked whole.
        self.masks.sort_by_key(|m| std::cmp::Reverse(m.len()));
        self
    }

    /// Keeps at most `max_bytes` of build output (0: no cap); past it, one note says so and later
    /// output is dropped (autobuilder's own notes are still written).
    pub fn capped(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// A piece of output from the splitter: a whole line, or (`ends_line` false) the first part of
    /// a line too long to hold. The part is masked joined with what was held back of the previous
    /// one, and its end (as long as the longest secret) is held back again, so that a secret
    /// across the cut is masked whole.
    fn piece(&mut self, stream: Stream, bytes: &[u8], ends_line: bool) {
        if self.cut {
            return; // drained, not kept
        }
        let held = std::mem::take(&mut self.outputs[index(stream)].held);
        let text = String::from_utf8_lossy(bytes);
        let joined = if held.is_empty() { text } else { Cow::Owned(held + text.as_ref()) };
        if ends_line {
            return self.line(joined.as_bytes());
        }
        let masked = self.mask(&joined);
        let overlap = self.masks.first().map_or(0, |longest| (longest.len() - 1).min(MAX_LINE_BYTES));
        let mut split = masked.len().saturating_sub(overlap);
        while !masked.is_char_boundary(split) {
            split -= 1;
        }
        if split > 0 {
            self.keep(&masked[..split]);
        }
        self.outputs[index(stream)].held = masked[split..].to_string();
    }

    /// Appends one line (without its newline), decoding invalid UTF-8 lossily; a line longer than
    /// [`MAX_LINE_BYTES`] is kept as several.
    pub fn line(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let masked = self.mask(&text);
        let mut rest: &str = &masked;
        loop {
            let cut = utf8_boundary(rest.as_bytes(), MAX_LINE_BYTES);
            self.keep(&rest[..cut]);
            rest = &rest[cut..];
            if rest.is_empty() {
                break;
            }
        }
    }

    /// The text with every secret masked; when the text holds terminal escape sequences and a
    /// secret shows once they are removed (`hunt\e[0mer2` shows as `hunter2`), the line is kept
    /// without its escapes, masked.
    fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut masked = Cow::Borrowed(text);
        for mask in &self.masks {
            if masked.contains(mask.as_str()) {
                masked = Cow::Owned(masked.replace(mask.as_str(), MASK));
            }
        }
        if !self.masks.is_empty() && masked.contains('\x1b') {
            let plain = strip_escapes(&masked);
            if self.masks.iter().any(|mask| plain.contains(mask.as_str())) {
                return Cow::Owned(self.mask(&plain).into_owned());
            }
        }
        masked
    }

    /// Keeps one masked line of build output, within the cap.
    fn keep(&mut self, text: &str) {
        if self.cut {
            return;
        }
        if self.max_bytes > 0 && self.size + text.len() as u64 + 1 > self.max_bytes {
            self.cut = true;
            let note =
                format!("log cut at {}: the build goes on; later output is not kept", bytes_text(self.max_bytes));
            return self.push(&format!("{NOTE_PREFIX}{note}"));
        }
        self.push(text);
    }

    fn push(&mut self, text: &str) {
        // Recorded as it is written, so that finding the sections around line N of a huge log
        // reads this short list instead of scanning every line before N (a million lines, tens
        // of megabytes, on every open of its tail).
        if marker(text).is_some() && self.sections_bytes < MAX_SECTIONS_BYTES {
            let entry = format!("{} {text}\n", self.lines + 1);
            self.sections_bytes += entry.len() as u64;
            self.pending_sections.extend_from_slice(entry.as_bytes());
        }
        self.pending.extend_from_slice(text.as_bytes());
        self.pending.push(b'\n');
        self.lines += 1;
        self.size += text.len() as u64 + 1;
    }

    /// Appends a line of autobuilder's own, marked with [`NOTE_PREFIX`] (kept past the cap too).
    pub fn note(&mut self, text: &str) {
        let text = format!("{NOTE_PREFIX}{text}");
        let masked = self.mask(&text);
        self.push(&masked);
    }

    /// Starts one of the build's [`PHASES`]: a note the build page shows as a section header.
    pub fn phase(&mut self, name: &str) {
        debug_assert!(PHASES.contains(&name), "unknown phase {name}");
        self.note(&format!("phase {name}"));
    }

    /// Lines written so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Writes the buffered lines to the file, then publishes them.
    pub async fn write_pending(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mark = Mark { line: self.published + 1, offset: self.size - self.pending.len() as u64, time_ms: now_ms() };
        std::io::Write::write_all(&mut self.file, &self.pending)?;
        std::io::Write::write_all(&mut self.index, &mark.to_bytes())?;
        if !self.pending_sections.is_empty() {
            std::io::Write::write_all(&mut self.sections, &std::mem::take(&mut self.pending_sections))?;
        }
        let text = String::from_utf8(std::mem::take(&mut self.pending)).expect("lines are decoded lossily");
        self.bus.publish(Event::Lines { id: self.id, seq: mark.line, text, time: mark.time_ms });
        self.published = self.lines;
        Ok(())
    }

    pub async fn close(mut self) -> std::io::Result<()> {
        self.end_output();
        self.write_pending().await
    }
}

/// The build container's output: split into lines per stream, each line masked and kept.
impl OutputSink for BuildLog {
    /// Takes a chunk of the build's output on `stream`: complete lines are masked and kept.
    fn output(&mut self, stream: Stream, chunk: &[u8]) {
        let mut splitter = std::mem::take(&mut self.outputs[index(stream)].splitter);
        splitter.feed(chunk, |piece, ends_line| self.piece(stream, piece, ends_line));
        self.outputs[index(stream)].splitter = splitter;
    }

    /// The output ended: keeps the last lines of both streams, even without a final newline.
    fn end_output(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let mut splitter = std::mem::take(&mut self.outputs[index(stream)].splitter);
            splitter.finish(|piece, ends_line| self.piece(stream, piece, ends_line));
            let held = std::mem::take(&mut self.outputs[index(stream)].held);
            if !held.is_empty() {
                self.line(held.as_bytes());
            }
        }
    }

    fn flush(&mut self) -> impl Future<Output = std::io::Result<()>> + Send {
        self.write_pending()
    }
}

/// `100 MB`, `512 kB`, `1234 bytes`.
fn bytes_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000 && b % 1_000_000 == 0 => format!("{} MB", b / 1_000_000),
        b if b >= 1_000 && b % 1_000 == 0 => format!("{} kB", b / 1_000),
        b => format!("{b} bytes"),
    }
}

/// The text without terminal escape sequences (CSI `ESC [ ... letter`, OSC `ESC ] ... BEL` or
/// `ESC ] ... ESC \`, character sets `ESC ( x`, and two-character `ESC x`).
pub fn strip_escapes(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            plain.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                for c in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\x07' || (c == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                        break;
                    }
                }
            }
            Some('(' | ')' | '*' | '+') => {
                chars.next(); // a character set: `ESC ( B`
            }
            _ => {}
        }
    }
    plain
}

fn count_newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Where the last `n` complete lines of a log start, found by reading backwards from the end
/// in blocks of `block` bytes: the offset of the first of them (past the last newline for
/// `n` = 0; 0 when the file has `n` lines or fewer). A last line without its newline is not
/// complete and is not counted.
pub async fn tail_offset(file: &mut tokio::fs::File, n: u64, block: usize) -> std::io::Result<u64> {
    let mut end = file.seek(SeekFrom::End(0)).await?;
    let mut buffer = vec![0; block];
    // The newline ending the last complete line is the first found; the one before the n lines
    // is the (n + 1)th.
    let mut newlines = 0;
    while end > 0 {
        let start = end.saturating_sub(block as u64);
        let length = (end - start) as usize;
        file.seek(SeekFrom::Start(start)).await?;
        file.read_exact(&mut buffer[..length]).await?;
        for (index, &byte) in buffer[..length].iter().enumerate().rev() {
            if byte == b'\n' {
                newlines += 1;
                if newlines == n.saturating_add(1) {
                    return Ok(start + index as u64 + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}

/// Lines (newlines) in the first `length` bytes of a file.
pub async fn lines_before(file: &mut tokio::fs::File, length: u64) -> std::io::Result<u64> {
    file.seek(SeekFrom::Start(0)).await?;
    let mut buffer = vec![0; READ_BLOCK];
    let (mut lines, mut left) = (0, length);
    while left > 0 {
        let want = (left as usize).min(READ_BLOCK);
        let read = file.read(&mut buffer[..want]).await?;
        if read == 0 {
            break;
        }
        lines += count_newlines(&buffer[..read]);
        left -= read as u64;
    }
    Ok(lines)
}

/// The line index of a log (empty for a log written before indexes existed, or without lines).
pub async fn read_index(logs_dir: &Path, id: BuildId) -> std::io::Result<Vec<Mark>> {
    let bytes = match tokio::fs::read(index_path(logs_dir, id)).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(bytes.chunks_exact(MARK_BYTES).map(Mark::from_bytes).collect())
}

/// The mark of the batch holding line `line` (None before the first).
fn mark_of(marks: &[Mark], line: u64) -> Option<&Mark> {
    marks.partition_point(|m| m.line <= line).checked_sub(1).map(|at| &marks[at])
}

/// Some lines of a log, with the time each arrived (None when its log has no index).
#[derive(Debug, serde::Serialize)]
pub struct Window {
    /// Number of the first line (1-based).
    pub first: u64,
    pub lines: Vec<String>,
    /// Milliseconds since the Unix epoch, per line.
    pub times: Vec<Option<u64>>,
    /// Complete lines in the whole log.
    pub total: u64,
    /// The headers of the sections open at `first` that start before it, outermost first (filled
    /// by [`sections_open_at`]).
    pub open: Vec<Header>,
}

/// The first line of a section.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
pub struct Header {
    pub line: u64,
    pub text: String,
    /// When it arrived (milliseconds since the Unix epoch), if the log has an index.
    pub time: Option<u64>,
}

/// A section marker, as the build page reads them (`parseMarker` in `static/build.js`).
#[derive(Debug, PartialEq, Eq)]
enum Marker<'a> {
    /// `[autobuilder] phase <name>`: ends every open section and lasts until the next phase.
    Phase,
    /// GitHub Actions' `::group::<title>` (no name), GitLab's `section_start:<ts>:<name>...`.
    Start(Option<&'a str>),
    /// `::endgroup::` (ends the innermost section that is not a phase), GitLab's
    /// `section_end:<ts>:<name>` (ends the innermost section of that name).
    End(Option<&'a str>),
}

/// The section marker that `text` is, if any.
fn marker(text: &str) -> Option<Marker<'_>> {
    // What JavaScript's `.` does not match, so `(.*)$` fails on it.
    let one_line = |rest: &str| !rest.contains(['\r', '\n', '\u{2028}', '\u{2029}']);
    if let Some(name) = text.strip_prefix("[autobuilder] phase ") {
        let word = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        return word.then_some(Marker::Phase);
    }
    if let Some(title) = text.strip_prefix("::group::") {
        return one_line(title).then_some(Marker::Start(None));
    }
    if text.starts_with("::endgroup::") {
        return Some(Marker::End(None));
    }
    let gitlab = text.strip_prefix("\x1b[0K").unwrap_or(text);
    if let Some(rest) = gitlab.strip_prefix("section_start:") {
        // section_start:<ts>:<name>[options]\r\e[0K<title>
        let (name, after) = gitlab_name(rest, &['[', '\r'])?;
        let after = match after.strip_prefix('[') {
            Some(options) => &options[options.find(']')? + 1..],
            None => after,
        };
        let title = after.strip_prefix('\r')?;
        return one_line(title.strip_prefix("\x1b[0K").unwrap_or(title)).then_some(Marker::Start(Some(name)));
    }
    let rest = gitlab.strip_prefix("section_end:")?;
    gitlab_name(rest, &['\r']).map(|(name, _)| Marker::End(Some(name)))
}

/// `<digits>:<name>` with the name running up to one of `stops`: the name and what follows it.
fn gitlab_name<'a>(text: &'a str, stops: &[char]) -> Option<(&'a str, &'a str)> {
    let (time, rest) = text.split_once(':')?;
    if time.is_empty() || !time.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let end = rest.find(stops).unwrap_or(rest.len());
    (end > 0).then(|| rest.split_at(end))
}

/// The headers of the sections open at line `line` of build `id`'s log (the ones starting before
/// it), outermost first: the markers recorded in `<id>.sections` before `line`, replayed as the
/// build page does. Empty for a log written before these lists existed.
pub async fn sections_open_at(logs_dir: &Path, id: BuildId, line: u64, marks: &[Mark]) -> std::io::Result<Vec<Header>> {
    let list = match tokio::fs::read(sections_path(logs_dir, id)).await {
        Ok(list) => list,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let list = String::from_utf8_lossy(&list);
    // (line, text, is a phase, name)
    let mut open: Vec<(u64, &str, bool, Option<&str>)> = Vec::new();
    // Complete entries only: the last one may be cut by a crash.
    for entry in list.split_inclusive('\n').filter_map(|e| e.strip_suffix('\n')) {
        let Some((number, text)) = entry.split_once(' ') else { continue };
        let Ok(number) = number.parse::<u64>() else { continue };
        if number >= line {
            break;
        }
        match marker(text) {
            Some(Marker::Phase) => {
                open.clear();
                open.push((number, text, true, None));
            }
            Some(Marker::Start(name)) => open.push((number, text, false, name)),
            Some(Marker::End(name)) => {
                let ended = open.iter().rposition(|s| !s.2 && (name.is_none() || s.3 == name));
                if let Some(at) = ended {
                    open.truncate(at);
                }
            }
            None => {}
        }
    }
    Ok(open
        .into_iter()
        .map(|(line, text, ..)| Header { line, text: text.to_string(), time: mark_of(marks, line).map(|m| m.time_ms) })
        .collect())
}

/// Where a window of a log starts.
pub enum WindowStart {
    /// At line N (1-based).
    Line(u64),
    /// The last N lines.
    Tail(u64),
}

/// Up to `count` complete lines of `file` from `from`, found through the index `marks`: the read
/// starts at the batch holding the first line wanted, never at the start of a large file.
pub async fn window(file: tokio::fs::File, marks: &[Mark], from: WindowStart, count: u64) -> std::io::Result<Window> {
    let mut reader = tokio::io::BufReader::with_capacity(READ_BLOCK, file);
    // Lines in the whole log: counted from the last mark on.
    let last = marks.last().copied().unwrap_or(Mark { line: 1, offset: 0, time_ms: 0 });
    reader.seek(SeekFrom::Start(last.offset)).await?;
    let total = last.line - 1 + count_lines(&mut reader).await?;
    let first = match from {
        WindowStart::Line(line) => line.max(1),
        WindowStart::Tail(n) => total.saturating_sub(n) + 1,
    };
    let start = mark_of(marks, first).copied().unwrap_or(Mark { line: 1, offset: 0, time_ms: 0 });
    reader.seek(SeekFrom::Start(start.offset)).await?;
    let (mut number, mut buffer) = (start.line, Vec::new());
    let mut window = Window { first, lines: Vec::new(), times: Vec::new(), total, open: Vec::new() };
    while (window.lines.len() as u64) < count {
        buffer.clear();
        if reader.read_until(b'\n', &mut buffer).await? == 0 || buffer.last() != Some(&b'\n') {
            break;
        }
        if number >= first {
            buffer.pop();
            window.lines.push(String::from_utf8_lossy(&buffer).into_owned());
            window.times.push(mark_of(marks, number).map(|m| m.time_ms));
        }
        number += 1;
    }
    Ok(window)
}

/// Complete lines from the reader's position to the end.
async fn count_lines(reader: &mut tokio::io::BufReader<tokio::fs::File>) -> std::io::Result<u64> {
    let mut lines = 0;
    loop {
        let block = reader.fill_buf().await?;
        if block.is_empty() {
            return Ok(lines);
        }
        lines += count_newlines(block);
        let length = block.len();
        reader.consume(length);
    }
}

/// A line as a reader sees it: escape sequences removed and, like a terminal, only what was
/// written after its last carriage return.
pub fn plain_line(line: &str) -> String {
    let plain = strip_escapes(line);
    plain.split('\r').rfind(|part| !part.is_empty()).unwrap_or_default().to_string()
}

/// What a search of a log found: how many lines match, and the numbers of the first of them.
#[derive(Debug, serde::Serialize)]
pub struct Found {
    pub total: u64,
    pub lines: Vec<u64>,
}

/// Lines of `file` whose plain text ([`plain_line`]) contains `needle`, ignoring case; at most
/// `keep` line numbers are kept, all are counted. Reads the file once, block by block.
pub async fn search(file: tokio::fs::File, needle: &str, keep: usize) -> std::io::Result<Found> {
    let needle = needle.to_lowercase();
    let mut reader = tokio::io::BufReader::with_capacity(READ_BLOCK, file);
    let (mut found, mut number, mut buffer) = (Found { total: 0, lines: Vec::new() }, 0u64, Vec::new());
    loop {
        buffer.clear();
        if reader.read_until(b'\n', &mut buffer).await? == 0 {
            return Ok(found);
        }
        number += 1;
        let text = String::from_utf8_lossy(&buffer);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        // Most lines hold no escape: test them as they are before making a plain copy.
        let hit = if text.contains(['\x1b', '\r']) {
            plain_line(text).to_lowercase().contains(&needle)
        } else {
            text.to_lowercase().contains(&needle)
        };
        if hit {
            found.total += 1;
            if found.lines.len() < keep {
                found.lines.push(number);
            }
        }
    }
}

/// Cuts a byte stream into lines; keeps the unfinished tail for the next chunk.
#[derive(Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds `chunk` and calls `emit(line, true)` for each finished line (newline and `\r\n`
    /// removed), and `emit(part, false)` for the first [`MAX_LINE_BYTES`] of a line that long.
    pub fn feed(&mut self, mut chunk: &[u8], mut emit: impl FnMut(&[u8], bool)) {
        while let Some(at) = chunk.iter().position(|&b| b == b'\n') {
            let (line, rest) = (&chunk[..at], &chunk[at + 1..]);
            if self.partial.is_empty() {
                emit(strip_cr(line), true);
            } else {
                self.partial.extend_from_slice(line);
                emit(strip_cr(&self.partial), true);
                self.partial.clear();
            }
            chunk = rest;
        }
        self.partial.extend_from_slice(chunk);
        while self.partial.len() >= MAX_LINE_BYTES {
            let cut = utf8_boundary(&self.partial, MAX_LINE_BYTES);
            emit(&self.partial[..cut], false);
            self.partial.drain(..cut);
        }
    }

    /// The last line when the stream did not end with a newline.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8], bool)) {
        if !self.partial.is_empty() {
            emit(strip_cr(&self.partial), true);
            self.partial.clear();
        }
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The largest cut at or below `max` that does not split a UTF-8 character (when the data is UTF-8).
fn utf8_boundary(bytes: &[u8], max: usize) -> usize {
    let mut cut = max.min(bytes.len());
    while cut > max.saturating_sub(3) && cut < bytes.len() && (bytes[cut] & 0b1100_0000) == 0b1000_0000 {
        cut -= 1;
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        for chunk in chunks {
            splitter.feed(chunk, |l, _| lines.push(String::from_utf8_lossy(l).into_owned()));
        }
        splitter.finish(|l, _| lines.push(String::from_utf8_lossy(l).into_owned()));
        lines
    }

    #[test]
    fn multibyte_characters_split_across_chunks_survive() {
        let text = "héllo wörld\n€uro\n".as_bytes();
        let (a, b) = text.split_at(2); // inside 'é'
        assert_eq!(split(&[a, b]), vec!["héllo wörld", "€uro"]);
    }

    #[test]
    fn trailing_text_and_crlf() {
        assert_eq!(split(&[b"a\r\nb\n\nc"]), vec!["a", "b", "", "c"]);
    }

    #[test]
    fn invalid_utf8_is_kept_lossily() {
        assert_eq!(split(&[b"ok \xff\xfe end\n"]), vec!["ok \u{fffd}\u{fffd} end"]);
    }

    #[tokio::test]
    async fn secrets_are_masked_whole_and_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let key = "-----BEGIN KEY-----\nMIIEpAIBAAKCAQEA7\n-----END KEY-----".to_string();
        let mut log = BuildLog::create(dir.path(), BuildId(1), Bus::in_process())
            .await
            .unwrap()
            .masking(vec!["hunter22".into(), key]);
        // The secret arrives cut across two chunks of output.
        for chunk in [b"token=hun".as_slice(), b"ter22 ok\n", b"MIIEpAIBAAKCAQEA7\n"] {
            log.output(Stream::Stdout, chunk);
        }
        log.close().await.unwrap();
        let text = std::fs::read_to_string(log_path(dir.path(), BuildId(1))).unwrap();
        assert_eq!(text, "token=*** ok\n***\n");
    }

    #[tokio::test]
    async fn a_reopened_log_numbers_on() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(log_path(dir.path(), BuildId(2)), "one\ntwo\ncut").unwrap();
        let mut log = BuildLog::reopen(dir.path(), BuildId(2), Bus::in_process()).await.unwrap();
        assert_eq!(log.lines(), 3);
        log.line(b"four");
        log.close().await.unwrap();
        assert_eq!(std::fs::read_to_string(log_path(dir.path(), BuildId(2))).unwrap(), "one\ntwo\ncut\nfour\n");
    }

    #[test]
    fn endless_lines_are_cut() {
        let long = vec![b'x'; MAX_LINE_BYTES * 2 + 10];
        let lines = split(&[&long]);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines.iter().map(String::len).sum::<usize>(), long.len());
    }

    async fn logged(secrets: &[&str], max_bytes: u64, chunks: &[&[u8]]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let mut log = BuildLog::create(dir.path(), BuildId(3), Bus::in_process())
            .await
            .unwrap()
            .masking(secrets.iter().map(|s| s.to_string()).collect())
            .capped(max_bytes);
        for chunk in chunks {
            log.output(Stream::Stdout, chunk);
            log.write_pending().await.unwrap();
        }
        log.note("done");
        log.close().await.unwrap();
        std::fs::read_to_string(log_path(dir.path(), BuildId(3))).unwrap()
    }

    #[tokio::test]
    async fn a_secret_across_the_long_line_cut_is_masked() {
        let secret = "hunter2-supersecret";
        // The secret starts a few bytes before the splitter's cut at MAX_LINE_BYTES, and arrives
        // in two chunks.
        let mut line = vec![b'x'; MAX_LINE_BYTES - 7];
        line.extend_from_slice(secret.as_bytes());
        line.extend_from_slice(&vec![b'y'; MAX_LINE_BYTES * 2]);
        line.push(b'\n');
        let (a, b) = line.split_at(MAX_LINE_BYTES - 3);
        let text = logged(&[secret], 0, &[a, b]).await;
        assert!(!text.contains("hunter2"), "secret start leaked");
        assert!(!text.contains("supersecret"), "secret end leaked");
        assert!(!text.contains("-super"), "a piece of the secret leaked");
        assert_eq!(text.matches(MASK).count(), 1);
        assert_eq!(text.matches('x').count(), MAX_LINE_BYTES - 7);
        assert_eq!(text.matches('y').count(), MAX_LINE_BYTES * 2);
        assert!(text.lines().all(|l| l.len() <= MAX_LINE_BYTES));
    }

    #[tokio::test]
    async fn a_secret_split_by_escape_sequences_is_masked() {
        let text =
            logged(&["hunter2-supersecret"], 0, &[b"pw: hunter2-\x1b[0msupersecret\n", b"\x1b[1mbold\x1b[0m\n"]).await;
        assert!(!text.contains("supersecret"), "{text:?}");
        assert!(text.starts_with("pw: ***\n"), "{text:?}");
        // Lines without a secret keep their colours.
        assert!(text.contains("\x1b[1mbold\x1b[0m\n"), "{text:?}");
        assert_eq!(strip_escapes("a\x1b]0;title\x07b\x1b]8;;x\x1b\\c\x1b(Bd"), "abcd");
    }

    #[tokio::test]
    async fn a_log_is_cut_at_the_cap_and_the_notes_go_on() {
        let line = [b'z'; 99];
        let mut chunks = Vec::new();
        for _ in 0..50 {
            chunks.push([line.as_slice(), b"\n"].concat());
        }
        let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let text = logged(&[], 1000, &chunks).await;
        assert_eq!(text.lines().filter(|l| l.starts_with('z')).count(), 10);
        assert!(
            text.contains("[autobuilder] log cut at 1 kB: the build goes on; later output is not kept\n"),
            "{text}"
        );
        assert!(text.ends_with("[autobuilder] done\n"), "{text}");
        assert_eq!(text.matches("log cut").count(), 1);
    }

    #[tokio::test]
    async fn windows_and_searches_use_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = BuildLog::create(dir.path(), BuildId(4), Bus::in_process()).await.unwrap();
        for batch in 0..30 {
            for line in 0..10 {
                log.line(format!("batch {batch} line {line} \x1b[31mRed\x1b[0m").as_bytes());
            }
            log.write_pending().await.unwrap();
        }
        log.line(b"10%\r100% DONE");
        log.close().await.unwrap();
        let marks = read_index(dir.path(), BuildId(4)).await.unwrap();
        assert_eq!(marks.len(), 31);
        assert_eq!((marks[3].line, marks[30].line), (31, 301));
        let open = || tokio::fs::File::open(log_path(dir.path(), BuildId(4)));

        let window = window(open().await.unwrap(), &marks, WindowStart::Line(95), 10).await.unwrap();
        assert_eq!((window.first, window.total, window.lines.len()), (95, 301, 10));
        assert_eq!(window.lines[0], "batch 9 line 4 \x1b[31mRed\x1b[0m");
        assert_eq!(window.lines[6], "batch 10 line 0 \x1b[31mRed\x1b[0m");
        assert_eq!(window.times[0], Some(marks[9].time_ms));
        assert_eq!(window.times[6], Some(marks[10].time_ms));
        let tail = super::window(open().await.unwrap(), &marks, WindowStart::Tail(2), 2).await.unwrap();
        assert_eq!((tail.first, tail.lines[1].as_str()), (300, "10%\r100% DONE"));
        // A log without an index is read from its start.
        let old = super::window(open().await.unwrap(), &[], WindowStart::Line(300), 5).await.unwrap();
        assert_eq!((old.total, old.lines.len(), old.times[0]), (301, 2, None));

        // Case ignored, escapes removed, progress shown at its end.
        let found = search(open().await.unwrap(), "line 3 red", 5).await.unwrap();
        assert_eq!((found.total, found.lines), (30, vec![4, 14, 24, 34, 44]));
        assert_eq!(search(open().await.unwrap(), "mred", 5).await.unwrap().total, 0);
        assert_eq!(search(open().await.unwrap(), "100% done", 5).await.unwrap().lines, vec![301]);
        assert_eq!(search(open().await.unwrap(), "10%", 5).await.unwrap().total, 0);
    }

    #[tokio::test]
    async fn the_sections_open_at_a_line_come_from_the_markers_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = BuildLog::create(dir.path(), BuildId(5), Bus::in_process()).await.unwrap();
        log.phase("fetch"); // 1
        log.line(b"::group::Closed"); // 2
        log.line(b"::endgroup::"); // 3
        log.write_pending().await.unwrap();
        log.phase("script"); // 4
        log.line(b"::group::Outer"); // 5
        log.line(b"\x1b[0Ksection_start:1700000000:inner[collapsed=true]\r\x1b[0KInner"); // 6
        log.line(b"section_start:1700000000:other\rOther"); // 7
        log.line(b"section_end:1700000001:other\r\x1b[0K"); // 8
        log.line(b"inside ::group:: section_start:1:x\ry"); // 9
        log.write_pending().await.unwrap();
        log.line(b"\x1b[0Ksection_end:1700000002:inner\r\x1b[0K"); // 10
        log.line(b"::endgroup::"); // 11
        log.line(b"after"); // 12
        log.close().await.unwrap();
        let recorded = std::fs::read_to_string(sections_path(dir.path(), BuildId(5))).unwrap();
        assert_eq!(
            recorded.lines().map(|l| l.split(' ').next().unwrap()).collect::<Vec<_>>(),
            ["1", "2", "3", "4", "5", "6", "7", "8", "10", "11"]
        );
        let marks = read_index(dir.path(), BuildId(5)).await.unwrap();
        let open_at = async |line| {
            let open = sections_open_at(dir.path(), BuildId(5), line, &marks).await.unwrap();
            open.iter().map(|h| h.line).collect::<Vec<_>>()
        };
        assert_eq!(open_at(1).await, [] as [u64; 0]);
        assert_eq!(open_at(3).await, [1, 2]);
        assert_eq!(open_at(4).await, [1], "the group ended");
        assert_eq!(open_at(5).await, [4], "a phase ends the one before");
        assert_eq!(open_at(8).await, [4, 5, 6, 7]);
        assert_eq!(open_at(9).await, [4, 5, 6], "ended by name");
        assert_eq!(open_at(11).await, [4, 5]);
        assert_eq!(open_at(13).await, [4]);
        let open = sections_open_at(dir.path(), BuildId(5), 9, &marks).await.unwrap();
        assert_eq!(open[1], Header { line: 5, text: "::group::Outer".into(), time: Some(marks[1].time_ms) });
        assert_eq!(open[0].text, "[autobuilder] phase script");

        // A restarted build appends to the list; a log without one has no sections.
        let mut log = BuildLog::reopen(dir.path(), BuildId(5), Bus::in_process()).await.unwrap();
        log.line(b"::group::Later"); // 13
        log.close().await.unwrap();
        assert_eq!(open_at(14).await, [4, 13]);
        assert!(sections_open_at(dir.path(), BuildId(6), 10, &[]).await.unwrap().is_empty());
    }

    #[test]
    fn markers_are_read_as_the_page_reads_them() {
        for (text, expected) in [
            ("[autobuilder] phase image", Some(Marker::Phase)),
            ("[autobuilder] phase two words", None),
            ("::group::Title", Some(Marker::Start(None))),
            ("::group::a\rb", None),
            ("::endgroup::", Some(Marker::End(None))),
            ("section_start:12:build_step[collapsed=true]\r\x1b[0KBuild", Some(Marker::Start(Some("build_step")))),
            ("section_start:12:name\rTitle", Some(Marker::Start(Some("name")))),
            ("section_start:12:name", None),
            ("section_start::name\rTitle", None),
            ("section_start:12:name[open\rTitle", None),
            ("\x1b[0Ksection_end:12:name\r\x1b[0K", Some(Marker::End(Some("name")))),
            ("section_end:x:name", None),
            ("plain", None),
        ] {
            assert_eq!(marker(text), expected, "{text:?}");
        }
    }

    #[tokio::test]
    async fn tails_are_found_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.log");
        // Lines of every length, some longer than the read block, and no final newline.
        let mut content = String::new();
        let mut starts = Vec::new();
        for i in 0..300 {
            starts.push(content.len() as u64);
            content.push_str(&format!("{i}:{}\n", "w".repeat((i * 7) % 90)));
        }
        let complete = content.len() as u64;
        content.push_str("unfinished");
        std::fs::write(&path, &content).unwrap();
        let mut file = tokio::fs::File::open(&path).await.unwrap();
        for block in [16, 64, 4096] {
            for n in [0u64, 1, 2, 17, 299, 300, 301, 5000] {
                let offset = tail_offset(&mut file, n, block).await.unwrap();
                let expected =
                    if n == 0 { complete } else { starts.get(300 - n.min(300) as usize).copied().unwrap_or(0) };
                assert_eq!(offset, expected, "tail {n}, block {block}");
                assert_eq!(lines_before(&mut file, offset).await.unwrap(), 300 - n.min(300), "tail {n}");
            }
        }
        // A file ending with its newline, an empty file, a file without any newline.
        for (content, n, expected) in
            [("a\nb\n", 1, 2), ("", 3, 0), ("no newline", 1, 0), ("x\n", 0, 2), ("a\nb\n", u64::MAX, 0)]
        {
            std::fs::write(&path, content).unwrap();
            let mut file = tokio::fs::File::open(&path).await.unwrap();
            assert_eq!(tail_offset(&mut file, n, 3).await.unwrap(), expected, "{content:?}");
        }
    }
}
