'use strict';
// A runtime in the style of lua-resty-ffi's Node.js example: a Worker thread polls the queue
// with the blocking poll_task and posts each task to the main thread, which answers it.
const { Worker, isMainThread, parentPort } = require('worker_threads');

if (isMainThread) {
  const ffi = require('resty_ffi');
  exports.init = (cfg, tq) => {
    const worker = new Worker(__filename);
    worker.on('message', (task) => {
      if (task === 0) {
        console.warn('demo/echo: finished');
        return;
      }
      ffi.respond(task, 0, ffi.get_req(task));
    });
    worker.postMessage(tq);
    return 0;
  };
} else {
  // require('resty_ffi') is the main thread's; a Worker reaches the same calls this way.
  const ffi = process._linkedBinding('resty_ffi');
  parentPort.once('message', (tq) => {
    for (;;) {
      const task = ffi.poll_task(tq);
      parentPort.postMessage(task);
      if (task === 0) {
        break;
      }
    }
  });
}
