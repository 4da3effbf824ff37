//! A build's full log: output split into lines on bytes (so a multi-byte character cut between two
//! chunks survives), decoded lossily, and appended to `<data_dir>/logs/<id>.log`.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use crate::bus::{Bus, Event};
use crate::model::BuildId;

/// A line longer than this is cut into several, so one endless line cannot eat the memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Prefix of the lines autobuilder itself writes into a build's log.
pub const NOTE_PREFIX: &str = "[autobuilder] ";

/// Path of the log file of build `id`.
pub fn log_path(logs_dir: &Path, id: BuildId) -> PathBuf {
    logs_dir.join(format!("{}.log", id.0))
}

/// Appends lines to one build's log file. Lines are buffered in memory and written out by
/// [`BuildLog::write_pending`], which the executor calls after every chunk of output; once
/// written, they are published on the bus, numbered from 1.
pub struct BuildLog {
    id: BuildId,
    file: tokio::fs::File,
    bus: Bus,
    pending: Vec<u8>,
    lines: u64,
    published: u64,
    /// Secret values replaced by `***` in every line.
    masks: Vec<String>,
}

/// What a masked secret shows as.
pub const MASK: &str = "***";
/// Lines of a multi-line secret shorter than this are not masked on their own (they would mask
/// ordinary text like `}`); the whole value always is.
const MIN_MASKED_PART: usize = 6;

impl BuildLog {
    pub async fn create(logs_dir: &Path, id: BuildId, bus: Bus) -> std::io::Result<Self> {
        tokio::fs::create_dir_all(logs_dir).await?;
        let file = tokio::fs::File::create(log_path(logs_dir, id)).await?;
        Ok(Self { id, file, bus, pending: Vec::with_capacity(64 * 1024), lines: 0, published: 0, masks: Vec::new() })
    }

    /// Opens the log of a build to append to it (after a restart), numbering on from its end.
    pub async fn reopen(logs_dir: &Path, id: BuildId, bus: Bus) -> std::io::Result<Self> {
        let path = log_path(logs_dir, id);
        let existing = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await?;
        if existing.last().is_some_and(|&b| b != b'\n') {
            file.write_all(b"\n").await?; // end a line cut by the crash
        }
        let lines = existing.iter().filter(|&&b| b == b'\n').count() as u64
            + u64::from(existing.last().is_some_and(|&b| b != b'\n'));
        Ok(Self { id, file, bus, pending: Vec::with_capacity(64 * 1024), lines, published: lines, masks: Vec::new() })
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

    /// Appends one line (without its newline), decoding invalid UTF-8 lossily.
    pub fn line(&mut self, bytes: &[u8]) {
        let mut text = String::from_utf8_lossy(bytes);
        for mask in &self.masks {
            if text.contains(mask.as_str()) {
                text = text.replace(mask.as_str(), MASK).into();
            }
        }
        self.pending.extend_from_slice(text.as_bytes());
        self.pending.push(b'\n');
        self.lines += 1;
    }

    /// Appends a line of autobuilder's own, marked with [`NOTE_PREFIX`].
    pub fn note(&mut self, text: &str) {
        self.line(format!("{NOTE_PREFIX}{text}").as_bytes());
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
        self.file.write_all(&self.pending).await?;
        let text = String::from_utf8(std::mem::take(&mut self.pending)).expect("lines are decoded lossily");
        self.bus.publish(Event::Lines { id: self.id, seq: self.published + 1, text });
        self.published = self.lines;
        Ok(())
    }

    pub async fn close(mut self) -> std::io::Result<()> {
        self.write_pending().await?;
        self.file.flush().await
    }
}

/// Cuts a byte stream into lines; keeps the unfinished tail for the next chunk.
#[derive(Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds `chunk` and calls `emit` for each finished line (newline and `\r\n` removed).
    pub fn feed(&mut self, mut chunk: &[u8], mut emit: impl FnMut(&[u8])) {
        while let Some(at) = chunk.iter().position(|&b| b == b'\n') {
            let (line, rest) = (&chunk[..at], &chunk[at + 1..]);
            if self.partial.is_empty() {
                emit(strip_cr(line));
            } else {
                self.partial.extend_from_slice(line);
                emit(strip_cr(&self.partial));
                self.partial.clear();
            }
            chunk = rest;
        }
        self.partial.extend_from_slice(chunk);
        while self.partial.len() >= MAX_LINE_BYTES {
            let cut = utf8_boundary(&self.partial, MAX_LINE_BYTES);
            emit(&self.partial[..cut]);
            self.partial.drain(..cut);
        }
    }

    /// The last line when the stream did not end with a newline.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            emit(strip_cr(&self.partial));
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
            splitter.feed(chunk, |l| lines.push(String::from_utf8_lossy(l).into_owned()));
        }
        splitter.finish(|l| lines.push(String::from_utf8_lossy(l).into_owned()));
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
        let mut splitter = LineSplitter::default();
        // The secret arrives cut across two chunks of output.
        for chunk in [b"token=hun".as_slice(), b"ter22 ok\n", b"MIIEpAIBAAKCAQEA7\n"] {
            splitter.feed(chunk, |line| log.line(line));
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
}
