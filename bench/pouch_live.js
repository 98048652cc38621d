#!/usr/bin/env node
// Live PouchDB replication helper for bench/replication.py (the latency anchor).
//
// Usage: NODE_PATH=tests/interop/node_modules node bench/pouch_live.js REMOTE_DB_URL [MAX_SECONDS]
//
// Opens an in-memory PouchDB, starts `db.replicate.to(REMOTE_DB_URL, {live: true, retry: true})`, prints
// "READY" on stdout once the replication is idle (or after 3 s), then reads one JSON document per stdin line
// and saves it with db.put(), printing "SAVED <id>" (or "ERROR <message>"). Exits on stdin EOF, on a
// replication error, or after MAX_SECONDS (default 900) whatever happens: it never outlives the benchmark.
'use strict';

for (const name of ['log', 'info', 'debug', 'warn']) {
  console[name] = (...args) => console.error(...args);
}

const readline = require('readline');
const PouchDB = require('pouchdb-core')
  .plugin(require('pouchdb-adapter-memory'))
  .plugin(require('pouchdb-adapter-http'))
  .plugin(require('pouchdb-replication'));

const remote = process.argv[2];
const maxSeconds = Number(process.argv[3] || 900);
if (!remote || !/^http:\/\/127\.0\.0\.1:\d+\//.test(remote) || !(maxSeconds > 0)) {
  process.stderr.write('usage: node pouch_live.js http://127.0.0.1:PORT/DB [MAX_SECONDS]\n');
  process.exit(64);
}

setTimeout(() => {
  process.stderr.write(`pouch_live.js: ${maxSeconds} s elapsed, exiting\n`);
  process.exit(2);
}, maxSeconds * 1000).unref();

const db = new PouchDB(`bench-live-${process.pid}`, { adapter: 'memory' });
const rep = db.replicate.to(remote, { live: true, retry: true });

let ready = false;
function announce() {
  if (!ready) {
    ready = true;
    process.stdout.write('READY\n');
  }
}
rep.on('paused', (err) => {
  if (!err) {
    announce();
  }
});
setTimeout(announce, 3000).unref();
rep.on('denied', (err) => process.stderr.write(`denied: ${JSON.stringify(err)}\n`));
rep.on('error', (err) => {
  process.stderr.write(`replication error: ${err && err.message ? err.message : err}\n`);
  process.exit(1);
});

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  let doc;
  try {
    doc = JSON.parse(line);
  } catch (err) {
    process.stdout.write(`ERROR bad JSON: ${err.message}\n`);
    return;
  }
  db.put(doc).then(
    (res) => process.stdout.write(`SAVED ${res.id}\n`),
    (err) => process.stdout.write(`ERROR ${err.message || err}\n`),
  );
});
rl.on('close', () => {
  rep.cancel();
  setTimeout(() => process.exit(0), 200);
});
