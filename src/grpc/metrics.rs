//! TEMPORARY stand-in (replaced by the real instruments).
use std::sync::Arc;
use std::time::Duration;
#[derive(Default)]
pub struct Metrics;
impl Metrics { pub fn target(&self, _t: &str) -> Arc<TargetMetrics> { Arc::new(TargetMetrics) } }
pub struct TargetMetrics;
impl TargetMetrics { pub fn method(&self, _p: &str) -> Arc<MethodMetrics> { Arc::new(MethodMetrics) } }
pub struct MethodMetrics;
impl MethodMetrics {
    pub fn attempt_started(&self) {}
    pub fn attempt_done(&self, _c: tonic::Code, _e: Duration) {}
    pub fn call_done(&self, _c: tonic::Code, _e: Duration) {}
    pub fn retried(&self) {} pub fn hedged(&self) {} pub fn throttled(&self) {}
}
