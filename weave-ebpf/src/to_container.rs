//! `to_container` (tcx egress of each container veth's host end): frames the bridge hands to
//! a container (floods, the kernel VXLAN slow path, answered ARP) pass only when their source
//! lies in one of the container's subnets.

use aya_ebpf::{macros::classifier, programs::TcContext};
use weave_ebpf_common::{counters::Reason, headers::ETH_HLEN};

use crate::{
    frame::{ipv4_addresses, own_ifindex, TC_OK, TC_SHOT},
    isolation::may_deliver,
    maps::{config, count},
};

#[classifier]
pub fn to_container(ctx: TcContext) -> i32 {
    if config().is_none() {
        return TC_OK;
    }
    let len = ctx.len();
    let allowed = ctx
        .load::<[u8; ETH_HLEN]>(0)
        .ok()
        .and_then(|eth| ipv4_addresses(&ctx, u16::from_be_bytes([eth[12], eth[13]])))
        .is_some_and(|(src, _)| may_deliver(own_ifindex(&ctx), src));
    if allowed {
        TC_OK
    } else {
        count(Reason::EgressDropIsolated, len);
        TC_SHOT
    }
}
