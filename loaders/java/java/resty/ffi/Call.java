package resty.ffi;

/**
 * One call in flight, handed to a {@link Handler} or {@link AsyncHandler} with its request.
 * {@link Server} answers it exactly once, with what the handler returns or throws.
 */
public final class Call {
    /** The task, 0 once answered (guarded by {@code this}). */
    private long task;

    Call(long task) {
        this.task = task;
    }

    /**
     * True when nobody waits for this call any more: the Lua call timed out or its request was
     * aborted (the host's {@code ngx_http_lua_ffi_task_cancelled}). A handler may stop early;
     * whatever it then returns is freed unread. False once answered, and on hosts without the
     * extension.
     */
    public synchronized boolean cancelled() {
        return task != 0 && Host.cancelled(task);
    }

    /** True once the call was answered. */
    public synchronized boolean answered() {
        return task == 0;
    }

    /** Reads the request; only before the answer (the server does it before the handler runs). */
    synchronized byte[] readRequest() {
        return task == 0 ? null : Host.request(task);
    }

    /** Answers the call unless it already was; true when this call answered it. */
    synchronized boolean respond(int rc, byte[] rsp) {
        if (task == 0) {
            return false;
        }
        long t = task;
        task = 0;
        Host.respond(t, rc, rsp);
        return true;
    }
}
