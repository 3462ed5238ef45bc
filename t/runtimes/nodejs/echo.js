'use strict';
// Test runtimes for t/rt_nodejs.rs: one init function per behaviour, all on require('resty_ffi').
const ffi = require('resty_ffi');

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Echo, answered synchronously by the handler.
exports.init = (cfg, tq) => {
  ffi.serve(tq, (req) => req).then(() => console.warn(`echo: finished cfg=${cfg}`));
  return 0;
};

// Echo through an async handler, after a turn of the event loop.
exports.init_async = async (cfg, tq) => {
  await sleep(1);
  ffi.serve(tq, async (req) => {
    await sleep(0);
    return req;
  });
  return 0;
};

// Answers after `cfg` ms, checking every 10 ms whether anybody still waits.
exports.slow = (cfg, tq) => {
  const ms = Number(cfg);
  ffi.serve(tq, async (req, task) => {
    const until = Date.now() + ms;
    while (Date.now() < until) {
      if (ffi.cancelled(task)) {
        console.warn('slow: task cancelled');
        throw new Error('cancelled');
      }
      await sleep(10);
    }
    return req;
  }).then(() => console.warn(`slow: finished cfg=${cfg}`));
  return 0;
};

// The request names what the handler does.
exports.shapes = (cfg, tq) => {
  ffi.serve(tq, (req, task) => {
    switch (req === null ? 'nil' : req.toString()) {
      case 'throw': throw new Error('thrown');
      case 'reject': return Promise.reject(new Error('rejected'));
      case 'async': return (async () => {
        await sleep(1);
        throw new TypeError('thrown after await');
      })();
      case 'rc': throw Object.assign(new Error('with an rc'), { rc: 42 });
      case 'string': throw 'a plain string'; // eslint-disable-line no-throw-literal
      case 'number': return 42;
      case 'text': return 'h\u00e9llo';
      case 'nil': return null;
      case 'undefined': return undefined;
      case 'empty': return Buffer.alloc(0);
      case 'u16': return new Uint16Array([0x4241, 0x4443]);
      case 'arraybuffer': return new Uint8Array([1, 0, 2]).buffer;
      case 'dataview': return new DataView(new Uint8Array([7, 8, 9, 10]).buffer, 1, 2);
      case 'self': {
        ffi.respond(task, 0, 'answered by the handler');
        return 'ignored';
      }
      case 'cancelled-after': {
        ffi.respond(task, 0, 'first');
        return ffi.cancelled(task) ? Buffer.from('x') : null;
      }
      default: return Promise.resolve(req);
    }
  });
  return 0;
};

// Init functions that fail.
exports.init_throws = () => {
  throw new Error('init failed on purpose');
};
exports.init_rejects = async () => {
  await sleep(1);
  throw new Error('async init failed on purpose');
};
exports.init_rc = () => 7;
exports.init_not_int = () => 'zero';
exports.not_a_function = 42;

// Misbehaviour that must not reach the worker.
exports.init_rude = (cfg, tq) => {
  process.exit(3);
  setTimeout(() => {
    throw new Error('uncaught on purpose');
  }, 0);
  Promise.reject(new Error('unhandled on purpose'));
  let blocked = '';
  try {
    ffi.poll_task(tq);
  } catch (e) {
    blocked = e.message;
  }
  console.warn(`rude: poll_task on the event loop: ${blocked}`);
  ffi.serve(tq, (req) => req);
  return 0;
};

// Logging from JavaScript.
exports.init_log = (cfg, tq) => {
  console.error('console.error from js');
  console.warn('console.warn from js: %d', 42);
  console.log('console.log from js');
  ffi.log(ffi.NOTICE, 'ffi.log notice from js', { a: 1 });
  ffi.serve(tq, (req) => req);
  return 0;
};

// A native addon given as cfg (a path), and what the runtime may do to the process.
exports.init_addon = (cfg, tq) => {
  const addon = require(cfg);
  let chdir = 'process.chdir worked';
  try {
    process.chdir('/');
  } catch (e) {
    chdir = e.message;
  }
  ffi.serve(tq, () => `${addon.hello()}; ${chdir}; cwd ${process.cwd()}`);
  return 0;
};
