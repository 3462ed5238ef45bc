//! The Java side (`resty.ffi.*`), compiled by build.rs and embedded here: defined into the
//! system class loader when the JVM starts, before any user class loads, so user classes (and
//! the class loaders of `?` loads, which delegate `resty.ffi.` to it) resolve these very classes,
//! whose natives are registered below. A `resty-ffi.jar` on `CLASSPATH` (to compile against) is
//! shadowed by them.

use jni::objects::{Global, JClass, JClassLoader};
use jni::strings::JNIString;
use jni::Env;

use crate::natives;

include!(concat!(env!("OUT_DIR"), "/classes.rs"));

/// `resty.ffi.Boot`, which runs each init call.
pub struct Boot {
    pub class: Global<JClass<'static>>,
}

/// Defines the embedded classes, registers `resty.ffi.Host`'s natives and returns `Boot`.
pub fn install(env: &mut Env) -> jni::errors::Result<Boot> {
    let loader = JClassLoader::get_system_class_loader(env)?;
    let mut host = None;
    let mut boot = None;
    for (name, bytes) in CLASSES {
        let class = env.define_class(Some(JNIString::from(*name)), &loader, bytes)?;
        match *name {
            "resty/ffi/Host" => host = Some(class),
            "resty/ffi/Boot" => boot = Some(class),
            _ => {}
        }
    }
    let (Some(host), Some(boot)) = (host, boot) else {
        return Err(jni::errors::Error::NullPtr(
            "resty.ffi.Host or resty.ffi.Boot not embedded",
        ));
    };
    // SAFETY: `natives::methods()` pairs each of Host's static native methods with a function of
    // the matching JNI signature (see that module).
    unsafe { env.register_native_methods(&host, &natives::methods())? };
    Ok(Boot {
        class: env.new_global_ref(boot)?,
    })
}
