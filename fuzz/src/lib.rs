//! Shared pieces of the fuzz targets in `fuzz_targets/`.
//!
//! * [`requests`]: every request message of the three services, structured from
//!   fuzzer bytes;
//! * [`calls`]: whole HTTP requests (pRPC or gRPC) around them;
//! * [`core_services`]: the server's translation and writer checks over
//!   core pools, with the log and snapshot round trips checked;
//! * [`inprocess`]: the real server (store, pool writers, event log,
//!   metrics, router) driven in process.

pub mod calls;
pub mod core_services;
pub mod inprocess;
pub mod requests;

/// A single-threaded tokio runtime for one fuzz process. The pool writers
/// and the event log run as tasks on it; file I/O on its blocking threads.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("cannot start a tokio runtime: {e}"),
        }
    })
}
