package rt;

import java.nio.charset.StandardCharsets;
import java.util.concurrent.CompletableFuture;

import resty.ffi.Call;
import resty.ffi.ErrorReply;
import resty.ffi.Host;
import resty.ffi.Server;

/** Test runtimes on the helper (resty.ffi.Server): echo, slow, error paths, async. */
public final class Echo {
    private Echo() {}

    private static void logFinish(Server s, String what) {
        s.finished().thenRun(() -> Host.log(Host.NOTICE, "rt.Echo: finished " + what));
    }

    /** Echo on the default pool. */
    public static int init(String cfg, long tq) {
        logFinish(Server.serve(tq, (req, call) -> req), "init " + cfg);
        return 0;
    }

    /** Echo after {@code cfg} ms (default 300), giving up early when the call is cancelled. */
    public static int slow(String cfg, long tq) {
        long ms = cfg.isEmpty() ? 300 : Long.parseLong(cfg);
        logFinish(Server.serve(tq, (req, call) -> {
            long end = System.nanoTime() + ms * 1_000_000L;
            while (System.nanoTime() < end) {
                if (call.cancelled()) {
                    Host.log(Host.NOTICE, "rt.Echo: task cancelled");
                    return null;
                }
                Thread.sleep(5);
            }
            return req;
        }), "slow " + cfg);
        return 0;
    }

    /** The request picks the outcome: throw:msg, reply:rc:body, nil, npe, npe-loop, else echo. */
    public static int errors(String cfg, long tq) {
        Server.serve(tq, Echo::misbehave);
        return 0;
    }

    private static byte[] misbehave(byte[] req, Call call) {
        String s = req == null ? "" : new String(req, StandardCharsets.UTF_8);
        if (s.startsWith("throw:")) {
            throw new IllegalArgumentException(s.substring(6));
        }
        if (s.startsWith("reply:")) {
            String[] p = s.split(":", 3);
            throw new ErrorReply(Integer.parseInt(p[1]), p[2]);
        }
        if (s.equals("nil")) {
            return null;
        }
        if (s.equals("npe")) {
            String none = null;
            return none.getBytes(StandardCharsets.UTF_8);
        }
        if (s.equals("npe-loop")) {
            // Enough iterations for the JIT to compile the loop: null checks become SIGSEGVs
            // the JVM turns into NullPointerExceptions.
            int caught = 0;
            for (int i = 0; i < 200_000; i++) {
                try {
                    caught += nth(i % 2 == 0 ? null : "x");
                } catch (NullPointerException e) {
                    caught++;
                }
            }
            return ("caught " + caught).getBytes(StandardCharsets.UTF_8);
        }
        return req;
    }

    private static int nth(String s) {
        return s.length() - 1;
    }

    /** CompletableFuture style: fail:msg completes exceptionally, throw throws, else echo. */
    public static int async(String cfg, long tq) {
        Server.serveAsync(tq, (req, call) -> {
            String s = req == null ? "" : new String(req, StandardCharsets.UTF_8);
            if (s.startsWith("fail:")) {
                return CompletableFuture.failedFuture(new IllegalStateException(s.substring(5)));
            }
            if (s.equals("throw")) {
                throw new UnsupportedOperationException("thrown before the future");
            }
            return CompletableFuture.supplyAsync(() -> req);
        });
        return 0;
    }
}
