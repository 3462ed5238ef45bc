'use strict';
// The main script of the Node.js instance libffi_nodejs.so runs in an nginx worker. Node runs it
// with its own `process` and `require` (this `require` loads Node's built-in modules only).
//
// It routes console output, warnings and uncaught errors to nginx's error.log, registers
// require('resty_ffi') for runtimes, and hands the binding `load`, which every libffi_init
// call runs: require(module)[func](rest, tq), its result (or its Promise's) being the rc.

const binding = process._linkedBinding('resty_ffi');
const Module = require('module');
const path = require('path');
const util = require('util');

const ERR = 4;
const WARN = 5;
const INFO = 7;
const DEBUG = 8;
const INT_MIN = -(2 ** 31);
const INT_MAX = 2 ** 31 - 1;

let decorateErrorStack = () => {};
try {
  // Puts a SyntaxError's file, line and caret in its stack, as node's own report does.
  ({ decorateErrorStack } = require('internal/util'));
} catch {
  // An internal module of this Node.js version; the plain stack is enough.
}

function describe(err) {
  if (err !== null && typeof err === 'object' && typeof err.stack === 'string') {
    try {
      decorateErrorStack(err);
    } catch {
      // keep the stack as it is
    }
    return err.stack;
  }
  return util.inspect(err);
}

const log = (level, text) => binding.log(level, text);

// console.* → error.log: error at [error], warn and trace at [warn], log/info/dir at [info],
// debug at [debug] (raise error_log's level to see the last two).
const consoleLevels = { error: ERR, warn: WARN, log: INFO, info: INFO, debug: DEBUG };
for (const [name, level] of Object.entries(consoleLevels)) {
  console[name] = (...args) => log(level, util.format(...args));
}
console.dir = (obj, options) => log(INFO, util.inspect(obj, options));
console.trace = (...args) => {
  const e = new Error(util.format(...args));
  e.name = 'Trace';
  Error.captureStackTrace(e, console.trace);
  log(WARN, e.stack);
};

process.removeAllListeners('warning');
process.on('warning', (w) => log(WARN, `resty_ffi_nodejs: ${w.name}: ${w.message}`));
// An uncaught error must not end the worker (Node.js would exit the process): log it.
process.on('uncaughtException', (err, origin) => {
  const what = origin === 'unhandledRejection' ? 'unhandled rejection' : 'uncaught exception';
  log(ERR, `resty_ffi_nodejs: ${what}: ${describe(err)}`);
});

// Runtimes are found as from the worker's working directory: node_modules folders above it,
// then NODE_PATH (nginx needs `env NODE_PATH;`); a path is used as is.
const userRequire = Module.createRequire(path.join(process.cwd(), path.sep));

// require('resty_ffi'), from the source embedded in the loader.
const HELPER = path.join(path.sep, '(resty_ffi)', 'resty_ffi.js');
const helper = new Module(HELPER, null);
helper.filename = HELPER;
helper.paths = [];
helper._compile(binding.helper_source, HELPER);
helper.loaded = true;
Module._cache[HELPER] = helper;
const resolveFilename = Module._resolveFilename;
Module._resolveFilename = function resolveRestyFfi(request, ...rest) {
  if (request === 'resty_ffi') {
    return HELPER;
  }
  return Reflect.apply(resolveFilename, this, [request, ...rest]);
};

// One libffi_init call: `id` names it for binding.loaded(id, rc).
function load(id, mod, func, rest, tq, reload) {
  const what = `${mod},${func}`;
  const fail = (why) => {
    log(ERR, `resty_ffi_nodejs: ${what}: ${why}`);
    binding.loaded(id, 1);
  };
  const finish = (rc) => {
    if (rc === undefined) {
      binding.loaded(id, 0);
    } else if (Number.isInteger(rc) && rc >= INT_MIN && rc <= INT_MAX) {
      if (rc !== 0) {
        log(WARN, `resty_ffi_nodejs: ${what}: the init function returned ${rc}`);
      }
      binding.loaded(id, rc);
    } else {
      fail(`the init function returned ${util.inspect(rc)}, not an integer`);
    }
  };
  let result;
  try {
    const file = userRequire.resolve(mod);
    if (reload) {
      delete userRequire.cache[file];
    }
    const exports = userRequire(file);
    const f = exports === null || exports === undefined ? undefined : exports[func];
    if (typeof f !== 'function') {
      fail(`${file} exports no function '${func}'`);
      return;
    }
    result = f(rest, tq);
  } catch (err) {
    fail(describe(err));
    return;
  }
  if (result !== null && typeof result === 'object' && typeof result.then === 'function') {
    Promise.resolve(result).then(finish, (err) => fail(describe(err)));
  } else {
    finish(result);
  }
}

binding.start(load);
