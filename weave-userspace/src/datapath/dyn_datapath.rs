//! The data path behind a trait object: the part of [`Datapath`] that the node (and through
//! it the HTTP API and the Docker integration) uses, for any data path, without a type
//! parameter. One blanket implementation boxes the futures; nothing implements it by hand.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use super::{AttachRequest, Datapath, DatapathCounters, DatapathError, Endpoint};
use crate::net::Ipv4Cidr;

/// A boxed future of a [`DynDatapath`] call.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the node asks of the data path: endpoints, exposed addresses, counters.
/// See the methods of the same names on [`Datapath`].
pub trait DynDatapath: Send + Sync + 'static {
    fn attach_endpoint(
        &self,
        request: AttachRequest,
    ) -> BoxFuture<'_, Result<Endpoint, DatapathError>>;
    fn detach_endpoint(&self, netns: PathBuf) -> BoxFuture<'_, Result<Endpoint, DatapathError>>;
    fn restore_endpoint(&self, endpoint: Endpoint) -> BoxFuture<'_, Result<(), DatapathError>>;
    fn endpoints(&self) -> Vec<Endpoint>;
    fn expose(&self, address: Ipv4Cidr) -> BoxFuture<'_, Result<(), DatapathError>>;
    fn hide(&self, address: Ipv4Cidr) -> BoxFuture<'_, Result<(), DatapathError>>;
    fn counters(&self) -> Result<DatapathCounters, DatapathError>;
    fn container_mtu(&self) -> u32;
}

impl<D: Datapath> DynDatapath for D {
    fn attach_endpoint(
        &self,
        request: AttachRequest,
    ) -> BoxFuture<'_, Result<Endpoint, DatapathError>> {
        Box::pin(Datapath::attach(self, request))
    }

    fn detach_endpoint(&self, netns: PathBuf) -> BoxFuture<'_, Result<Endpoint, DatapathError>> {
        Box::pin(Datapath::detach(self, netns))
    }

    fn restore_endpoint(&self, endpoint: Endpoint) -> BoxFuture<'_, Result<(), DatapathError>> {
        Box::pin(Datapath::restore_endpoint(self, endpoint))
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        Datapath::endpoints(self)
    }

    fn expose(&self, address: Ipv4Cidr) -> BoxFuture<'_, Result<(), DatapathError>> {
        Box::pin(Datapath::expose(self, address))
    }

    fn hide(&self, address: Ipv4Cidr) -> BoxFuture<'_, Result<(), DatapathError>> {
        Box::pin(Datapath::hide(self, address))
    }

    fn counters(&self) -> Result<DatapathCounters, DatapathError> {
        Datapath::counters(self)
    }

    fn container_mtu(&self) -> u32 {
        Datapath::container_mtu(self)
    }
}
