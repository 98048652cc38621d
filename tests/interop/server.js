#!/usr/bin/env node
// In-memory PouchDB HTTP server (express + express-pouchdb) for MyNoSQL interop tests.
//
// Usage: node server.js [PORT]
//   PORT 0 (the default) lets the OS pick a free port. The server binds 127.0.0.1 only.
//   When it is ready it prints exactly one line on stdout: "LISTENING <port>".
//   Everything else (warnings, errors) goes to stderr.
//
// Environment:
//   POUCHDB_SERVER_MODE        express-pouchdb mode: "fullCouchDB" (default) or "minimumForPouchDB".
//   POUCHDB_SERVER_WATCH_STDIN "1" = exit when stdin reaches EOF (the parent died or closed the pipe).
//   POUCHDB_SERVER_ADAPTER     "memory" (default) or "leveldb": the databases live in a temporary folder
//                              (removed at exit), as with pouchdb-server's default storage.
//
// SIGTERM / SIGINT close the listener, drop open connections and exit 0.
'use strict';

const os = require('os');

// stdout carries only the LISTENING line: route every console method to stderr.
for (const name of ['log', 'info', 'debug', 'warn']) {
  console[name] = (...args) => console.error(...args);
}

const express = require('express');
const expressPouchDB = require('express-pouchdb');
const PouchDBCore = require('pouchdb-core');

const MODES = new Set(['fullCouchDB', 'minimumForPouchDB']);
const SHUTDOWN_GRACE_MS = 3000;

function fail(message) {
  process.stderr.write(`server.js: ${message}\n`);
  process.exit(1);
}

const portArg = process.argv[2] === undefined ? '0' : process.argv[2];
if (!/^\d+$/.test(portArg) || Number(portArg) > 65535) {
  fail(`invalid port ${JSON.stringify(portArg)} (expected an integer 0..65535)`);
}
const port = Number(portArg);
const mode = process.env.POUCHDB_SERVER_MODE || 'fullCouchDB';
if (!MODES.has(mode)) {
  fail(`invalid POUCHDB_SERVER_MODE ${JSON.stringify(mode)} (expected one of ${[...MODES].join(', ')})`);
}

const storage = process.env.POUCHDB_SERVER_ADAPTER || 'memory';
let ServerPouchDB;
let levelDir = null;
if (storage === 'memory') {
  ServerPouchDB = PouchDBCore
    .plugin(require('pouchdb-adapter-memory'))
    .plugin(require('pouchdb-adapter-http'))
    .plugin(require('pouchdb-mapreduce'))
    .plugin(require('pouchdb-replication'))
    .defaults({ adapter: 'memory' });
} else if (storage === 'leveldb') {
  const fs = require('fs');
  const path = require('path');
  levelDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pouchdb-server-'));
  process.on('exit', () => fs.rmSync(levelDir, { recursive: true, force: true }));
  ServerPouchDB = require('pouchdb').defaults({ prefix: levelDir + path.sep });
} else {
  fail(`invalid POUCHDB_SERVER_ADAPTER ${JSON.stringify(storage)} (expected memory or leveldb)`);
}

// inMemoryConfig: no config.json on disk; logPath: the CouchDB-style log goes nowhere.
const pouchApp = expressPouchDB(ServerPouchDB, {
  mode,
  inMemoryConfig: true,
  logPath: os.devNull,
});
if (pouchApp.couchConfig) {
  pouchApp.couchConfig.set('log', 'level', 'none', () => {});
}

const app = express();
app.disable('x-powered-by');
app.use('/', pouchApp);

const server = app.listen(port, '127.0.0.1');
server.on('error', (err) => fail(`listen failed: ${err.message}`));
server.on('listening', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});

let shuttingDown = false;
function shutdown(reason) {
  if (shuttingDown) {
    return;
  }
  shuttingDown = true;
  setTimeout(() => {
    process.stderr.write(`server.js: shutdown (${reason}) exceeded ${SHUTDOWN_GRACE_MS} ms, forcing exit\n`);
    process.exit(0);
  }, SHUTDOWN_GRACE_MS).unref();
  server.close(() => process.exit(0));
  server.closeAllConnections();
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

if (process.env.POUCHDB_SERVER_WATCH_STDIN === '1') {
  process.stdin.on('end', () => shutdown('stdin closed'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.resume();
}

process.on('unhandledRejection', (reason) => {
  process.stderr.write(`server.js: unhandled rejection: ${reason && reason.stack ? reason.stack : reason}\n`);
});
