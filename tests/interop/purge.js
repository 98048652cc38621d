#!/usr/bin/env node
// A real PouchDB (http adapter, and in-memory local databases) around a purge on a server: replicate a database
// with a conflicted document into a local one, purge a whole document and one conflicting leaf on the server
// (PouchDB's http adapter has no purge: a plain POST /{db}/_purge, as an admin tool sends it), read the server
// through PouchDB, replicate from it again (into the old local database and into a fresh one) and back to it.
//
// Usage: node purge.js DB_URL   (e.g. http://127.0.0.1:8800/pouch_purge; created if missing)
// Prints one JSON line on stdout: {"ok": true, "steps": {...}} or {"ok": false, "error": ...}.
// Bounded: every request has a 60 s timeout, the whole run 120 s.
'use strict';

for (const name of ['log', 'info', 'debug', 'warn']) {
  console[name] = (...args) => console.error(...args);
}

const PouchDB = require('pouchdb-core')
  .plugin(require('pouchdb-adapter-http'))
  .plugin(require('pouchdb-adapter-memory'))
  .plugin(require('pouchdb-replication'));

const url = process.argv[2];
const timer = setTimeout(() => done({ ok: false, error: 'timeout (120 s)' }, 2), 120000);

function done(result, code) {
  clearTimeout(timer);
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(code));
}

function fetchWithTimeout(u, options = {}) {
  const t = AbortSignal.timeout(60000);
  return PouchDB.fetch(u, { ...options, signal: options.signal ? AbortSignal.any([options.signal, t]) : t });
}

async function purge(body) {
  const r = await fetchWithTimeout(`${url}/_purge`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

const ids = (res) => res.rows.map((r) => r.id);
const changed = async (db) => (await db.changes({ since: 0, style: 'all_docs' })).results.map((r) => r.id).sort();
const replicate = async (from, to) => {
  const r = await PouchDB.replicate(from, to, { batch_size: 50 });
  return { ok: r.ok, docs_written: r.docs_written };
};

async function main() {
  const steps = {};
  const remote = new PouchDB(url, { fetch: fetchWithTimeout });
  const local = new PouchDB('local-' + Date.now(), { adapter: 'memory' });
  const a = await remote.put({ _id: 'a', v: 1 });
  const b = await remote.put({ _id: 'b', v: 1 });
  await remote.bulkDocs([
    { _id: 'c', _rev: '2-' + 'a'.repeat(32), v: 'x', _revisions: { start: 2, ids: ['a'.repeat(32), '1'.repeat(32)] } },
    { _id: 'c', _rev: '2-' + 'b'.repeat(32), v: 'y', _revisions: { start: 2, ids: ['b'.repeat(32), '1'.repeat(32)] } },
  ], { new_edits: false });
  steps.first_pull = await replicate(remote, local);
  const infoBefore = await remote.info();

  const losing = '2-' + 'a'.repeat(32); // 'b...' wins (the higher hash)
  steps.purge = await purge({ a: [a.rev], c: [losing], nobody: [b.rev] });
  steps.remote_a = await remote.get('a').then(() => 'found', (e) => e.status);
  const c = await remote.get('c', { conflicts: true });
  steps.remote_c = { rev: c._rev, conflicts: c._conflicts || [] };
  steps.remote_all_docs = ids(await remote.allDocs());
  steps.remote_changes = await changed(remote);
  const infoAfter = await remote.info();
  steps.info = { purge_seq: infoAfter.purge_seq, doc_count: infoAfter.doc_count,
    update_seq_grew: infoAfter.update_seq > infoBefore.update_seq };
  steps.remote_revs_diff = await remote.revsDiff({ a: [a.rev], c: [losing] });

  // a PouchDB that replicated before the purge keeps what it has, and goes on replicating
  await remote.put({ _id: 'd', v: 1 });
  steps.second_pull = await replicate(remote, local);
  steps.local_all_docs = ids(await local.allDocs());
  steps.local_c_conflicts = (await local.get('c', { conflicts: true }))._conflicts || [];
  // a fresh one never sees the purged document
  const fresh = new PouchDB('fresh-' + Date.now(), { adapter: 'memory' });
  steps.fresh_pull = await replicate(remote, fresh);
  steps.fresh_all_docs = ids(await fresh.allDocs());
  // the old local database still has `a` and the purged leaf: pushing from scratch sends them back (CouchDB's rule)
  const again = new PouchDB('again-' + Date.now(), { adapter: 'memory' });
  await replicate(local, again);
  steps.push_back = await replicate(again, remote);
  steps.remote_a_after_push = (await remote.get('a'))._rev === a.rev;
  steps.remote_c_after_push = (await remote.get('c', { conflicts: true }))._conflicts || [];
  return steps;
}

main().then((steps) => done({ ok: true, steps }, 0), (err) => done({ ok: false, error: String(err && err.stack || err) }, 1));
