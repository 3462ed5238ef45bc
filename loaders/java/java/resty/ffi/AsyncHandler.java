package resty.ffi;

import java.util.concurrent.CompletionStage;

/**
 * An asynchronous handler for {@link Server#serveAsync}: it runs on the poll thread, so it must
 * not block; it returns a stage (a {@link java.util.concurrent.CompletableFuture}) that
 * completes with the response bytes, or exceptionally (rc 1 with the message, or the
 * {@link ErrorReply}'s rc and body).
 */
@FunctionalInterface
public interface AsyncHandler {
    /** Starts one call; see {@link Handler#handle} for {@code null} and errors. */
    CompletionStage<byte[]> handle(byte[] request, Call call) throws Exception;
}
