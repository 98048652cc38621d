#!/usr/bin/env node
// PouchDB peer push helper for bench/replication.py (the initial replication anchor).
//
// Usage: NODE_PATH=tests/interop/node_modules node bench/pouch_push.js DOCS_NDJSON REMOTE_DB_URL [OPTIONS_JSON]
//
// What a PouchDB app does: a local database (OPTIONS_JSON "adapter": "memory" (default) or "leveldb", in a
// temporary folder) holds the documents of DOCS_NDJSON (one JSON document with its _id per line, loaded with
// bulkDocs before the clock starts), then `db.replicate.to(REMOTE_DB_URL, opts)` pushes them. The other keys
// of OPTIONS_JSON are PouchDB.replicate options (batch_size, batches_limit); absent = PouchDB's defaults.
// With leveldb the database is closed after the load and the clock starts before it is opened again: the
// peer's start (opening its database) is timed with the push, as for MyNoSQL's peer in bench/replication.py.
// Prints one JSON line: {"ok", "docs_written", "load_ms", "elapsed_ms", "node_ms"} where elapsed_ms is the
// (re)open and the replication and node_ms is the time since the process started (node start-up, require
// and load included).
// Exits after POUCH_PUSH_MAX_SECONDS (default 1800) whatever happens.
'use strict';

for (const name of ['log', 'info', 'debug', 'warn']) {
  console[name] = (...args) => console.error(...args);
}

const t0 = performance.timeOrigin;
const fs = require('fs');
const os = require('os');
const path = require('path');

const [docsPath, remote, optsArg] = process.argv.slice(2);
if (!docsPath || !remote || !/^http:\/\/127\.0\.0\.1:\d+\//.test(remote)) {
  process.stderr.write('usage: node pouch_push.js DOCS_NDJSON http://127.0.0.1:PORT/DB [OPTIONS_JSON]\n');
  process.exit(64);
}
const opts = optsArg ? JSON.parse(optsArg) : {};
const adapter = opts.adapter || 'memory';
delete opts.adapter;

const maxSeconds = Number(process.env.POUCH_PUSH_MAX_SECONDS || 1800);
setTimeout(() => {
  process.stderr.write(`pouch_push.js: ${maxSeconds} s elapsed, exiting\n`);
  process.exit(2);
}, maxSeconds * 1000).unref();

let PouchDB;
let dir = null;
let name;
if (adapter === 'leveldb') {
  // the `pouchdb` package: what `npm install pouchdb` gives a node app (leveldb on disk, http, replication)
  PouchDB = require('pouchdb');
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pouch-push-'));
  name = path.join(dir, 'db');
} else if (adapter === 'memory') {
  PouchDB = require('pouchdb-core')
    .plugin(require('pouchdb-adapter-http'))
    .plugin(require('pouchdb-replication'))
    .plugin(require('pouchdb-adapter-memory'));
  name = `push-${process.pid}`;
} else {
  process.stderr.write(`pouch_push.js: unknown adapter ${adapter}\n`);
  process.exit(64);
}

async function main() {
  const docs = fs.readFileSync(docsPath, 'utf8').split('\n').filter((l) => l).map((l) => JSON.parse(l));
  let db = new PouchDB(name, { adapter });
  const l0 = Date.now();
  for (let i = 0; i < docs.length; i += 2000) {
    const res = await db.bulkDocs(docs.slice(i, i + 2000));
    if (res.some((r) => r.error)) throw new Error(`bulkDocs failed: ${JSON.stringify(res.find((r) => r.error))}`);
  }
  const loadMs = Date.now() - l0;
  if (adapter === 'leveldb') await db.close();
  const r0 = Date.now();
  if (adapter === 'leveldb') db = new PouchDB(name, { adapter });
  const result = await db.replicate.to(remote, opts);
  const elapsedMs = Date.now() - r0;
  const out = {
    ok: result.ok !== false && !result.doc_write_failures,
    docs_written: result.docs_written,
    load_ms: loadMs,
    elapsed_ms: elapsedMs,
    node_ms: Date.now() - t0,
    adapter,
    opts,
  };
  await db.destroy();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
  process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(0));
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ ok: false, error: String(err && err.stack ? err.stack : err) }) + '\n',
    () => process.exit(1));
});
