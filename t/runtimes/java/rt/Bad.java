package rt;

/** Init methods that fail in each way libffi_init reports. */
public final class Bad {
    private Bad() {}

    public static int initThrows(String cfg, long tq) {
        throw new IllegalStateException("boom in init");
    }

    public static int returns7(String cfg, long tq) {
        return 7;
    }

    public int notStatic(String cfg, long tq) {
        return 0;
    }

    public static void wrongReturn(String cfg, long tq) {}
}
