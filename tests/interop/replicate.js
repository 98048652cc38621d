#!/usr/bin/env node
// One-shot PouchDB replication between two CouchDB-protocol HTTP endpoints.
//
// Usage: node replicate.js SOURCE_URL TARGET_URL [TIMEOUT_SECONDS]
//
// Prints exactly one JSON line on stdout:
//   {"ok": bool, "docs_read": n, "docs_written": n, "doc_write_failures": n,
//    "last_seq": ..., "status": "...", "errors": [...], "elapsed_ms": n}
// Exit status: 0 success, 1 replication failed, 2 overall timeout, 64 usage error.
//
// Environment:
//   POUCH_REPLICATE_TIMEOUT  overall timeout in seconds (default 60; argv[4] wins).
//   POUCH_FETCH_TIMEOUT      timeout of each HTTP request in seconds (default 30).
//   POUCH_REPLICATE_OPTS     JSON object merged into the PouchDB.replicate() options,
//                            e.g. {"batch_size": 10, "doc_ids": ["a"]}. "live" is not allowed.
//
// The source must exist (skip_setup); the target is created if missing, as PouchDB does.
'use strict';

// stdout carries only the result line: route every console method to stderr.
for (const name of ['log', 'info', 'debug', 'warn']) {
  console[name] = (...args) => console.error(...args);
}

const PouchDB = require('pouchdb-core')
  .plugin(require('pouchdb-adapter-http'))
  .plugin(require('pouchdb-replication'));

const EXIT_OK = 0;
const EXIT_FAILED = 1;
const EXIT_TIMEOUT = 2;
const EXIT_USAGE = 64;

const startedAt = Date.now();
let finished = false;

function finish(code, result) {
  if (finished) {
    return;
  }
  finished = true;
  const base = { ok: false, docs_read: 0, docs_written: 0, doc_write_failures: 0, last_seq: null, status: null };
  const line = JSON.stringify({ ...base, ...result, elapsed_ms: Date.now() - startedAt }) + '\n';
  process.stdout.write(line, () => process.exit(code));
}

function usage(message) {
  process.stderr.write(`replicate.js: ${message}\n`);
  process.stderr.write('usage: node replicate.js SOURCE_URL TARGET_URL [TIMEOUT_SECONDS]\n');
  finish(EXIT_USAGE, { status: 'usage', errors: [{ name: 'usage', message }] });
}

function parseSeconds(raw, what, fallback) {
  if (raw === undefined || raw === '') {
    return fallback;
  }
  const value = Number(raw);
  if (!Number.isFinite(value) || value <= 0) {
    throw new Error(`${what} must be a positive number of seconds, got ${JSON.stringify(raw)}`);
  }
  return value;
}

function parseHttpUrl(raw, what) {
  let url;
  try {
    url = new URL(raw);
  } catch {
    throw new Error(`${what} is not a valid URL: ${JSON.stringify(raw)}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new Error(`${what} must be an http(s) URL, got ${JSON.stringify(raw)}`);
  }
  return url.href;
}

function describeError(err) {
  if (err === null || typeof err !== 'object') {
    return { name: 'error', message: String(err) };
  }
  const out = { name: err.name || err.error || 'error', message: err.message || err.reason || String(err) };
  for (const key of ['status', 'error', 'reason', 'id', 'code']) {
    if (err[key] !== undefined && typeof err[key] !== 'object') {
      out[key] = err[key];
    }
  }
  return out;
}

// A fetch that aborts each request after fetchTimeoutMs, keeping any signal PouchDB passed itself.
function fetchWithTimeout(fetchTimeoutMs) {
  return (url, options = {}) => {
    const timeoutSignal = AbortSignal.timeout(fetchTimeoutMs);
    const signal = options.signal ? AbortSignal.any([options.signal, timeoutSignal]) : timeoutSignal;
    return PouchDB.fetch(url, { ...options, signal }).catch((err) => {
      if (timeoutSignal.aborted) {
        const timeoutError = new Error(`HTTP request timed out after ${fetchTimeoutMs} ms: ${url}`);
        timeoutError.name = 'fetch_timeout';
        throw timeoutError;
      }
      throw err;
    });
  };
}

function main() {
  const [sourceArg, targetArg, timeoutArg] = process.argv.slice(2);
  if (!sourceArg || !targetArg || process.argv.length > 5) {
    usage('expected SOURCE_URL TARGET_URL [TIMEOUT_SECONDS]');
    return;
  }

  let source;
  let target;
  let timeoutMs;
  let fetchTimeoutMs;
  let extraOpts = {};
  try {
    source = parseHttpUrl(sourceArg, 'SOURCE_URL');
    target = parseHttpUrl(targetArg, 'TARGET_URL');
    const envTimeout = parseSeconds(process.env.POUCH_REPLICATE_TIMEOUT, 'POUCH_REPLICATE_TIMEOUT', 60);
    timeoutMs = 1000 * parseSeconds(timeoutArg, 'TIMEOUT_SECONDS', envTimeout);
    fetchTimeoutMs = 1000 * parseSeconds(process.env.POUCH_FETCH_TIMEOUT, 'POUCH_FETCH_TIMEOUT', 30);
    if (process.env.POUCH_REPLICATE_OPTS) {
      extraOpts = JSON.parse(process.env.POUCH_REPLICATE_OPTS);
      if (extraOpts === null || typeof extraOpts !== 'object' || Array.isArray(extraOpts)) {
        throw new Error('POUCH_REPLICATE_OPTS must be a JSON object');
      }
      if (extraOpts.live || extraOpts.continuous) {
        throw new Error('POUCH_REPLICATE_OPTS: live/continuous replication is not supported (one-shot only)');
      }
    }
  } catch (err) {
    usage(err.message);
    return;
  }

  const fetch = fetchWithTimeout(fetchTimeoutMs);
  const sourceDb = new PouchDB(source, { adapter: 'http', fetch, skip_setup: true });
  const targetDb = new PouchDB(target, { adapter: 'http', fetch });

  const replication = PouchDB.replicate(sourceDb, targetDb, { ...extraOpts, live: false, retry: false });

  const timer = setTimeout(() => {
    replication.cancel();
    finish(EXIT_TIMEOUT, {
      status: 'timeout',
      errors: [{ name: 'timeout', message: `replication did not finish within ${timeoutMs} ms` }],
    });
  }, timeoutMs);

  replication.then(
    (result) => {
      clearTimeout(timer);
      const errors = (result.errors || []).map(describeError);
      const ok = result.ok !== false && errors.length === 0 && !result.doc_write_failures;
      finish(ok ? EXIT_OK : EXIT_FAILED, {
        ok,
        docs_read: result.docs_read || 0,
        docs_written: result.docs_written || 0,
        doc_write_failures: result.doc_write_failures || 0,
        last_seq: result.last_seq === undefined ? null : result.last_seq,
        status: result.status || null,
        errors,
      });
    },
    (err) => {
      clearTimeout(timer);
      const result = (err && err.result) || {};
      finish(EXIT_FAILED, {
        ok: false,
        docs_read: result.docs_read || 0,
        docs_written: result.docs_written || 0,
        doc_write_failures: result.doc_write_failures || 0,
        last_seq: result.last_seq === undefined ? null : result.last_seq,
        status: result.status || 'aborting',
        errors: [describeError(err)],
      });
    },
  );
}

main();
