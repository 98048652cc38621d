#!/usr/bin/env node
// A real PouchDB (http adapter, and an in-memory local database) using attachments with a server: put them inline
// and with putAttachment (binary, names with '/', a design document's), read stubs and bytes, remove one,
// replicate the server's database into a local one and back with local additions.
//
// Usage: node attachments.js DB_URL   (e.g. http://127.0.0.1:8800/pouch_atts; created if missing)
// Prints one JSON line on stdout: {"ok": true, "steps": {...}, "md5": {"<id>/<name>": "<md5 hex>", ...}} with the
// MD5 of every attachment's bytes the server should end up with, or {"ok": false, "error": ...}.
// Bounded: every request has a 60 s timeout, the whole run 180 s.
'use strict';

for (const name of ['log', 'info', 'debug', 'warn']) {
  console[name] = (...args) => console.error(...args);
}

const crypto = require('crypto');
const PouchDB = require('pouchdb-core')
  .plugin(require('pouchdb-adapter-http'))
  .plugin(require('pouchdb-adapter-memory'))
  .plugin(require('pouchdb-replication'));

const url = process.argv[2];
const timer = setTimeout(() => done({ ok: false, error: 'timeout (180 s)' }, 2), 180000);

function done(result, code) {
  clearTimeout(timer);
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(code));
}

function fetchWithTimeout(url, options = {}) {
  const t = AbortSignal.timeout(60000);
  return PouchDB.fetch(url, { ...options, signal: options.signal ? AbortSignal.any([options.signal, t]) : t });
}

const md5 = (buf) => crypto.createHash('md5').update(buf).digest('hex');
// deterministic bytes (a seeded generator), so that a run can be compared with another
function bytes(n, seed) {
  const out = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

async function main() {
  const steps = {};
  const sums = {};
  const remote = new PouchDB(url, { fetch: fetchWithTimeout });
  await remote.info();

  // inline base64, as an app's db.put does
  const text = Buffer.from('hello from pouchdb\n'.repeat(200));
  const r1 = await remote.put({ _id: 'note', title: 'a note', _attachments: {
    'note.txt': { content_type: 'text/plain', data: text.toString('base64') } } });
  // binary, with putAttachment (PUT /db/doc/name), a name with slashes
  const img = bytes(300 * 1024, 7);
  const r2 = await remote.putAttachment('note', 'photos/2026/cat.jpg', r1.rev, img, 'image/jpeg');
  const doc = await remote.get('note');
  steps.rev_generations = [r1.rev.split('-')[0], r2.rev.split('-')[0]];
  steps.stubs = doc._attachments;
  const got = await remote.getAttachment('note', 'photos/2026/cat.jpg');
  steps.binary_roundtrip = md5(got) === md5(img);
  const full = await remote.get('note', { attachments: true, binary: true });
  steps.full_roundtrip = md5(full._attachments['note.txt'].data) === md5(text)
    && md5(full._attachments['photos/2026/cat.jpg'].data) === md5(img);
  steps.digest_matches_pouch = doc._attachments['note.txt'].digest
    === 'md5-' + crypto.createHash('md5').update(text).digest('base64');
  // a design document with an attachment (an app's HTML, CouchApp style)
  await remote.put({ _id: '_design/app', _attachments: {
    'index.html': { content_type: 'text/html', data: Buffer.from('<h1>hi</h1>').toString('base64') } } });
  steps.design_attachment = (await remote.getAttachment('_design/app', 'index.html')).toString();
  // a document whose attachment is then removed
  const tmp = await remote.putAttachment('tmp', 'gone.bin', bytes(1000, 3), 'application/octet-stream');
  const removed = await remote.removeAttachment('tmp', 'gone.bin', tmp.rev);
  steps.after_remove = (await remote.get('tmp'))._attachments || null;
  steps.removed_rev_generation = removed.rev.split('-')[0];
  try {
    await remote.getAttachment('tmp', 'gone.bin');
    steps.missing_attachment = 'found';
  } catch (err) {
    steps.missing_attachment = err.status;
  }

  // replicate the server's database into a local one: bytes and stubs come over
  const local = new PouchDB('local-' + Date.now(), { adapter: 'memory' });
  const down = await PouchDB.replicate(remote, local);
  steps.pulled = { ok: down.ok, docs_written: down.docs_written };
  steps.local_cat = md5(await local.getAttachment('note', 'photos/2026/cat.jpg')) === md5(img);
  steps.local_design = (await local.getAttachment('_design/app', 'index.html')).toString();

  // local changes: an attachment added to a replicated document, a new document with two
  const ld = await local.get('note');
  const added = bytes(70000, 11);
  await local.putAttachment('note', 'added-locally.bin', ld._rev, added, 'application/octet-stream');
  const a1 = Buffer.from('first\n'.repeat(1000));
  const a2 = bytes(5000, 13);
  await local.put({ _id: 'from-local', n: 1, _attachments: {
    'a.txt': { content_type: 'text/plain', data: a1 },
    'b/c.bin': { content_type: 'application/octet-stream', data: a2 } } });
  const up = await PouchDB.replicate(local, remote);
  steps.pushed = { ok: up.ok, docs_written: up.docs_written, doc_write_failures: up.doc_write_failures };
  steps.remote_note_atts = Object.keys((await remote.get('note'))._attachments).sort();
  steps.remote_added = md5(await remote.getAttachment('note', 'added-locally.bin')) === md5(added);

  sums['note/note.txt'] = md5(text);
  sums['note/photos/2026/cat.jpg'] = md5(img);
  sums['note/added-locally.bin'] = md5(added);
  sums['from-local/a.txt'] = md5(a1);
  sums['from-local/b/c.bin'] = md5(a2);
  sums['_design/app/index.html'] = md5(Buffer.from('<h1>hi</h1>'));
  await local.destroy();
  return { steps, sums };
}

if (!url) {
  done({ ok: false, error: 'usage: node attachments.js DB_URL' }, 64);
} else {
  main().then(({ steps, sums }) => done({ ok: true, steps, md5: sums }, 0),
    (err) => done({ ok: false, error: `${err.name || ''} ${err.status || ''} ${err.message || err}`,
      stack: String(err.stack || '').slice(0, 2000) }, 1));
}
