//! What natgw records between commands, per network namespace, so that `down` can
//! restore exactly what `up` changed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::RouteSpec;

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordedState {
    /// Sysctl values as they were before natgw first changed them.
    pub sysctls: BTreeMap<String, String>,
    /// Routes natgw added.
    pub routes: Vec<RouteSpec>,
    /// The table as the kernel listed it right after natgw installed it; a different
    /// listing later means someone changed it (drift).
    pub table_listing: Option<String>,
}
