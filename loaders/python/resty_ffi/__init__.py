"""Python runtimes for nginx's ``ngx.load_ffi`` without the three C calls.

A runtime module loaded by ``libffi_python3.so`` (cfg ``module[?],func[,rest]``) hands its
queue to :func:`serve`::

    import resty_ffi

    def handle(req):                 # bytes, or None when Lua passed nil
        return req.upper()           # bytes, str (sent as UTF-8) or None

    def init(cfg, tq):
        resty_ffi.serve(tq, handle)  # returns at once
        return 0

An ``async def`` handler runs on an asyncio loop of its own thread; a plain one on a pool of
``workers`` threads (``workers=0``: on the poll thread itself). A handler's exception answers
``rc = 1`` with ``"ExceptionType: message"`` (traceback in error.log); :class:`Error` answers
its own rc and message. :func:`cancelled` tells a handler its caller is gone (timeout, aborted
request), so it can stop early; the task is still answered (nobody reads it).

The host's functions are found in the process's global namespace with ctypes (no cffi
needed), when :func:`serve` is first called.
"""

import asyncio
import contextvars
import ctypes
import inspect
import os
import queue
import sys
import threading
import traceback

__all__ = [
    "serve", "Server", "Error", "cancelled", "current_task", "cfg_text", "log",
    "ERR", "WARN", "NOTICE", "INFO", "DEBUG",
]

#: nginx's log levels, for :func:`log`.
ERR, WARN, NOTICE, INFO, DEBUG = 4, 5, 6, 7, 8

_LEVEL_NAMES = {ERR: "error", WARN: "warn", NOTICE: "notice", INFO: "info", DEBUG: "debug"}
_MAX_RSP = 2**31 - 1
_NUL = b"\0"


class Error(Exception):
    """Raised by a handler: answers ``rc`` (not 0) with ``message`` (str or bytes), and logs
    nothing."""

    def __init__(self, message, rc=1):
        super().__init__(message)
        if not isinstance(rc, int) or rc == 0 or not -2**31 <= rc < 2**31:
            raise ValueError("rc must be a non-zero C int")
        self.message = message
        self.rc = rc


class _Host:
    """The host's C functions, bound once."""

    def __init__(self):
        c = ctypes.CDLL(None)
        vp, ci = ctypes.c_void_p, ctypes.c_int
        self.poll = _fn(c, "ngx_http_lua_ffi_task_poll", vp, [vp])
        self.get_req = _fn(c, "ngx_http_lua_ffi_get_req", vp, [vp, ctypes.POINTER(ci)])
        self.respond = _fn(c, "ngx_http_lua_ffi_respond", None, [vp, ci, vp, ci])
        self.malloc = _fn(c, "malloc", vp, [ctypes.c_size_t])
        # This host's extensions: absent on the real lua-resty-ffi.
        self.cancelled = _fn(c, "ngx_http_lua_ffi_task_cancelled", ci, [vp], optional=True)
        self.log = _fn(c, "resty_ffi_log", ci, [ci, ctypes.c_char_p, ctypes.c_size_t],
                       optional=True)


def _fn(lib, name, restype, argtypes, optional=False):
    try:
        f = getattr(lib, name)
    except AttributeError:
        if optional:
            return None
        raise RuntimeError(
            f"resty_ffi: {name} not found: is this process an nginx with the resty_ffi host?"
        ) from None
    f.restype, f.argtypes = restype, argtypes
    return f


_host = None
_host_lock = threading.Lock()


def _bind():
    global _host
    with _host_lock:
        if _host is None:
            _host = _Host()
        return _host


_task = contextvars.ContextVar("resty_ffi_task", default=None)


def current_task():
    """The task (an int address) the calling handler serves, or None outside a handler. Pass
    it to :func:`cancelled` from threads the handler starts."""
    return _task.get()


def cancelled(task=None):
    """True once nobody waits for ``task`` (default: the calling handler's) any more: its call
    timed out or its request was aborted. Always False on a host without
    ``ngx_http_lua_ffi_task_cancelled`` and outside a handler."""
    if task is None:
        task = _task.get()
    host = _host
    if task is None or host is None or host.cancelled is None:
        return False
    return host.cancelled(task) == 1


def cfg_text(cfg):
    """The ``rest`` of the cfg string as str (``cfg`` is the address ``init`` received), or
    None when the cfg had none. Valid only during ``init``."""
    if not cfg:
        return None
    return ctypes.string_at(cfg).decode("utf-8", "surrogateescape")


def log(level, msg):
    """Writes ``msg`` to nginx's error log at ``level`` (:data:`ERR` ... :data:`DEBUG`), from
    any thread; ``[level] msg`` on stderr on a host without ``resty_ffi_log``."""
    data = msg.encode("utf-8", "replace") if isinstance(msg, str) else bytes(msg)
    host = _host
    if host is None:
        try:
            host = _bind()
        except RuntimeError:
            host = None
    if host is not None and host.log is not None and host.log(level, data, len(data)) == 0:
        return
    sys.stderr.write(f"[{_LEVEL_NAMES.get(level, 'info')}] {data.decode('utf-8', 'replace')}\n")


class Server:
    """What :func:`serve` started. ``finished`` is set once the queue was finished
    (``__unload``, worker exit) and every task polled before was answered."""

    def __init__(self, tq, handler, workers, name, log_exceptions):
        self.name = name
        self.finished = threading.Event()
        self._host = _bind()
        self._tq = tq
        self._handler = handler
        self._log_exceptions = log_exceptions
        self._async = _is_async(handler)
        self._workers = 0 if self._async else workers
        self._jobs = queue.SimpleQueue()
        self._workers_left = self._workers
        self._lock = threading.Lock()
        self._threads = []
        self._loop = None
        self._pending = set()

    # -- threads ---------------------------------------------------------------------------

    def _start(self):
        if self._async:
            ready = threading.Event()
            self._spawn(f"{self.name}-loop", self._loop_main, ready)
            ready.wait()
        for i in range(self._workers):
            self._spawn(f"{self.name}-{i}", self._worker_main)
        self._spawn(f"{self.name}-poll", self._poll_main)

    def _spawn(self, name, target, *args):
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _poll_main(self):
        host, tq = self._host, self._tq
        try:
            while True:
                task = host.poll(tq)
                if not task:
                    break
                try:
                    req = self._request(task)
                except BaseException as e:  # noqa: BLE001 - every task is answered
                    self._answer(task, 1, _message(e))
                    continue
                if self._async:
                    self._loop.call_soon_threadsafe(self._start_async, task, req)
                elif self._workers:
                    self._jobs.put((task, req))
                else:
                    self._run(task, req)
        finally:
            # The queue is finished (or the loop broke): let the others drain and end.
            if self._async:
                self._loop.call_soon_threadsafe(self._stop_async)
            else:
                for _ in range(self._workers):
                    self._jobs.put(None)
                if not self._workers:
                    self.finished.set()

    def _worker_main(self):
        while True:
            job = self._jobs.get()
            if job is None:
                break
            self._run(*job)
        with self._lock:
            self._workers_left -= 1
            if self._workers_left == 0:
                self.finished.set()

    def _loop_main(self, ready):
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        ready.set()
        try:
            self._loop.run_forever()
        finally:
            self.finished.set()

    # -- one task --------------------------------------------------------------------------

    def _request(self, task):
        n = ctypes.c_int(0)
        p = self._host.get_req(task, ctypes.byref(n))
        return None if not p else ctypes.string_at(p, n.value)

    def _run(self, task, req):
        token = _task.set(task)
        try:
            rc, rsp = 0, self._handler(req)
        except BaseException as e:  # noqa: BLE001 - a handler never kills its thread
            rc, rsp = self._failed(e)
        finally:
            _task.reset(token)
        self._answer(task, rc, rsp)

    def _start_async(self, task, req):
        t = self._loop.create_task(self._run_async(task, req))
        self._pending.add(t)
        t.add_done_callback(self._pending.discard)

    async def _run_async(self, task, req):
        _task.set(task)  # this asyncio task's own context
        try:
            rc, rsp = 0, await self._handler(req)
        except BaseException as e:  # noqa: BLE001
            rc, rsp = self._failed(e)
        self._answer(task, rc, rsp)

    def _stop_async(self):
        async def drain():
            while self._pending:
                await asyncio.gather(*list(self._pending), return_exceptions=True)
            self._loop.stop()
        self._loop.create_task(drain())

    def _failed(self, e):
        if isinstance(e, Error):
            return e.rc, e.message
        if self._log_exceptions:
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip()
            log(ERR, f"resty_ffi: handler of {self.name} raised: {tb}")
        return 1, _message(e)

    def _answer(self, task, rc, rsp):
        """Responds exactly once, whatever ``rsp`` is."""
        try:
            p, n = self._buffer(rsp)
        except BaseException as e:  # noqa: BLE001
            if self._log_exceptions:
                log(ERR, f"resty_ffi: handler of {self.name}: {_message(e)}")
            rc = 1
            try:
                p, n = self._buffer(_message(e))
            except BaseException:  # noqa: BLE001 - out of memory: answer NULL
                p, n = None, 0
        self._host.respond(task, rc, p, n)

    def _buffer(self, rsp):
        """A malloc'd copy of ``rsp`` for the host to free, and its length."""
        if rsp is None:
            return None, 0
        if isinstance(rsp, str):
            rsp = rsp.encode("utf-8", "surrogateescape")
        elif isinstance(rsp, (bytearray, memoryview)):
            rsp = bytes(rsp)
        elif not isinstance(rsp, bytes):
            raise TypeError(
                f"handler returned {type(rsp).__name__}, expected bytes, str or None")
        n = len(rsp)
        if n > _MAX_RSP:
            raise ValueError(f"response of {n} bytes is larger than 2 GiB - 1")
        # An empty response travels as "\0" with length 0 (a C string): Lua sees "".
        p = self._host.malloc(n or 1)
        if not p:
            raise MemoryError(f"malloc({n}) failed")
        ctypes.memmove(p, rsp or _NUL, n or 1)
        return p, n


def _is_async(handler):
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None))


def _message(e):
    return "".join(traceback.format_exception_only(type(e), e)).strip()


_names = iter(range(1, sys.maxsize))


def serve(tq, handler, workers=None, name=None, log_exceptions=True):
    """Serves the queue ``tq`` (the int ``init`` received) with ``handler`` and returns at once
    with a :class:`Server`.

    ``handler(req)`` gets the request (bytes, or None for nil) and returns the response
    (bytes, bytearray, memoryview, str sent as UTF-8, or None for nil); raising answers
    ``rc = 1`` and ``"ExceptionType: message"`` (:class:`Error`: its rc and message).

    - ``async def`` handler: runs on an asyncio loop in a thread of its own, every task
      concurrently (``workers`` is ignored).
    - other handlers: on ``workers`` threads (default ``min(32, cpus + 4)``); ``workers=0``
      runs them on the poll thread, one at a time, without a hand-off.

    One daemon thread polls the queue; when it is finished (``obj:__unload()``, worker exit)
    the tasks already polled are answered and every thread ends. ``log_exceptions``: write a
    handler's traceback to error.log (``[error]``).
    """
    if not isinstance(tq, int) or tq == 0:
        raise ValueError("serve: tq must be the queue address init received")
    if workers is None:
        workers = min(32, (os.cpu_count() or 1) + 4)
    if not isinstance(workers, int) or workers < 0:
        raise ValueError("serve: workers must be an int >= 0")
    if name is None:
        name = f"resty_ffi-{next(_names)}"
    server = Server(tq, handler, workers, name, log_exceptions)
    server._start()
    return server
