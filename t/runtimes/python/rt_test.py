"""Runtimes on the resty_ffi helper for t/rt_python.rs: cfg "rt_test,<function>[,rest]"."""

import asyncio
import locale
import signal
import sys
import threading
import time

import resty_ffi


def _report_finish(server, what):
    """Logs "rt_test: <what> finished" once the server's queue is finished and drained."""
    def wait():
        server.finished.wait()
        resty_ffi.log(resty_ffi.NOTICE, f"rt_test: {what} finished")
    threading.Thread(target=wait, daemon=True).start()


# -- echo: sync on a pool, sync inline, async ------------------------------------------------

def echo(cfg, tq):
    server = resty_ffi.serve(tq, lambda req: req, workers=4)
    _report_finish(server, f"echo {resty_ffi.cfg_text(cfg)}")
    return 0


def echo_inline(cfg, tq):
    resty_ffi.serve(tq, lambda req: req, workers=0)
    return 0


async def _echo_async(req):
    await asyncio.sleep(0)
    return req


def echo_async(cfg, tq):
    server = resty_ffi.serve(tq, _echo_async)
    _report_finish(server, f"echo_async {resty_ffi.cfg_text(cfg)}")
    return 0


# -- slow calls: wait the request's milliseconds unless cancelled ---------------------------

def _slow(req):
    resty_ffi.log(resty_ffi.NOTICE, "rt_test: slow call started")
    deadline = time.monotonic() + int(req) / 1000
    while time.monotonic() < deadline:
        if resty_ffi.cancelled():
            resty_ffi.log(resty_ffi.NOTICE, "rt_test: slow call cancelled")
            return b"cancelled"
        time.sleep(0.005)
    return b"done"


async def _slow_async(req):
    resty_ffi.log(resty_ffi.NOTICE, "rt_test: slow_async call started")
    deadline = time.monotonic() + int(req) / 1000
    while time.monotonic() < deadline:
        if resty_ffi.cancelled():
            resty_ffi.log(resty_ffi.NOTICE, "rt_test: slow async call cancelled")
            return b"cancelled"
        await asyncio.sleep(0.005)
    return b"done"


def slow(cfg, tq):
    resty_ffi.serve(tq, _slow, workers=64)
    return 0


def slow_async(cfg, tq):
    resty_ffi.serve(tq, _slow_async)
    return 0


def sleepy(cfg, tq):
    """Echoes after the cfg's milliseconds, not cancellable."""
    delay = int(resty_ffi.cfg_text(cfg)) / 1000

    def handle(req):
        resty_ffi.log(resty_ffi.NOTICE, "rt_test: sleepy call started")
        time.sleep(delay)
        return req
    resty_ffi.serve(tq, handle, workers=64)
    return 0


# -- the helper's error path --------------------------------------------------------------

def _errors(req):
    what = req.decode() if req is not None else "nil"
    if what == "raise":
        raise ValueError("bad input")
    if what == "error":
        raise resty_ffi.Error("custom failure", rc=7)
    if what == "error_bytes":
        raise resty_ffi.Error(b"\0bin", rc=-3)
    if what == "int":
        return 42
    if what == "str":
        return "text \u00e9"
    if what == "none":
        return None
    if what == "bytearray":
        return bytearray(b"ba")
    if what == "exit":
        sys.exit(3)
    return req


async def _errors_async(req):
    await asyncio.sleep(0)
    return _errors(req)


def errors(cfg, tq):
    resty_ffi.serve(tq, _errors, workers=2)
    return 0


def errors_async(cfg, tq):
    resty_ffi.serve(tq, _errors_async)
    return 0


# -- init failures and results ------------------------------------------------------------

def init_raises(cfg, tq):
    raise RuntimeError("init exploded")


def init_returns_none(cfg, tq):
    return None


def init_returns(cfg, tq):
    return int(resty_ffi.cfg_text(cfg))


not_callable = 42


# -- what a runtime sees --------------------------------------------------------------------

def facts(cfg, tq):
    rest = resty_ffi.cfg_text(cfg)
    main = threading.current_thread() is threading.main_thread()

    def handle(req):
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        lines = [
            f"cfg={rest!r}",
            f"cfg_ptr_is_int={isinstance(cfg, int)} tq_is_int={isinstance(tq, int)}",
            f"init_on_main_thread={main}",
            f"prefix={sys.prefix}",
            f"executable={sys.executable}",
            f"utf8_mode={sys.flags.utf8_mode}",
            f"lc_ctype={locale.setlocale(locale.LC_CTYPE)}",
            f"python_sigint_handler={signal.getsignal(signal.SIGINT)}",
            "blocked_in_handler="
            + ",".join(s.name for s in sorted(blocked) if s in (
                signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGWINCH, signal.SIGCHLD, signal.SIGALRM, signal.SIGIO)),
        ]
        return "\n".join(lines)
    resty_ffi.serve(tq, handle, workers=1)
    return 0
