package resty.ffi;

/**
 * The host's C calls, as static native methods implemented by {@code libffi_java.so} (which
 * registers them when it starts the JVM, so nothing is looked up by name and no JNA/JNR is
 * needed).
 *
 * <p>This is the raw, lua-resty-ffi style: {@link #poll} a task, read its {@link #request},
 * answer it exactly once with {@link #respond}. Pointers are plain {@code long}s and are trusted
 * as given: answering a task twice, touching it after the answer or polling a finished queue is
 * undefined behaviour, as in C. {@link Server#serve} does all of this for you.
 */
public final class Host {
    /** nginx's {@code NGX_LOG_ALERT}. */
    public static final int ALERT = 2;
    /** nginx's {@code NGX_LOG_ERR}. */
    public static final int ERR = 4;
    /** nginx's {@code NGX_LOG_WARN}. */
    public static final int WARN = 5;
    /** nginx's {@code NGX_LOG_NOTICE}. */
    public static final int NOTICE = 6;
    /** nginx's {@code NGX_LOG_INFO}. */
    public static final int INFO = 7;
    /** nginx's {@code NGX_LOG_DEBUG}. */
    public static final int DEBUG = 8;

    private Host() {}

    /**
     * {@code ngx_http_lua_ffi_task_poll}: blocks until the next task of the queue {@code tq} and
     * returns it; 0 once the queue is finished (after {@code __unload}, or at worker exit), after
     * which {@code tq} must not be used again. One thread polls a queue.
     */
    public static native long poll(long tq);

    /**
     * {@code ngx_http_lua_ffi_get_req}: a copy of the task's request, or {@code null} when Lua
     * passed {@code nil}.
     */
    public static native byte[] request(long task);

    /**
     * {@code ngx_http_lua_ffi_respond}: answers the task (exactly once) with {@code rc} and a
     * copy of {@code rsp} ({@code null}: Lua sees {@code nil}). Lua's {@code obj:call()} returns
     * {@code true, rsp} for rc 0 and {@code false, rc, rsp} otherwise.
     */
    public static native void respond(long task, int rc, byte[] rsp);

    /**
     * {@code ngx_http_lua_ffi_task_cancelled}: true when nobody waits for the answer any more
     * (the call timed out or its request was aborted). The task must still be answered. Always
     * false on a host without this extension.
     */
    public static native boolean cancelled(long task);

    /**
     * Writes a line to nginx's error log ({@code resty_ffi_log}; stderr on a host without it).
     * {@code level} is one of the constants of this class.
     */
    public static native void log(int level, String msg);
}
