//! The `log_chunks` table: the build logs of workers, for every `serve` and `live` instance to
//! read. A worker ships each file of a build's log (see `build::log`) in chunks at their byte
//! offsets, under the build's lease: a stale lease ships nothing.

use super::{Lease, Store};
use crate::model::BuildId;

/// Most chunks one read returns; a reader asks again from where it got to.
const CHUNKS_PER_READ: i64 = 64;

/// The files of a build's log, as the history names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogPart {
    Log,
    Index,
    Sections,
}

impl LogPart {
    fn as_str(self) -> &'static str {
        match self {
            LogPart::Log => "log",
            LogPart::Index => "idx",
            LogPart::Sections => "sections",
        }
    }
}

impl Store {
    /// Stores `bytes` of `part` of the log of `lease`'s build, at `offset`; returns how many bytes
    /// the history now holds from `offset` (fewer or more than `bytes` when an earlier attempt
    /// stored a chunk there and its answer was lost), None when the lease is not the build's
    /// current one (nothing is stored).
    pub async fn append_log(
        &self,
        lease: Lease,
        part: LogPart,
        offset: u64,
        bytes: &[u8],
    ) -> anyhow::Result<Option<u64>> {
        let stored = sqlx::query(
            "INSERT INTO log_chunks (build, generation, part, byte_offset, bytes)
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM builds WHERE id = $1 AND lease = $2)
             ON CONFLICT DO NOTHING",
        )
        .bind(lease.build)
        .bind(lease.generation)
        .bind(part.as_str())
        .bind(offset as i64)
        .bind(bytes)
        .execute(&self.pool)
        .await?;
        if stored.rows_affected() > 0 {
            return Ok(Some(bytes.len() as u64));
        }
        let there: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(length(bytes) AS BIGINT) FROM log_chunks
             WHERE build = $1 AND generation = $2 AND part = $3 AND byte_offset = $4",
        )
        .bind(lease.build)
        .bind(lease.generation)
        .bind(part.as_str())
        .bind(offset as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(there.map(|length| length as u64))
    }

    /// The chunks of `part` of build `id`'s log under lease `generation`, from byte `from` on,
    /// in order: (offset, bytes).
    pub async fn log_chunks(
        &self,
        id: BuildId,
        generation: i64,
        part: LogPart,
        from: u64,
    ) -> anyhow::Result<Vec<(i64, Vec<u8>)>> {
        Ok(sqlx::query_as(
            "SELECT byte_offset, bytes FROM log_chunks
             WHERE build = $1 AND generation = $2 AND part = $3 AND byte_offset >= $4 ORDER BY byte_offset LIMIT $5",
        )
        .bind(id)
        .bind(generation)
        .bind(part.as_str())
        .bind(from as i64)
        .bind(CHUNKS_PER_READ)
        .fetch_all(&self.pool)
        .await?)
    }
}
