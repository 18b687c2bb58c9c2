//! Building blocks of `natgw bench`: the network per setup, the AF_PACKET traffic
//! generator with its frames and flow patterns, counters read where packets arrive, and
//! the far side's TCP and UDP services.

pub mod counter;
pub mod flows;
pub mod frames;
pub mod generator;
pub mod packet_socket;
pub mod services;
pub mod topology;
