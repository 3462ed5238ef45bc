package resty.ffi;

/** A blocking handler for {@link Server#serve}: request bytes in, response bytes out. */
@FunctionalInterface
public interface Handler {
    /**
     * Answers one call. {@code request} is {@code null} when Lua passed {@code nil}; returning
     * {@code null} answers {@code nil}. An exception answers rc 1 with its message
     * ({@link ErrorReply} chooses the rc and the body).
     */
    byte[] handle(byte[] request, Call call) throws Exception;
}
