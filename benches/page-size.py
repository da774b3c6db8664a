#!/usr/bin/env python3
"""SQLite page size 4, 8 and 16 KiB on state.db's own schema (read from src/datastore/sql.rs).

Writes N keys with 1 KiB values as creates, then updates the first half (an update row carries
the previous value in prev_value, so it holds 2 KiB), one write per transaction and then 50
per transaction as an apply batch under load does. The WAL is never checkpointed while
writing, so its growth is the bytes each commit appends. Prints, per page size: the database
file after a TRUNCATE checkpoint, WAL KiB appended per create and per update, the write time,
and the time of a 500-key list at the current revision (latest joined to kv, as the datastore's
range read does), best of 20. Run from the repository root: `python3 benches/page-size.py`
(files under /var/tmp). System SQLite, not the bundled one k8sd links: the layout is the same.
"""
import os, shutil, sqlite3, tempfile, time

DIR = tempfile.mkdtemp(prefix='k8sd-page-size-', dir='/var/tmp')
SRC = open('src/datastore/sql.rs').read()
# kv as it was when this measurement was made (`WITHOUT ROWID`), then the other tables.
SCHEMA = (SRC.split('pub const KV_TABLE_WITHOUT_ROWID: &str = "')[1].split('";')[0]
          + SRC.split('pub const SCHEMA: &str = "')[1].split('";')[0])


def run(page, batch, n=6000):
    p = f'{DIR}/p{page}-b{batch}.db'
    c = sqlite3.connect(p, isolation_level=None)
    c.execute(f'PRAGMA page_size={page}')
    c.execute('PRAGMA journal_mode=wal'); c.execute('PRAGMA synchronous=NORMAL')
    c.execute('PRAGMA wal_autocheckpoint=0')
    c.executescript(SCHEMA)
    val = os.urandom(1024)
    rev = 0

    def write(i, update):
        nonlocal rev
        if rev % batch == 0: c.execute('BEGIN IMMEDIATE')
        rev += 1
        k = b'/registry/configmaps/default/cm-%06d' % i
        if update:
            row = (rev, k, i + 1, 2, val, i + 1, i + 1, 1, val)
        else:
            row = (rev, k, rev, 1, val, 0, 0, 0, None)
        c.execute('INSERT INTO kv VALUES (?,0,?,?,?,0,?,0,?,?,?,0,?)', row)
        c.execute('INSERT OR REPLACE INTO latest VALUES (?,?,0)', (k, rev))
        if rev % batch == 0: c.execute('COMMIT')

    t0 = time.perf_counter()
    for i in range(n): write(i, False)
    w1 = os.path.getsize(p + '-wal')
    for i in range(n // 2): write(i, True)
    if c.in_transaction: c.execute('COMMIT')
    w2 = os.path.getsize(p + '-wal')
    took = time.perf_counter() - t0
    c.execute('PRAGMA wal_checkpoint(TRUNCATE)')
    size = os.path.getsize(p)
    best = 1e9
    for _ in range(20):
        t = time.perf_counter()
        c.execute('SELECT kv.key, kv.value FROM latest JOIN kv ON kv.rev = latest.rev AND kv.sub = latest.sub '
                  'WHERE latest.key >= ? AND latest.key < ? LIMIT 500',
                  (b'/registry/configmaps/', b'/registry/configmaps0')).fetchall()
        best = min(best, time.perf_counter() - t)
    c.close()
    print(f'page {page // 1024:2d} KiB, {batch:2d} per txn: state.db {size / 2**20:5.1f} MiB, '
          f'WAL per create {w1 / n / 1024:5.1f} KiB, per update {(w2 - w1) / (n // 2) / 1024:5.1f} KiB, '
          f'writes {took:4.1f} s, list 500 {best * 1000:5.2f} ms')


for batch in (1, 50):
    for page in (4096, 8192, 16384):
        run(page, batch)
shutil.rmtree(DIR)
