//! The host's own addresses on the bridge: the local service address every container
//! reaches (the DNS server's), and addresses given by `expose` with masquerading for their
//! subnets.

use std::net::Ipv4Addr;

use super::bridge::BRIDGE_NAME;
use super::EbpfDatapath;
use crate::datapath::{DatapathError, Endpoint};
use crate::mesh::peer_name::PeerName;
use crate::net::Ipv4Cidr;
use crate::net::Ipv4Net;

/// The main routing table.
pub(super) const MAIN_TABLE: u32 = 254;

/// Routing table holding the way back from the service address to the containers (over
/// the bridge), and the priority of the rule that selects it for that source address.
pub const SERVICE_TABLE: u32 = 6783;
pub const SERVICE_RULE_PRIORITY: u32 = 6783;

/// The subnets of exposed addresses, without repeats.
pub(super) fn exposed_subnets(exposed: &[Ipv4Cidr]) -> Vec<Ipv4Net> {
    let mut subnets: Vec<Ipv4Net> = exposed.iter().map(|a| Ipv4Net::of(*a)).collect();
    subnets.sort();
    subnets.dedup();
    subnets
}

/// The bridge's MAC once it carries the service address: the peer name's bytes made a
/// locally administered unicast address, so it stays the same across restarts and ports.
pub(super) fn service_mac(peer_name: PeerName) -> [u8; 6] {
    let mut mac = peer_name.bytes();
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

fn host_route(addr: Ipv4Addr) -> Ipv4Cidr {
    Ipv4Cidr {
        addr,
        prefix_len: 32,
    }
}

impl EbpfDatapath {
    pub(super) async fn expose_address(&self, address: Ipv4Cidr) -> Result<(), DatapathError> {
        self.nl.add_address(self.bridge_index, address).await?;
        let subnets = {
            let mut st = self.lock();
            if !st.exposed.contains(&address) {
                st.exposed.push(address);
            }
            exposed_subnets(&st.exposed)
        };
        crate::datapath::nat::apply(&subnets, BRIDGE_NAME)
    }

    pub(super) async fn hide_address(&self, address: Ipv4Cidr) -> Result<(), DatapathError> {
        self.nl.del_address(self.bridge_index, address).await?;
        let subnets = {
            let mut st = self.lock();
            st.exposed.retain(|a| *a != address);
            exposed_subnets(&st.exposed)
        };
        crate::datapath::nat::apply(&subnets, BRIDGE_NAME)
    }

    /// The service address, if one is set.
    pub(super) fn service_address(&self) -> Option<Ipv4Addr> {
        self.service.get().map(|s| s.0)
    }

    pub(super) async fn set_service_address(&self, addr: Ipv4Addr) -> Result<(), DatapathError> {
        if let Some((old, _)) = self.service.get() {
            return if *old == addr {
                Ok(())
            } else {
                Err(DatapathError::Netlink(format!(
                    "the service address is {old} already"
                )))
            };
        }
        // A MAC of our own for the bridge: set once, the bridge keeps it whatever ports come
        // and go, so the ARP answer stays true.
        let mac = service_mac(self.settings.peer_name);
        self.nl.set_mac(self.bridge_index, mac).await?;
        self.nl
            .add_address(self.bridge_index, host_route(addr))
            .await?;
        // Answers from the service address go back over the bridge, whatever the main table
        // says about container addresses.
        self.nl
            .replace_device_route(Ipv4Addr::UNSPECIFIED, 0, self.bridge_index, SERVICE_TABLE)
            .await?;
        self.nl
            .add_source_rule(addr, SERVICE_TABLE, SERVICE_RULE_PRIORITY)
            .await?;
        // Containers' ARP for it is answered by the TX program and never floods to peers
        // (whose bridges carry the same address); subnet isolation lets every container
        // reach it.
        if let Some(programs) = self.lock().programs.as_mut() {
            programs.maps.add_neighbour(addr, mac)?;
            programs
                .maps
                .update_config(|config| config.service_ipv4 = addr.octets())?;
        }
        let _ = self.service.set((addr, mac));
        let endpoints = self.lock().endpoints.clone();
        for e in &endpoints {
            self.service_neighbours(e, true).await?;
        }
        tracing::info!("service address {addr} on bridge {BRIDGE_NAME}");
        Ok(())
    }

    /// Adds (or removes) permanent neighbour entries on the bridge for an endpoint's
    /// addresses, so answers from the service address never ARP (an ARP from the bridge
    /// would flood to every peer, and teach them our bridge's MAC for the service address).
    pub(super) async fn service_neighbours(
        &self,
        endpoint: &Endpoint,
        add: bool,
    ) -> Result<(), DatapathError> {
        if self.service.get().is_none() {
            return Ok(());
        }
        for a in &endpoint.addresses {
            if add {
                self.nl
                    .replace_neighbour(self.bridge_index, a.addr, endpoint.mac)
                    .await?;
            } else {
                self.nl.del_neighbour(self.bridge_index, a.addr).await?;
            }
        }
        Ok(())
    }

    /// Takes the service address, its rule and its route away (at shutdown; best effort).
    pub(super) async fn remove_service_address(&self) {
        let Some((addr, _)) = self.service.get().copied() else {
            return;
        };
        let _ = self
            .nl
            .del_source_rule(addr, SERVICE_TABLE, SERVICE_RULE_PRIORITY)
            .await;
        let _ = self
            .nl
            .del_device_route(Ipv4Addr::UNSPECIFIED, 0, self.bridge_index, SERVICE_TABLE)
            .await;
        let _ = self
            .nl
            .del_address(self.bridge_index, host_route(addr))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_addresses_of_one_subnet_masquerade_it_once() {
        let exposed: Vec<Ipv4Cidr> = ["10.2.1.1/24", "10.9.0.1/16", "10.2.1.7/24"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let subnets: Vec<String> = exposed_subnets(&exposed)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(subnets, ["10.2.1.0/24", "10.9.0.0/16"]);
        assert!(exposed_subnets(&[]).is_empty());
    }

    #[test]
    fn the_service_mac_is_a_locally_administered_unicast_address_from_the_peer_name() {
        let name: PeerName = "01:00:5e:12:34:56".parse().unwrap();
        assert_eq!(service_mac(name), [0x02, 0x00, 0x5e, 0x12, 0x34, 0x56]);
        let name: PeerName = "ae:11:22:33:44:55".parse().unwrap();
        assert_eq!(service_mac(name), [0xae, 0x11, 0x22, 0x33, 0x44, 0x55]);
    }
}
