package rt;

/** A class whose static initializer throws. */
public final class BadStatic {
    static final int VALUE = fail();

    private BadStatic() {}

    private static int fail() {
        throw new IllegalStateException("static initializer boom");
    }

    public static int init(String cfg, long tq) {
        return VALUE;
    }
}
