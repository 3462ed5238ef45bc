package resty.ffi;

import java.io.File;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.net.MalformedURLException;
import java.net.URL;
import java.net.URLClassLoader;
import java.util.ArrayList;
import java.util.List;

/**
 * What {@code libffi_java.so} calls for each {@code libffi_init}: loads the class (afresh, in a
 * new class loader, when the cfg's class ends with {@code ?}), finds
 * {@code static int method(String, long)}, calls it, and turns every failure into an rc with the
 * reason (and the stack) in nginx's error log. The rc values match the loader's constants.
 */
final class Boot {
    static final int RC_NO_CLASS = 4;
    static final int RC_NO_METHOD = 5;
    static final int RC_INIT_THREW = 6;
    static final int RC_INTERNAL = 7;

    /** Stack frames kept in a logged trace (nginx cuts a line at 2048 bytes anyway). */
    private static final int MAX_TRACE_CHARS = 1900;

    private Boot() {}

    static int init(String className, boolean fresh, String methodName, String cfg, long tq) {
        String what = className + (fresh ? "?" : "") + "," + methodName;
        try {
            return load(className, fresh, methodName, cfg, tq, what);
        } catch (Throwable t) {
            fail(what, "internal error", t);
            return RC_INTERNAL;
        }
    }

    private static int load(
            String className, boolean fresh, String methodName, String cfg, long tq, String what) {
        ClassLoader loader =
                fresh ? new Reloader(classPath(), Boot.class.getClassLoader())
                        : ClassLoader.getSystemClassLoader();
        Class<?> cls;
        try {
            cls = Class.forName(className, true, loader);
        } catch (ClassNotFoundException e) {
            fail(what, "class " + className + " not found (java.class.path="
                    + System.getProperty("java.class.path") + ")", null);
            return RC_NO_CLASS;
        } catch (LinkageError e) {
            // ExceptionInInitializerError, NoClassDefFoundError, UnsupportedClassVersionError...
            fail(what, "cannot load class " + className, e);
            return RC_NO_CLASS;
        }
        Method m;
        try {
            m = cls.getDeclaredMethod(methodName, String.class, long.class);
        } catch (NoSuchMethodException e) {
            fail(what, "no method static int " + methodName + "(String, long) in " + className,
                    null);
            return RC_NO_METHOD;
        }
        if (!Modifier.isStatic(m.getModifiers()) || m.getReturnType() != int.class) {
            fail(what, "method " + m + " must be static and return int", null);
            return RC_NO_METHOD;
        }
        try {
            m.setAccessible(true);
        } catch (RuntimeException e) {
            fail(what, "method " + m + " is not accessible", e);
            return RC_NO_METHOD;
        }
        Thread self = Thread.currentThread();
        ClassLoader saved = self.getContextClassLoader();
        // Threads the init starts inherit the context loader: libraries that use it (ServiceLoader
        // and friends) see the fresh classes.
        self.setContextClassLoader(loader);
        try {
            return (Integer) m.invoke(null, cfg, tq);
        } catch (InvocationTargetException e) {
            fail(what, "init threw", e.getCause());
            return RC_INIT_THREW;
        } catch (IllegalAccessException e) {
            fail(what, "cannot call " + m, e);
            return RC_NO_METHOD;
        } finally {
            self.setContextClassLoader(saved);
        }
    }

    private static void fail(String what, String reason, Throwable t) {
        StringBuilder b = new StringBuilder("resty_ffi_java: ")
                .append(what).append(": ").append(reason);
        if (t != null) {
            StringWriter w = new StringWriter();
            t.printStackTrace(new PrintWriter(w));
            String trace = w.toString().trim();
            if (trace.length() > MAX_TRACE_CHARS) {
                trace = trace.substring(0, MAX_TRACE_CHARS) + "\n\t...";
            }
            b.append(": ").append(trace);
        }
        Host.log(Host.ERR, b.toString());
    }

    private static URL[] classPath() {
        List<URL> urls = new ArrayList<>();
        String cp = System.getProperty("java.class.path", "");
        for (String entry : cp.split(File.pathSeparator)) {
            if (entry.isEmpty()) {
                continue;
            }
            try {
                urls.add(new File(entry).toURI().toURL());
            } catch (MalformedURLException e) {
                // A path that is no URL cannot hold classes either.
            }
        }
        return urls.toArray(new URL[0]);
    }

    /**
     * Loads the class path's classes itself (child first), so a {@code ?} load sees the files as
     * they are now; platform classes and this package come from the parent (the natives are
     * registered on the parent's {@link Host}).
     */
    static final class Reloader extends URLClassLoader {
        static {
            ClassLoader.registerAsParallelCapable();
        }

        Reloader(URL[] urls, ClassLoader parent) {
            super("resty-ffi-reload", urls, parent);
        }

        @Override
        protected Class<?> loadClass(String name, boolean resolve) throws ClassNotFoundException {
            if (parentFirst(name)) {
                return super.loadClass(name, resolve);
            }
            synchronized (getClassLoadingLock(name)) {
                Class<?> c = findLoadedClass(name);
                if (c == null) {
                    try {
                        c = findClass(name);
                    } catch (ClassNotFoundException e) {
                        return super.loadClass(name, resolve);
                    }
                }
                if (resolve) {
                    resolveClass(c);
                }
                return c;
            }
        }

        @Override
        public URL getResource(String name) {
            URL u = findResource(name);
            return u != null ? u : super.getResource(name);
        }

        private static boolean parentFirst(String name) {
            return name.startsWith("java.") || name.startsWith("javax.") || name.startsWith("jdk.")
                    || name.startsWith("sun.") || name.startsWith("com.sun.")
                    || name.startsWith("resty.ffi.");
        }
    }
}
