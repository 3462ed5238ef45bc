'use strict';
// require('resty_ffi'): the host's calls for lua-resty-ffi runtimes written in JavaScript.
// Embedded in libffi_nodejs.so and registered by its bootstrap; see docs/runtimes.md.
//
//   const ffi = require('resty_ffi');
//   exports.init = (cfg, tq) => {
//     ffi.serve(tq, async (req, task) => req);   // Buffer (or null for nil) in, bytes out
//     return 0;
//   };

const util = require('util');

const binding = process._linkedBinding('resty_ffi');

// nginx's log levels, for log().
const ALERT = 2;
const ERR = 4;
const WARN = 5;
const NOTICE = 6;
const INFO = 7;
const DEBUG = 8;

const INT_MAX = 2 ** 31 - 1;

// Serves the queue `tq` (the init function's second argument): each call from Lua runs
// `handler(req, task)` on the event loop, `req` a Buffer (null for a nil request). The loop
// waits for tasks itself on this host (its eventfd protocol); elsewhere a native thread polls. What the
// handler returns, or what its Promise resolves to, is the answer: a Buffer, any TypedArray,
// DataView or ArrayBuffer, or a string (as UTF-8) gives Lua `true, bytes`; null or undefined
// gives `true, nil`. A throw or a rejection gives Lua `false, 1, message` (`false, err.rc,
// message` when the error has a non-zero integer `rc`). Returns a Promise that resolves once
// the queue is finished (after `rt:__unload()`, or at worker exit).
function serve(tq, handler) {
  if (typeof handler !== 'function') {
    throw new TypeError('resty_ffi.serve(tq, handler): handler must be a function');
  }
  let finished;
  const done = new Promise((resolve) => {
    finished = resolve;
  });
  binding.serve(tq, (task, req) => {
    if (task === 0) {
      finished();
    } else {
      run(task, req, handler);
    }
  });
  return done;
}

function run(task, req, handler) {
  let out;
  try {
    out = handler(req, task);
  } catch (err) {
    fail(task, err);
    return;
  }
  if (out !== null && typeof out === 'object' && typeof out.then === 'function') {
    Promise.resolve(out).then(
      (rsp) => answer(task, rsp),
      (err) => fail(task, err),
    );
  } else {
    answer(task, out);
  }
}

function answer(task, rsp) {
  try {
    binding.respond(task, 0, rsp);
  } catch (err) {
    // A value that is not bytes (the task is still unanswered), or a task the handler
    // answered itself.
    fail(task, err);
  }
}

function fail(task, err) {
  const rc = err !== null && typeof err === 'object' && Number.isInteger(err.rc) &&
    err.rc !== 0 && Math.abs(err.rc) <= INT_MAX ? err.rc : 1;
  try {
    binding.respond(task, rc, message(err));
  } catch (e) {
    binding.log(WARN, e.message);
  }
}

function message(err) {
  if (err instanceof Error) {
    return err.message;
  }
  return typeof err === 'object' && err !== null ? util.inspect(err) : String(err);
}

// A line in nginx's error.log at `level` (ALERT, ERR, WARN, NOTICE, INFO, DEBUG), the
// arguments formatted as console.log does. console.* already writes there too.
function log(level, ...args) {
  binding.log(level, util.format(...args));
}

module.exports = {
  serve,
  // true once nobody waits for the task's answer any more (the Lua call timed out or its
  // request was aborted), or once it was answered: stop working on it. The task must still be
  // answered, which serve() does with the handler's result.
  cancelled: binding.cancelled,
  log,
  ALERT,
  ERR,
  WARN,
  NOTICE,
  INFO,
  DEBUG,
  // The raw calls, as lua-resty-ffi's Node.js loader has them: poll_task(tq) blocks (so it
  // throws on the event loop's thread: call it in a worker_threads Worker, where this module
  // is `process._linkedBinding('resty_ffi')`) and returns a task number, 0 once the queue is
  // finished; get_req(task) is a Buffer or null; respond(task, rc, rsp) answers once.
  poll_task: binding.poll_task,
  get_req: binding.get_req,
  respond: binding.respond,
};
