'use strict';
// Test runtimes for t/rt_nodejs.rs, one init function per behaviour.
const ffi = require('resty_ffi');

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Echo, answered synchronously.
exports.init = (cfg, tq) => {
  ffi.serve(tq, (req) => req).then(() => console.warn(`echo: finished cfg=${cfg}`));
  return 0;
};
