package resty.ffi;

import java.nio.charset.StandardCharsets;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Executor;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.ThreadFactory;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * Serves one queue: a daemon poll thread takes each task and hands its request to a handler;
 * what the handler returns is the answer, an exception answers rc 1 with its message (an
 * {@link ErrorReply} its own rc and body), and every task is answered exactly once. The poll
 * thread ends when the queue is finished ({@code __unload}, worker exit); {@link #finished()}
 * completes once every call polled before is answered.
 *
 * <pre>{@code
 * public static int init(String cfg, long tq) {
 *     Server.serve(tq, (req, call) -> req);          // an echo
 *     return 0;
 * }
 * }</pre>
 */
public final class Server {
    private static final AtomicInteger SERVERS = new AtomicInteger();

    private final long tq;
    private final Handler handler;
    private final AsyncHandler asyncHandler;
    private final Executor executor;
    private final ExecutorService ownExecutor;
    private final String name;
    /** Calls not yet answered, plus one for the poll loop. */
    private final AtomicInteger pending = new AtomicInteger(1);
    private final CompletableFuture<Void> finished = new CompletableFuture<>();

    private Server(long tq, Handler handler, AsyncHandler asyncHandler, Executor executor) {
        this.tq = tq;
        this.handler = handler;
        this.asyncHandler = asyncHandler;
        this.name = "resty-ffi-" + SERVERS.incrementAndGet();
        if (executor == null && handler != null) {
            ownExecutor = Executors.newCachedThreadPool(daemonThreads(name + "-worker-"));
            this.executor = ownExecutor;
        } else {
            ownExecutor = null;
            this.executor = executor;
        }
    }

    /**
     * Serves {@code tq} with a blocking handler, each call on a thread of a cached pool of daemon
     * threads (created for this server, shut down when the queue is finished). Returns at once.
     */
    public static Server serve(long tq, Handler handler) {
        return serve(tq, handler, null);
    }

    /**
     * Serves {@code tq} with a blocking handler run on {@code executor} ({@code null}: a cached
     * pool of daemon threads; {@code Runnable::run}: on the poll thread, one call at a time).
     * The executor's threads must not keep the JVM from anything: the worker process exits
     * without waiting for them. Returns at once.
     */
    public static Server serve(long tq, Handler handler, Executor executor) {
        if (handler == null) {
            throw new NullPointerException("handler");
        }
        Server s = new Server(tq, handler, null, executor);
        s.start();
        return s;
    }

    /**
     * Serves {@code tq} with an asynchronous handler, called on the poll thread (it must not
     * block); each call is answered when its stage completes, on the thread that completes it.
     * Returns at once.
     */
    public static Server serveAsync(long tq, AsyncHandler handler) {
        if (handler == null) {
            throw new NullPointerException("handler");
        }
        Server s = new Server(tq, null, handler, null);
        s.start();
        return s;
    }

    /** Completes when the queue is finished and every call polled from it is answered. */
    public CompletableFuture<Void> finished() {
        return finished;
    }

    private void start() {
        Thread t = new Thread(this::pollLoop, name + "-poll");
        t.setDaemon(true);
        t.start();
    }

    private void pollLoop() {
        try {
            for (;;) {
                long task = Host.poll(tq);
                if (task == 0) {
                    break;
                }
                pending.incrementAndGet();
                Call call = new Call(task);
                try {
                    if (handler != null) {
                        executor.execute(() -> runBlocking(call));
                    } else {
                        runAsync(call);
                    }
                } catch (Throwable t) {
                    // A rejected execution, an out-of-memory error: the task is still answered.
                    answerError(call, t);
                }
            }
        } catch (Throwable t) {
            Host.log(Host.ERR, "resty.ffi.Server " + name + ": poll loop ended: " + t);
        } finally {
            if (ownExecutor != null) {
                ownExecutor.shutdown();
            }
            done();
        }
    }

    private void runBlocking(Call call) {
        byte[] rsp;
        try {
            rsp = handler.handle(call.readRequest(), call);
        } catch (Throwable t) {
            answerError(call, t);
            return;
        }
        answer(call, 0, rsp);
    }

    private void runAsync(Call call) {
        CompletionStage<byte[]> stage;
        try {
            stage = asyncHandler.handle(call.readRequest(), call);
        } catch (Throwable t) {
            answerError(call, t);
            return;
        }
        if (stage == null) {
            answer(call, 0, null);
            return;
        }
        stage.whenComplete((rsp, err) -> {
            if (err != null) {
                answerError(call, err);
            } else {
                answer(call, 0, rsp);
            }
        });
    }

    private void answer(Call call, int rc, byte[] rsp) {
        if (call.respond(rc, rsp)) {
            done();
        }
    }

    private void answerError(Call call, Throwable t) {
        t = unwrap(t);
        if (t instanceof ErrorReply) {
            ErrorReply e = (ErrorReply) t;
            answer(call, e.rc(), e.body());
        } else {
            answer(call, 1, message(t).getBytes(StandardCharsets.UTF_8));
        }
    }

    private void done() {
        if (pending.decrementAndGet() == 0) {
            finished.complete(null);
        }
    }

    /** The exception a {@link CompletionException} or {@link ExecutionException} wraps. */
    static Throwable unwrap(Throwable t) {
        while ((t instanceof CompletionException || t instanceof ExecutionException)
                && t.getCause() != null) {
            t = t.getCause();
        }
        return t;
    }

    /** The exception's message, or its class name when it has none. */
    static String message(Throwable t) {
        String m = t.getMessage();
        return m != null ? m : t.getClass().getName();
    }

    static ThreadFactory daemonThreads(String prefix) {
        AtomicInteger n = new AtomicInteger();
        return r -> {
            Thread t = new Thread(r, prefix + n.incrementAndGet());
            t.setDaemon(true);
            return t;
        };
    }
}
