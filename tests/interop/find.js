#!/usr/bin/env node
// Runs Mango queries through pouchdb-find, for comparison with MyNoSQL's find.
//
// Usage: node find.js < request.json
//   {"url": null | "http://127.0.0.1:PORT/db",   null: a fresh in-memory PouchDB loaded with "docs"
//    "docs": [...], "queries": [{"index": [fields] | null, "selector": {...}, "sort", "fields", "limit", "skip"}]}
// Prints one JSON line: {"results": [{"docs": [...]} | {"error": "..."}], "elapsed_ms": [per query]}.
// A query's "repeat" runs it that many times (at most "budget_ms" long) and "elapsed_ms" is the mean.
// Over HTTP, the documents are not loaded (the server has them): pouchdb-find posts _index and _find.
'use strict';

for (const name of ['log', 'info', 'debug', 'warn']) {
  console[name] = (...args) => console.error(...args);
}

const PouchDB = require('pouchdb-core')
  .plugin(require('pouchdb-adapter-memory'))
  .plugin(require('pouchdb-adapter-http'))
  .plugin(require('pouchdb-find'));

async function main() {
  const chunks = [];
  for await (const c of process.stdin) chunks.push(c);
  const req = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  const db = req.url ? new PouchDB(req.url, {skip_setup: true})
    : new PouchDB('find-' + process.pid + '-' + Date.now(), {adapter: 'memory'});
  if (!req.url && req.docs && req.docs.length) {
    await db.bulkDocs(req.docs);
  }
  const results = [];
  const elapsed = [];
  for (const q of req.queries) {
    try {
      if (q.index) {
        await db.createIndex({index: {fields: q.index}});
      }
      const opts = {selector: q.selector};
      opts.limit = 100000;  // pouchdb-find, like CouchDB, answers 25 without one
      for (const k of ['sort', 'fields', 'limit', 'skip', 'use_index']) {
        if (q[k] !== undefined && q[k] !== null) opts[k] = q[k];
      }
      const repeat = q.repeat || 1;
      const budget = q.budget_ms || Infinity;  // stop repeating once this many ms went by
      let res;
      let done = 0;
      const t0 = process.hrtime.bigint();
      while (done < repeat) {
        res = await db.find(opts);
        done++;
        if (Number(process.hrtime.bigint() - t0) / 1e6 > budget) break;
      }
      elapsed.push(Number(process.hrtime.bigint() - t0) / 1e6 / done);
      results.push({docs: res.docs});
    } catch (err) {
      elapsed.push(null);
      results.push({error: String(err && (err.message || err.reason || err))});
    }
  }
  return JSON.stringify({results, elapsed_ms: elapsed}) + '\n';
}

// exit only once stdout is flushed (a pipe is written asynchronously)
main().then((line) => process.stdout.write(line, () => process.exit(0)), (err) => {
  process.stdout.write(JSON.stringify({fatal: String(err && err.stack || err)}) + '\n', () => process.exit(1));
});
