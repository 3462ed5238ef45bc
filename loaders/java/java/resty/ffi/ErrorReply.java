package resty.ffi;

import java.nio.charset.StandardCharsets;

/**
 * Thrown by a handler (or completing its stage) to answer with a chosen rc and body: Lua's call
 * returns {@code false, rc, body}. Any other exception answers rc 1 with its message.
 */
public class ErrorReply extends RuntimeException {
    private static final long serialVersionUID = 1L;

    private final int rc;
    private final byte[] body;

    /** Answers {@code rc} (not 0) with {@code body} ({@code null}: Lua sees nil). */
    public ErrorReply(int rc, byte[] body) {
        this(rc, body, "rc " + rc);
    }

    /** Answers {@code rc} (not 0) with {@code message} in UTF-8. */
    public ErrorReply(int rc, String message) {
        this(rc, message == null ? null : message.getBytes(StandardCharsets.UTF_8), message);
    }

    private ErrorReply(int rc, byte[] body, String message) {
        super(message);
        if (rc == 0) {
            throw new IllegalArgumentException("ErrorReply needs an rc other than 0");
        }
        this.rc = rc;
        this.body = body;
    }

    /** The rc Lua sees. */
    public int rc() {
        return rc;
    }

    /** The response body Lua sees ({@code null}: nil). */
    public byte[] body() {
        return body;
    }
}
