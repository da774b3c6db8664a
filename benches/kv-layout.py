#!/usr/bin/env python3
"""state.db's `kv` layouts side by side: `WITHOUT ROWID` at 16 KiB pages (what earlier builds
created) and a rowid table at 4 KiB (what this build creates), both read from src/datastore/sql.rs.

For each: 10,000 keys of 1 KiB values spread over 20 namespaces, then 6000 writes, either creates
of new keys or updates of random existing ones (an update row also holds the previous value),
in transactions of 1, 16 and 256 writes (c1 to c256 apply batches). The WAL is never
checkpointed while writing, so its growth is what each commit appends: the pages the commit
dirtied, whole. WAL bytes do not depend on the machine's load; the write times do, so read
those as ratios only. Then the file after a TRUNCATE checkpoint and a 500-key list at the
current revision (latest joined to kv, as the datastore's range read does), best of 20.
Run from the repository root: `python3 benches/kv-layout.py` (files under /var/tmp). System
SQLite, not the bundled one k8sd links: the file layout is the same.
"""
import os, random, sqlite3, tempfile, time

SRC = open('src/datastore/sql.rs').read()


def const(name):
    return SRC.split(f'pub const {name}: &str = "')[1].split('";')[0]


LAYOUTS = {
    'without rowid, 16 KiB': (16384, const('KV_TABLE_WITHOUT_ROWID')),
    'rowid, 4 KiB': (4096, const('KV_TABLE')),
}
SCHEMA = const('SCHEMA')
COLS = ('rev, sub, key, create_rev, version, lease, value, deleted, '
        'prev_rev, prev_create_rev, prev_version, prev_lease, prev_value')
DIR = tempfile.mkdtemp(prefix='k8sd-kv-layout-', dir='/var/tmp')


def key(i):
    return b'/registry/configmaps/ns%02d/cm-%06d' % (i % 20, i)


def run(page, kv_table, batch, workload, n=6000, nkeys=10000):
    p = f'{DIR}/db'
    for s in ('', '-wal', '-shm'):
        if os.path.exists(p + s):
            os.remove(p + s)
    c = sqlite3.connect(p, isolation_level=None)
    c.execute(f'PRAGMA page_size={page}')
    c.execute('PRAGMA journal_mode=wal'); c.execute('PRAGMA synchronous=NORMAL')
    c.execute('PRAGMA secure_delete=ON'); c.execute('PRAGMA wal_autocheckpoint=0')
    c.executescript(kv_table + SCHEMA)
    val = os.urandom(1024)
    rnd = random.Random(1)
    ins = f'INSERT INTO kv ({COLS}) VALUES (?,0,?,?,?,0,?,0,?,?,?,0,?)'
    c.execute('BEGIN')
    for i in range(nkeys):
        c.execute(ins, (i + 1, key(i), i + 1, 1, val, 0, 0, 0, None))
        c.execute('INSERT INTO latest VALUES (?,?,0)', (key(i), i + 1))
    c.execute('COMMIT')
    c.execute('PRAGMA wal_checkpoint(TRUNCATE)')
    rev, created, done = nkeys, nkeys, 0
    join = 'kv.rev = latest.rev AND kv.sub = latest.sub'
    t0 = time.perf_counter()
    while done < n:
        c.execute('BEGIN IMMEDIATE')
        for _ in range(batch):
            rev += 1; done += 1
            if workload == 'create':
                k = key(created); created += 1
            else:
                k = key(rnd.randrange(nkeys))
            prev = c.execute('SELECT kv.create_rev, kv.rev, kv.version, kv.value FROM latest JOIN kv '
                             f'ON {join} WHERE latest.key = ?', (k,)).fetchone()
            if prev:
                c.execute(ins, (rev, k, prev[0], prev[2] + 1, val, prev[1], prev[0], prev[2], prev[3]))
            else:
                c.execute(ins, (rev, k, rev, 1, val, 0, 0, 0, None))
            c.execute('INSERT INTO latest (key, rev, sub) VALUES (?1, ?2, 0) '
                      'ON CONFLICT(key) DO UPDATE SET rev = ?2, sub = 0', (k, rev))
        c.execute('COMMIT')
    took = time.perf_counter() - t0
    wal = os.path.getsize(p + '-wal')
    c.execute('PRAGMA wal_checkpoint(TRUNCATE)')
    size = os.path.getsize(p)
    best = 1e9
    for _ in range(20):
        t = time.perf_counter()
        rows = c.execute(f'SELECT kv.key, kv.value FROM latest JOIN kv ON {join} '
                         'WHERE latest.key >= ? AND latest.key < ? LIMIT 500',
                         (b'/registry/configmaps/ns03/', b'/registry/configmaps/ns030')).fetchall()
        best = min(best, time.perf_counter() - t)
    assert len(rows) == 500
    c.close()
    return wal / n / 1024, took / n * 1e6, size / 2**20, best * 1e3


print('| writes | per txn | layout | WAL KiB per write | us per write | state.db MiB | list 500 ms |')
print('|---|---:|---|---:|---:|---:|---:|')
for workload in ('create', 'update'):
    for batch in (1, 16, 256):
        for name, (page, table) in LAYOUTS.items():
            wal, us, mib, ms = run(page, table, batch, workload)
            print(f'| {workload} | {batch} | {name} | {wal:.1f} | {us:.0f} | {mib:.1f} | {ms:.2f} |', flush=True)
