// The C++ side of the Node.js loader: Node's embedding API (node.h) is C++, so this file runs one
// Node.js instance on the calling thread and shows the Rust crate a small C ABI:
//
//   int   resty_node_run(const struct resty_node_options *o);   // blocks until stopped
//   void  resty_node_stop(void);                                // any thread
//   void *resty_uv_poll_start(loop, fd, cb, data);              // event loop thread
//   void  resty_uv_poll_close(void *poll, closed, data);        // event loop thread
//
// (libuv's handle structs are sized by uv.h, hence the last two here.)
// Nothing here talks to nginx or to the host's queue: the linked binding (`o->register_binding`,
// N-API, written in Rust) does, and the JavaScript bootstrap (`o->bootstrap`) drives it.
// No C++ exception leaves this file.

#include <node.h>
#include <node_api.h>
#include <uv.h>

#include <cstring>
#include <new>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

extern "C" {

// nginx's log levels, as resty_ffi_log takes them.
enum { RESTY_NODE_LOG_ALERT = 2, RESTY_NODE_LOG_ERR = 4, RESTY_NODE_LOG_WARN = 5 };

struct resty_node_options {
  // Source of the main script (UTF-8, NUL-terminated), run by LoadEnvironment.
  const char *bootstrap;
  // Name of the linked binding (`process._linkedBinding(name)`) and its N-API init function.
  const char *binding_name;
  napi_addon_register_func register_binding;
  // Threads of V8's platform (background compilation, GC).
  int platform_threads;
  // Where this file's errors go (`len` bytes, no newline).
  void (*report)(int level, const char *msg, size_t len);
  // JavaScript called process.exit(code): the loader logs it; the process does not exit.
  void (*exit_requested)(int code);
};

int resty_node_run(const struct resty_node_options *o);
void resty_node_stop(void);
void *resty_uv_poll_start(uv_loop_t *loop, int fd, void (*cb)(void *data), void *data);
void resty_uv_poll_close(void *poll, void (*closed)(void *data), void *data);

}  // extern "C"

namespace {

// The running environment, for resty_node_stop from other threads. Cleared before the
// environment is freed; `stop_requested` covers a stop asked for before it exists.
std::mutex g_mutex;
node::Environment *g_env = nullptr;
bool g_stop_requested = false;

void report(const resty_node_options *o, int level, const std::string &msg) {
  o->report(level, msg.data(), msg.size());
}

int run(const resty_node_options *o) {
  // Node must leave the process as nginx set it up: no signal handlers (nginx's workers own
  // SIGHUP, SIGQUIT, SIGTERM, SIGINT, SIGUSR1/2, SIGWINCH, SIGCHLD, SIGALRM, SIGIO), no stdio
  // or TTY changes, no rlimit changes, no command line to parse. NODE_OPTIONS is honoured.
  using namespace node::ProcessInitializationFlags;
  const uint64_t flags = kNoDefaultSignalHandling | kNoStdioInitialization | kDisableCLIOptions |
                         kNoAdjustResourceLimits | kNoUseLargePages | kNoPrintHelpOrVersionOutput |
                         kNoInitializeV8 | kNoInitializeNodeV8Platform;
  std::vector<std::string> args{"nginx"};
  std::unique_ptr<node::InitializationResult> init =
      node::InitializeOncePerProcess(args, static_cast<Flags>(flags));
  for (const std::string &e : init->errors()) report(o, RESTY_NODE_LOG_ERR, "Node.js: " + e);
  if (init->early_return()) {
    report(o, RESTY_NODE_LOG_ERR,
           "Node.js initialization stopped early (exit code " +
               std::to_string(init->exit_code()) + "); check NODE_OPTIONS");
    return 1;
  }

  std::unique_ptr<node::MultiIsolatePlatform> platform =
      node::MultiIsolatePlatform::Create(o->platform_threads);
  v8::V8::InitializePlatform(platform.get());
  v8::V8::Initialize();

  int rc = 0;
  {
    // Not the process's owner (process.chdir, setuid, title... throw, as in a Worker) and no
    // inspector (it would take SIGUSR1).
    const auto env_flags = static_cast<node::EnvironmentFlags::Flags>(
        node::EnvironmentFlags::kNoCreateInspector);
    std::vector<std::string> errors;
    std::unique_ptr<node::CommonEnvironmentSetup> setup = node::CommonEnvironmentSetup::Create(
        platform.get(), &errors, init->args(), init->exec_args(), env_flags);
    if (!setup) {
      for (const std::string &e : errors) report(o, RESTY_NODE_LOG_ERR, "Node.js: " + e);
      rc = 1;
    } else {
      v8::Isolate *isolate = setup->isolate();
      node::Environment *env = setup->env();
      v8::Locker locker(isolate);
      v8::Isolate::Scope isolate_scope(isolate);
      v8::HandleScope handle_scope(isolate);
      v8::Context::Scope context_scope(setup->context());

      node::AddLinkedBinding(env, o->binding_name, o->register_binding);
      node::SetProcessExitHandler(
          env, [o](node::Environment *, int code) { o->exit_requested(code); });
      {
        std::lock_guard<std::mutex> lock(g_mutex);
        g_env = env;
        if (g_stop_requested) node::Stop(env);
      }
      v8::MaybeLocal<v8::Value> loaded = node::LoadEnvironment(env, o->bootstrap);
      if (loaded.IsEmpty()) {
        report(o, RESTY_NODE_LOG_ERR, "Node.js: the loader's bootstrap script failed");
        rc = 1;
      } else {
        node::SpinEventLoop(env);
      }
      std::lock_guard<std::mutex> lock(g_mutex);
      g_env = nullptr;
    }
  }
  // `setup` is gone (environment and isolate freed): tear the process-wide state down, as
  // node's own main() does, so nothing of V8 runs when static destructors do.
  v8::V8::Dispose();
  v8::V8::DisposePlatform();
  node::TearDownOncePerProcess();
  return rc;
}

}  // namespace

extern "C" int resty_node_run(const struct resty_node_options *o) {
  try {
    return run(o);
  } catch (const std::exception &e) {
    report(o, RESTY_NODE_LOG_ALERT, std::string("Node.js: C++ exception: ") + e.what());
  } catch (...) {
    report(o, RESTY_NODE_LOG_ALERT, "Node.js: unknown C++ exception");
  }
  return 1;
}

extern "C" void resty_node_stop(void) {
  try {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_stop_requested = true;
    // Thread-safe: marks the environment stopping, terminates running JavaScript and stops
    // the event loop from its own thread.
    if (g_env != nullptr) node::Stop(g_env);
  } catch (...) {
  }
}

namespace {

struct Poll {
  uv_poll_t handle;
  void (*cb)(void *data);
  void *data;
  void (*closed)(void *data);
  void *closed_data;
};

void on_readable(uv_poll_t *handle, int status, int events) {
  Poll *p = reinterpret_cast<Poll *>(handle);
  p->cb(p->data);
}

void on_closed(uv_handle_t *handle) {
  Poll *p = reinterpret_cast<Poll *>(handle);
  void (*closed)(void *) = p->closed;
  void *data = p->closed_data;
  delete p;
  if (closed != nullptr) closed(data);
}

}  // namespace

// Calls `cb(data)` on the loop's thread whenever `fd` is readable (or in error), until
// resty_uv_poll_close. NULL when libuv refuses the fd.
extern "C" void *resty_uv_poll_start(uv_loop_t *loop, int fd, void (*cb)(void *data),
                                     void *data) {
  Poll *p = new (std::nothrow) Poll;
  if (p == nullptr) return nullptr;
  p->cb = cb;
  p->data = data;
  if (uv_poll_init(loop, &p->handle, fd) != 0) {
    delete p;
    return nullptr;
  }
  if (uv_poll_start(&p->handle, UV_READABLE, on_readable) != 0) {
    p->closed = nullptr;
    uv_close(reinterpret_cast<uv_handle_t *>(&p->handle), on_closed);
    return nullptr;
  }
  return p;
}

// Stops the callbacks at once; once libuv closed the handle (a later turn of the loop) it is
// freed and `closed(data)` runs.
extern "C" void resty_uv_poll_close(void *poll, void (*closed)(void *data), void *data) {
  Poll *p = static_cast<Poll *>(poll);
  p->closed = closed;
  p->closed_data = data;
  uv_poll_stop(&p->handle);
  uv_close(reinterpret_cast<uv_handle_t *>(&p->handle), on_closed);
}
