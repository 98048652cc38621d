'use strict';
// mocha reporter for scripts/pouchdb-suite: mocha's "spec" output, plus a JSON file (POUCHSUITE_JSON) with the
// counts and the failures grouped by cause. A failure's cause is the first HTTP response of the test (or hook)
// that is an error (an error status, no answer, or a _bulk_docs answer with a per-document error other than a
// conflict), unless it is an ordinary one (404 on GET/HEAD, 409, 412 on PUT /{db}); else the error
// message, numbers and database names replaced by N and {db}.
const fs = require('fs');
const path = require('path');
const Mocha = require('mocha');

const { Spec } = Mocha.reporters;
const C = Mocha.Runner.constants;

// query parameters whose value tells something about the route; the others are shown by name only
const VALUE_KEYS = new Set(['feed', 'style', 'filter', 'include_docs', 'conflicts', 'revs', 'revs_info', 'latest',
  'attachments', 'binary', 'att_encoding_info', 'descending', 'inclusive_end', 'new_edits', 'reduce', 'group',
  'deleted_conflicts', 'local_seq', 'meta', 'update_seq', 'seq_interval', 'return_docs', 'view']);

function route(entry) {
  const [p, q] = (entry.path || '').split('?');
  const segs = p.split('/').filter((seg) => seg !== '');
  const out = [];
  if (segs.length) {
    out.push(segs[0].startsWith('_') ? segs[0] : '{db}');
    const rest = segs.slice(1);
    if (rest.length) {
      const s = decodeURIComponent(rest[0]);
      if (s === '_design' || s === '_local') {
        out.push(s, '{id}');
        if (rest.length > 2) out.push('...');
      } else if (s.startsWith('_design/') || s.startsWith('_local/')) {
        out.push(s.split('/')[0], '{id}');
      } else if (s.startsWith('_')) {
        out.push(s);
        if (rest.length > 1) out.push('...');
      } else {
        out.push('{docid}');
        if (rest.length > 1) out.push('{attachment}');
      }
    }
  }
  let r = '/' + out.join('/');
  if (q) {
    const params = [...new URLSearchParams(q)].map(([k, v]) => {
      if (k === 'open_revs') return `open_revs=${v === 'all' ? 'all' : '[...]'}`;
      return VALUE_KEYS.has(k) ? `${k}=${v}` : k;
    }).sort();
    r += '?' + [...new Set(params)].join('&');
  }
  if (entry.port && String(entry.port) === '3010') r = '(down-server :3010)' + r;
  return `${entry.method} ${r}` + (entry.body ? ` {${entry.body}}` : '');
}

function outcome(entry) {
  const s = entry.status !== undefined ? String(entry.status) : (entry.error || 'no answer');
  return entry.docErrors ? `${s} [${entry.docErrors.join('; ')}]` : s;
}

function isError(entry) {
  return entry.status === undefined ? Boolean(entry.error) : entry.status >= 400 || Boolean(entry.docErrors);
}

function ordinary(entry) {
  const r = route(entry);
  return (entry.status === 404 && (entry.method === 'GET' || entry.method === 'HEAD')) ||
    entry.status === 409 ||
    (entry.status === 412 && r === 'PUT /{db}');
}

function normalize(message) {
  return String(message || '').split('\n')[0]
    .replace(/\b(testdb|test_repl_remote)_\d+/g, '{db}')
    .replace(/\d+/g, 'N')
    .slice(0, 160);
}

class PouchSuiteReporter extends Spec {
  constructor(runner, options) {
    super(runner, options);
    const log = global.__pouchsuiteHttp || [];
    const failures = [];
    const tests = {};  // every test's outcome and requests (METHOD route -> status), to compare two runs
    let start = 0;
    runner.on(C.EVENT_TEST_BEGIN, () => { start = log.length; });
    const keys = new Map();  // test -> its key in tests: the full title, "#2" added to a repeated one
    const key = (test) => {
      if (!keys.has(test)) {
        let k = test.fullTitle();
        for (let n = 2; k in tests; n += 1) k = `${test.fullTitle()} #${n}`;
        keys.set(test, k);
        tests[k] = {};
      }
      return keys.get(test);
    };
    runner.on(C.EVENT_TEST_END, (test) => {
      const t = tests[key(test)];
      t.state = test.isPending() ? 'pending' : test.state;
      t.requests = [...new Set(log.slice(start).map((e) => `${route(e)} -> ${outcome(e)}`))];
    });
    runner.on(C.EVENT_HOOK_BEGIN, (hook) => {
      if (/before/.test(hook.title)) start = log.length;
    });
    runner.on(C.EVENT_TEST_FAIL, (test, err) => {
      const requests = log.slice(start).filter(isError);
      const first = requests.find((e) => !ordinary(e));
      const cause = first ? `${route(first)} -> ${outcome(first)}` : normalize(err && err.message);
      failures.push({
        title: test.type === 'hook' ? test.fullTitle() : key(test),
        file: test.file ? path.basename(test.file) : undefined,
        hook: test.type === 'hook' ? test.title : undefined,
        cause,
        error: String((err && err.message) || err).split('\n')[0].slice(0, 300),
        requests: [...new Set(requests.map((e) => `${route(e)} -> ${outcome(e)}`))],
      });
    });
    runner.once(C.EVENT_RUN_END, () => {
      const stats = runner.stats || {};
      const groups = {};
      const routes = {};
      for (const f of failures) {
        const g = groups[f.cause] || (groups[f.cause] = { cause: f.cause, count: 0, files: {}, examples: [] });
        g.count += 1;
        g.files[f.file] = (g.files[f.file] || 0) + 1;
        if (g.examples.length < 3) g.examples.push(f.title);
        for (const r of f.requests) routes[r] = (routes[r] || 0) + 1;
      }
      for (const f of failures) {
        if (!f.hook) tests[f.title].state = 'failed';
      }
      const ended = Object.values(tests).filter((t) => t.state);
      const summary = {
        server: process.env.COUCH_HOST,
        counts: {
          passing: stats.passes, failing: stats.failures, pending: stats.pending,
          registered: runner.total, excluded: (global.__pouchsuiteExcluded || []).length,
          failed_tests: ended.filter((t) => t.state === 'failed').length,
          failed_hooks: failures.filter((f) => f.hook).length,
          not_run: runner.total - ended.length,
        },
        groups: Object.values(groups).sort((a, b) => b.count - a.count || (a.cause < b.cause ? -1 : 1)),
        error_responses_in_failures: Object.fromEntries(Object.entries(routes).sort((a, b) => b[1] - a[1])),
        failures,
        excluded: global.__pouchsuiteExcluded || [],
        tests,
      };
      if (process.env.POUCHSUITE_JSON) {
        fs.writeFileSync(process.env.POUCHSUITE_JSON, JSON.stringify(summary, null, 2) + '\n');
      }
    });
  }
}

module.exports = PouchSuiteReporter;
