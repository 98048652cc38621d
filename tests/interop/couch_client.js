#!/usr/bin/env node
// A real PouchDB (http adapter) using a server as any PouchDB app does: create a database, write, read, list,
// follow the changes feed, store a design document, replicate into a new remote database, destroy.
//
// Usage: node couch_client.js SERVER_URL   (e.g. http://127.0.0.1:8800; credentials in the URL if any)
// Prints one JSON line on stdout: {"ok": true, "steps": {name: result, ...}} or {"ok": false, "error": ...}.
// Bounded: every request has a 30 s timeout, the whole run 120 s.
'use strict';

for (const name of ['log', 'info', 'debug', 'warn']) {
  console[name] = (...args) => console.error(...args);
}

const PouchDB = require('pouchdb-core')
  .plugin(require('pouchdb-adapter-http'))
  .plugin(require('pouchdb-adapter-memory'))
  .plugin(require('pouchdb-mapreduce'))
  .plugin(require('pouchdb-replication'));

const server = process.argv[2];
const timer = setTimeout(() => done({ ok: false, error: 'timeout (120 s)' }, 2), 120000);

function done(result, code) {
  clearTimeout(timer);
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(code));
}

async function main() {
  const steps = {};
  const name = 'pouch_client_' + Date.now();
  const db = new PouchDB(`${server}/${name}`);
  steps.info = await db.info();  // creates the database (PUT) as PouchDB does
  const docs = [];
  for (let i = 0; i < 10; i++) {
    docs.push({ _id: `doc${String(i).padStart(2, '0')}`, n: i, kind: i % 2 ? 'odd' : 'even' });
  }
  steps.bulk = await db.bulkDocs(docs);
  const posted = await db.post({ free: true });
  steps.posted_id_length = posted.id.length;
  steps.posted_id = posted.id;
  steps.all = await db.allDocs({ include_docs: true });
  steps.keys = await db.allDocs({ keys: ['doc03', 'missing', 'doc01'] });
  steps.range = await db.allDocs({ startkey: 'doc02', endkey: 'doc05', inclusive_end: false });
  steps.descending = await db.allDocs({ descending: true, limit: 2 });
  const one = await db.get('doc04');
  await db.put({ ...one, n: 40 });
  const removed = await db.get('doc05');
  await db.remove(removed);
  steps.changes = await db.changes({ since: 0, include_docs: true, doc_ids: ['doc04', 'doc05'] });
  steps.changes_desc = await db.changes({ descending: true, limit: 1 });
  steps.revs_info = await db.get('doc04', { revs_info: true });
  steps.design = await db.put({ _id: '_design/app', views: { by_n: { map: 'function (d) { emit(d.n); }' } } });
  steps.design_doc = await db.get('_design/app');
  try {
    await db.query('app/by_n');
    steps.view = 'answered';
  } catch (err) {
    steps.view = { status: err.status, name: err.name };
  }
  const copy = new PouchDB(`${server}/${name}_copy`);
  const rep = await PouchDB.replicate(db, copy);
  steps.replicated = { ok: rep.ok, docs_written: rep.docs_written };
  steps.copy_info = await copy.info();
  await copy.destroy();
  steps.final_info = await db.info();
  await db.destroy();
  // PouchDB's http info() hands back the error body of a 404 (it does not throw)
  const gone = await new PouchDB(`${server}/${name}`, { skip_setup: true }).info();
  steps.after_destroy = gone.error || 'still there';
  return steps;
}

if (!server) {
  done({ ok: false, error: 'usage: node couch_client.js SERVER_URL' }, 64);
} else {
  main().then((steps) => done({ ok: true, steps }, 0),
    (err) => done({ ok: false, error: `${err.name || ''} ${err.status || ''} ${err.message || err}` }, 1));
}
