package rt;

import resty.ffi.Host;

/** The article's style: a daemon thread polls the queue and answers with the request. */
public final class Raw {
    private Raw() {}

    public static int init(String cfg, long tq) {
        Thread t = new Thread(() -> {
            for (;;) {
                long task = Host.poll(tq);
                if (task == 0) {
                    break;
                }
                byte[] req = Host.request(task);
                Host.respond(task, 0, req);
            }
            Host.log(Host.NOTICE, "rt.Raw: queue finished");
        }, "raw-poll");
        t.setDaemon(true);
        t.start();
        return 0;
    }
}
