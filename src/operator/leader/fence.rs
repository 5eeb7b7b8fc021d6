//! The fence: a tower layer under the client that refuses every write
//! once this replica may no longer be the leader.

use super::*;

/// Whether this replica may still act as the leader: until `renew_deadline`
/// after the start of its last successful renewal, on the monotonic clock
/// (which keeps counting while the process is stopped). Standbys wait a
/// longer `lease_duration` before they take over.
#[derive(Clone, Debug)]
pub struct Fence(Arc<std::sync::Mutex<Instant>>);

impl Fence {
    pub(super) fn until(until: Instant) -> Self {
        Self(Arc::new(std::sync::Mutex::new(until)))
    }

    pub(super) fn extend(&self, until: Instant) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = until;
    }

    pub(super) fn close(&self) {
        self.extend(Instant::now());
    }

    /// Whether the Lease is surely still ours.
    pub fn holds(&self) -> bool {
        Instant::now() < *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A layer for [`kube::client::ClientBuilder::with_layer`]: requests
    /// fail without being sent once the fence no longer holds.
    pub fn layer(&self) -> FenceLayer {
        FenceLayer(self.clone())
    }
}

/// See [`Fence::layer`].
#[derive(Clone, Debug)]
pub struct FenceLayer(Fence);

impl<S> tower::Layer<S> for FenceLayer {
    type Service = Fenced<S>;

    fn layer(&self, inner: S) -> Fenced<S> {
        Fenced {
            inner,
            fence: self.0.clone(),
        }
    }
}

/// A client service that sends a request only while the [`Fence`] holds.
#[derive(Clone, Debug)]
pub struct Fenced<S> {
    pub(super) inner: S,
    pub(super) fence: Fence,
}

/// The error of a request the fence kept back.
#[derive(Debug, thiserror::Error)]
#[error("not sent: this replica may no longer hold the leader Lease")]
pub struct FencedOff;

impl<S, R> tower::Service<R> for Fenced<S>
where
    S: tower::Service<R>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<S::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        if !self.fence.holds() {
            return Box::pin(std::future::ready(Err(FencedOff.into())));
        }
        let response = self.inner.call(request);
        Box::pin(async move { response.await.map_err(Into::into) })
    }
}
