'use strict';
// In-memory express-pouchdb (fullCouchDB mode) on 127.0.0.1, the reference server of scripts/pouchdb-suite
// (same setup as tests/interop/server.js). Usage: node express-pouchdb-server.js [PORT]; prints "LISTENING <port>".
for (const name of ['log', 'info', 'debug', 'warn']) console[name] = (...args) => console.error(...args);
const os = require('os');
const express = require('express');
const expressPouchDB = require('express-pouchdb');
const PouchDB = require('pouchdb-core')
  .plugin(require('pouchdb-adapter-memory'))
  .plugin(require('pouchdb-adapter-http'))
  .plugin(require('pouchdb-mapreduce'))
  .plugin(require('pouchdb-replication'));

const pouchApp = expressPouchDB(PouchDB.defaults({ adapter: 'memory' }),
  { mode: 'fullCouchDB', inMemoryConfig: true, logPath: os.devNull });
if (pouchApp.couchConfig) pouchApp.couchConfig.set('log', 'level', 'none', () => {});
const app = express();
app.disable('x-powered-by');
app.use('/', pouchApp);
const server = app.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
const stop = () => { server.close(() => process.exit(0)); server.closeAllConnections(); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
