'use strict';
// Does not compile: loading it must fail with the file and line in error.log.
exports.init = (cfg, tq) => {
  return 0 +;
};
