//! Signals: update the state with one request and read its feature vector.

use smallvec::SmallVec;

use crate::extract::Identities;
use crate::features::{Feature, Features};
use crate::runtime::Route;
use crate::state::{combine, KeyHasher, KeyKind, LimitCheck, LimitOutcome, Observation, StateError, StateStore};

/// Features of the request, and the outcome of each of the route's limits
/// (`None` where the request lacks the limit's key).
#[derive(Debug, Clone)]
pub struct Signals {
    pub features: Features,
    pub limits: SmallVec<[Option<LimitOutcome>; 4]>,
}

/// Counts the request at `ts_ms` and returns its signals.
pub async fn observe<S: StateStore>(
    state: &S,
    hasher: &KeyHasher,
    route: &Route,
    ids: &Identities,
    ts_ms: u64,
) -> Result<Signals, StateError> {
    let obs = plan(hasher, route, ids, ts_ms);
    let readout = state.observe(&obs).await?;
    let mut features = Features::default();
    let count_features = [
        Feature::UserReqs1s,
        Feature::DeviceReqs1s,
        Feature::IpReqs1s,
        Feature::SubnetReqs1s,
        Feature::PhoneReqs1s,
        Feature::CampaignReqs1s,
        Feature::RouteReqs1s,
    ];
    for (kind, first) in count_features.iter().enumerate() {
        for w in 0..4 {
            features.0[*first as usize + w] = f64::from(readout.counts[kind][w]);
        }
    }
    let distinct_features = [
        Feature::UsersPerDevice1h,
        Feature::DevicesPerUser1h,
        Feature::UsersPerIp1h,
        Feature::UsersPerSubnet1h,
        Feature::UsersPerPhone1h,
    ];
    for (rel, first) in distinct_features.iter().enumerate() {
        for w in 0..2 {
            features.0[*first as usize + w] = f64::from(readout.distinct[rel][w]);
        }
    }
    features.set(Feature::UserAgeS, readout.user_age_ms.unwrap_or(0) as f64 / 1_000.0);
    features.set(Feature::DeviceAgeS, readout.device_age_ms.unwrap_or(0) as f64 / 1_000.0);
    features.set(Feature::HasUser, f64::from(u8::from(ids.user.is_some())));
    features.set(Feature::HasDevice, f64::from(u8::from(ids.device.is_some())));
    features.set(Feature::HasPhone, f64::from(u8::from(ids.phone.is_some())));
    features.set(Feature::Amount, ids.amount.unwrap_or(0.0));

    let mut outcomes = readout.limits.into_iter();
    let limits = route
        .limits
        .iter()
        .map(|l| obs.keys[l.key_kind as usize].and_then(|_| outcomes.next()))
        .collect();
    Ok(Signals { features, limits })
}

/// The state operations of one request: its keys and the limits that apply.
pub fn plan(hasher: &KeyHasher, route: &Route, ids: &Identities, ts_ms: u64) -> Observation {
    let text = |kind, v: &Option<String>| v.as_deref().map(|v| hasher.key(kind, v));
    let mut keys = [None; 7];
    keys[KeyKind::User as usize] = text(KeyKind::User, &ids.user);
    keys[KeyKind::Device as usize] = text(KeyKind::Device, &ids.device);
    keys[KeyKind::Ip as usize] = Some(hasher.key_of(KeyKind::Ip, &ids.ip));
    keys[KeyKind::Subnet as usize] = Some(hasher.key_of(KeyKind::Subnet, &ids.subnet));
    keys[KeyKind::Phone as usize] = text(KeyKind::Phone, &ids.phone);
    keys[KeyKind::Campaign as usize] = text(KeyKind::Campaign, &ids.campaign);
    keys[KeyKind::Route as usize] = Some(route.key);
    let limits = route
        .limits
        .iter()
        .filter_map(|l| keys[l.key_kind as usize].map(|k| LimitCheck { key: combine(l.id, k), quota: l.quota }))
        .collect();
    Observation { ts_ms, route: route.key, keys, limits }
}
