#!/usr/bin/env python3
"""SQLite page size 4 and 16 KiB on the Raft log's own schema (read from src/raft/log_store.rs).

log.db is a rowid table (`idx INTEGER PRIMARY KEY`), so an entry of up to about 4000 bytes
stays in its b-tree cell even at 4 KiB pages: unlike state.db, a larger page buys no overflow
page back. What it could change is the bytes each commit writes and fsyncs. Appends entries
of 1.1 KiB (a 1 KiB value with its key and Raft header) as the log writer does:
`synchronous=FULL`, one transaction per group of 1 (c1), 16 and 64 entries, each also
upserting the `committed` row of `meta`; the WAL is not checkpointed while writing. Prints,
per page size and group: ms per commit (fsync included), WAL KiB appended per entry, and the
file after a TRUNCATE checkpoint. Rounds alternate between the page sizes. Run from the
repository root: `python3 benches/log-page-size.py` (files under /var/tmp).
"""
import os, shutil, sqlite3, tempfile, time

DIR = tempfile.mkdtemp(prefix='k8sd-log-page-size-', dir='/var/tmp')
SCHEMA = open('src/raft/log_store.rs').read().split('const SCHEMA: &str = "')[1].split('";')[0]
ENTRY = 1126
ROUNDS = 3


def run(page, group, n):
    p = f'{DIR}/p{page}-g{group}.db'
    for suffix in ('', '-wal', '-shm'):
        if os.path.exists(p + suffix):
            os.remove(p + suffix)
    c = sqlite3.connect(p, isolation_level=None)
    c.execute(f'PRAGMA page_size={page}')
    c.execute('PRAGMA journal_mode=wal'); c.execute('PRAGMA synchronous=FULL')
    c.execute('PRAGMA wal_autocheckpoint=0')
    c.executescript(SCHEMA)
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    t0 = time.perf_counter()
    idx = 0
    for _ in range(n // group):
        c.execute('BEGIN IMMEDIATE')
        for _ in range(group):
            idx += 1
            c.execute('INSERT INTO log VALUES (?,?,?)', (idx, idx * 7919 % 2**32, os.urandom(ENTRY)))
        c.execute("INSERT OR REPLACE INTO meta VALUES ('committed', ?)", (b'{"leader_id":{"term":3,"node_id":1},"index":%d}' % idx,))
        c.execute('COMMIT')
    took = time.perf_counter() - t0
    wal = os.path.getsize(p + '-wal')
    c.execute('PRAGMA wal_checkpoint(TRUNCATE)')
    size = os.path.getsize(p)
    c.close()
    return took / (n // group) * 1000, wal / n / 1024, size / 2**20


res = {}
for r in range(ROUNDS):
    for group, n in ((1, 1000), (16, 8000), (64, 16000)):
        for page in ((4096, 16384) if r % 2 == 0 else (16384, 4096)):
            res.setdefault((page, group), []).append(run(page, group, n))
for (page, group), rows in sorted(res.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    ms = sorted(x[0] for x in rows)[len(rows) // 2]
    print(f'page {page // 1024:2d} KiB, {group:2d} entries per txn: {ms:6.2f} ms per commit (median of {len(rows)}), '
          f'WAL per entry {rows[0][1]:5.2f} KiB, log.db {rows[0][2]:5.1f} MiB')
shutil.rmtree(DIR)
