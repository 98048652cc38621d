'use strict';
// mocha --require for scripts/pouchdb-suite, loaded before PouchDB's tests/integration/node.setup.js.
//  1. Leaves out every test whose source matches POUCHSUITE_EXCLUDE (default "_design": map/reduce views,
//     _design filters, filter: '_view', validate_doc_update, i.e. JavaScript run by the server). They are removed
//     before the run (so not counted as pending) and listed in the JSON summary.
//  2. Logs every HTTP request of the client in global.__pouchsuiteHttp: method, path, what its JSON body uses
//     (see features()), the status or socket error, and the per-document errors of a _bulk_docs answer.
const http = require('http');
const zlib = require('zlib');
const Suite = require('mocha/lib/suite');

const exclude = new RegExp(process.env.POUCHSUITE_EXCLUDE || '_design');
global.__pouchsuiteExcluded = [];
const addTest = Suite.prototype.addTest;
Suite.prototype.addTest = function (test) {
  if (test.fn && exclude.test(test.fn.toString())) {
    test.parent = this;
    global.__pouchsuiteExcluded.push(test.fullTitle());
    return this;
  }
  return addTest.call(this, test);
};

// what a request body asks of the server beyond plain documents, e.g. "new_edits=false,_attachments(data)"
function features(text) {
  let body;
  try { body = JSON.parse(text); } catch (e) { return text ? 'non-JSON body' : undefined; }
  if (!body || typeof body !== 'object' || Array.isArray(body)) return undefined;
  const out = new Set();
  for (const k of ['new_edits', 'all_or_nothing']) {
    if (k in body) out.add(`${k}=${body[k]}`);
  }
  if ('keys' in body) out.add('keys');
  if ('doc_ids' in body) out.add('doc_ids');
  if ('selector' in body) out.add('selector');
  const docs = Array.isArray(body.docs) ? body.docs : [body];
  for (const d of docs) {
    if (!d || typeof d !== 'object') continue;
    if (d._attachments) {
      const atts = Object.values(d._attachments);
      out.add(atts.some((a) => a && !a.stub) ? '_attachments(data)' : '_attachments(stub)');
    }
    if (d._deleted) out.add('_deleted');
    if (typeof d._id === 'string' && /^_(design|local)\//.test(d._id)) out.add(d._id.split('/')[0] + ' id');
    if (Array.isArray(body.docs) && d._id === undefined && d.id === undefined) out.add('no _id');
    if (d.atts_since) out.add('atts_since');
  }
  return out.size ? [...out].sort().join(',') : undefined;
}

const log = global.__pouchsuiteHttp = [];
const request = http.request;
http.request = function (...args) {
  const req = request.apply(this, args);
  const entry = { method: req.method, path: req.path, port: args[0] && args[0].port };
  log.push(entry);
  const chunks = [];
  for (const name of ['write', 'end']) {
    const orig = req[name];
    req[name] = function (chunk, ...rest) {
      if (chunk && typeof chunk !== 'function') chunks.push(Buffer.from(chunk));
      if (name === 'end') {
        const f = features(Buffer.concat(chunks).toString('utf8'));
        if (f) entry.body = f;
      }
      return orig.call(this, chunk, ...rest);
    };
  }
  req.on('response', (res) => {
    entry.status = res.statusCode;
    if (!/_bulk_docs$/.test(req.path.split('?')[0])) return;
    const got = [];
    res.on('data', (c) => got.push(c));
    res.on('end', () => {
      try {
        let buf = Buffer.concat(got);
        const enc = res.headers['content-encoding'];
        if (enc === 'gzip') buf = zlib.gunzipSync(buf);
        else if (enc === 'deflate') buf = zlib.inflateSync(buf);
        const rows = JSON.parse(buf.toString('utf8'));
        const errs = Array.isArray(rows) ? rows.filter((r) => r && r.error && r.error !== 'conflict') : [];
        if (errs.length) entry.docErrors = [...new Set(errs.map((r) => `${r.error}: ${r.reason}`))];
      } catch (e) { /* not JSON: nothing to say */ }
    });
  });
  req.on('error', (err) => { if (entry.status === undefined) { entry.error = err.code || err.message; } });
  return req;
};
