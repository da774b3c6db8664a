//! Keeping `state.db` small: the WAL checkpointer (off the writer's path), the WAL's size
//! limit, and the bytes the database file holds and uses.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::open::{BUSY_TIMEOUT, configure};
use super::sq;
use crate::datastore::error::Result;

/// state.db-wal is cut back to this size whenever the writer restarts it (`journal_size_limit`),
/// and the checkpointer truncates it to zero once it is past this size and fully copied back.
/// 64 MiB is about 16,000 pages: at the bench's c256 rate (a few thousand 1 KiB writes a
/// second, a few pages each) several seconds of writes, so under load the limit is crossed a
/// few times a minute, not on every 200 ms tick (each truncate costs an fsync and holds off the
/// writer while it runs), while an idle or lightly loaded store keeps a WAL no bigger than this.
pub const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// `wal_checkpoint(TRUNCATE)` on `conn` with a busy timeout of 0, so it never waits for the
/// writer or a reader, then the connection's usual `busy` timeout again. Returns SQLite's busy
/// column: 0 when the WAL was copied back and truncated, 1 when something was in the way.
pub fn truncate_wal_nowait(conn: &Connection, busy: std::time::Duration) -> rusqlite::Result<i64> {
    conn.busy_timeout(std::time::Duration::ZERO)?;
    let done = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0));
    conn.busy_timeout(busy)?;
    done
}

/// Copies committed WAL pages into the database file, off the writer's path. Without it, every
/// thousandth commit would pay for a checkpoint (and its fsync) while clients wait.
#[derive(Debug)]
pub struct Checkpointer {
    conn: Connection,
    path: PathBuf,
    page_size: i64,
    /// WAL frames seen at the previous checkpoint: the same count twice means no writes came in
    /// between, so the writer is idle.
    last_frames: i64,
}

impl Checkpointer {
    pub fn open(path: &Path) -> Result<Checkpointer> {
        let conn = Connection::open(path).map_err(sq(path))?;
        configure(&conn, path)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .map_err(sq(path))?;
        let page_size = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(sq(path))?;
        Ok(Checkpointer {
            conn,
            path: path.to_path_buf(),
            page_size,
            last_frames: -1,
        })
    }

    /// A passive checkpoint: never waits for readers or the writer. Then, once every frame is
    /// copied back and either no write came in since the previous call (the writer is idle) or
    /// the WAL is past [`WAL_SIZE_LIMIT`], truncate the WAL to zero bytes. Returns the WAL size
    /// in frames and how many were copied, as the passive checkpoint saw them.
    pub fn checkpoint(&mut self) -> Result<(i64, i64)> {
        let (frames, copied): (i64, i64) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })
            .map_err(sq(&self.path))?;
        let idle = frames == self.last_frames;
        self.last_frames = frames;
        if frames > 0 && copied == frames && (idle || frames * self.page_size > WAL_SIZE_LIMIT) {
            self.truncate()?;
        }
        Ok((frames, copied))
    }

    /// `wal_checkpoint(TRUNCATE)` that neither waits for the writer nor for readers (busy
    /// timeout 0): it takes the write lock only if it is free, and gives up if a reader still
    /// uses the WAL. Everything is already copied back, so it holds the lock only for the
    /// truncate itself; a commit arriving meanwhile waits that long, readers never wait.
    fn truncate(&mut self) -> Result<()> {
        let path = self.path.clone();
        match truncate_wal_nowait(&self.conn, BUSY_TIMEOUT) {
            // Busy (0 = done, 1 = a reader or the writer was in the way): retried next time.
            Ok(_) => {
                self.last_frames = -1;
                Ok(())
            }
            Err(e) if is_busy(&e) => Ok(()),
            Err(e) => Err(sq(&path)(e)),
        }
    }

    /// Bytes in use in the database (pages minus free pages), what the quota is checked against.
    pub fn in_use_bytes(&self) -> Result<i64> {
        db_size(&self.conn, &self.path).map(|(_, in_use)| in_use)
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Bytes allocated by the database file at `path` and bytes in use (allocated minus free
/// pages), read through `conn`.
pub(super) fn db_size(conn: &Connection, path: &Path) -> Result<(i64, i64)> {
    let q = |name: &str| -> Result<i64> {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .map_err(sq(path))
    };
    let (pages, free, size) = (q("page_count")?, q("freelist_count")?, q("page_size")?);
    Ok((pages * size, (pages - free) * size))
}
