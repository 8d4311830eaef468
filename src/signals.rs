//! Signals: update the state with one request and read its feature vector.

use smallvec::SmallVec;

use crate::config::SignalsConfig;
use crate::extract::Identities;
use crate::features::{Feature, Features};
use crate::runtime::Route;
use crate::state::{combine, KeyHasher, KeyKind, LimitCheck, LimitOutcome, Observation, StateError, StateStore, KINDS};

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
    signals: &SignalsConfig,
    ids: &Identities,
    ts_ms: u64,
) -> Result<Signals, StateError> {
    let obs = plan(hasher, route, signals, ids, ts_ms);
    let r = state.observe(&obs).await?;
    let mut f = Features::default();
    let windows = |f: &mut Features, first: Feature, values: &[u32]| {
        for (i, v) in values.iter().enumerate() {
            f.0[first as usize + i] = f64::from(*v);
        }
    };
    let count_features = [
        Feature::UserReqs1s,
        Feature::DeviceReqs1s,
        Feature::IpReqs1s,
        Feature::SubnetReqs1s,
        Feature::PhoneReqs1s,
        Feature::CampaignReqs1s,
        Feature::RouteReqs1s,
        Feature::InviterReqs1s,
    ];
    for (kind, first) in count_features.into_iter().enumerate() {
        windows(&mut f, first, &r.counts[kind]);
    }
    let distinct_features = [
        Feature::UsersPerDevice1h,
        Feature::DevicesPerUser1h,
        Feature::UsersPerIp1h,
        Feature::UsersPerSubnet1h,
        Feature::UsersPerPhone1h,
        Feature::UsersPerInviter1h,
        Feature::UsersPerPay1h,
        Feature::UsersPerAddress1h,
    ];
    for (rel, first) in distinct_features.into_iter().enumerate() {
        windows(&mut f, first, &r.distinct[rel]);
    }
    let linked = [r.distinct[0][1], r.distinct[4][1], r.distinct[6][1], r.distinct[7][1]];
    f.set(
        Feature::LinkedAccounts24h,
        f64::from(linked.into_iter().max().unwrap_or(0)),
    );
    windows(&mut f, Feature::DeviceNewUsers1h, &r.new_users[0]);
    windows(&mut f, Feature::IpNewUsers1h, &r.new_users[1]);
    f.set(Feature::IpNewDevices1m, f64::from(r.ip_new_devices));
    let [here, all, networks] = r.wifi_new_devices;
    f.set(Feature::SubnetNewWifiDevices1m, f64::from(here));
    if all > 0 {
        f.set(
            Feature::SubnetNewWifiLift1m,
            f64::from(here) * f64::from(networks) / f64::from(all),
        );
    }
    windows(&mut f, Feature::SubnetNewUsers1h, &r.new_users[2]);
    windows(&mut f, Feature::UaNewDevices1h, &r.ua_new_devices);
    windows(&mut f, Feature::UasPerDevice1h, &r.uas_per_device);
    windows(&mut f, Feature::PrefixNewDevices1h, &r.prefix_new_devices);
    let [ua_hasty, ua_first, route_hasty, route_first] = r.first_requests;
    if ua_first > 0 && r.browse[0] <= 1 {
        let share = (f64::from(ua_hasty) / f64::from(ua_first)).min(1.0);
        // Against every other user agent on the route, so that a crew making most of a
        // quiet route's traffic does not set its own baseline.
        let others_first = route_first.saturating_sub(ua_first);
        let lift = if others_first > 0 {
            let others = f64::from(route_hasty.saturating_sub(ua_hasty)) / f64::from(others_first);
            (share / others.max(0.01)).min(100.0)
        } else {
            0.0
        };
        f.set(Feature::UaHastyDevices1h, f64::from(ua_hasty));
        f.set(Feature::UaHastyShare1h, share);
        f.set(Feature::UaHastyLift1h, lift);
    }
    let [cluster, cluster_new, cluster_claimed] = r.cluster.map(f64::from);
    f.set(Feature::ClusterAccounts24h, cluster);
    f.set(Feature::ClusterNewAccounts1h, cluster_new);
    f.set(Feature::ClusterNewShare1h, (cluster_new / cluster.max(1.0)).min(1.0));
    f.set(Feature::ClusterClaimed24h, cluster_claimed);
    let [_, assists_1m, assists_1h, _] = r.counts[KeyKind::Inviter as usize];
    let lull = assists_1h.saturating_sub(assists_1m) == 0;
    f.set(
        Feature::InviterBurstAfterLull,
        if lull { f64::from(assists_1m) } else { 0.0 },
    );
    windows(&mut f, Feature::SubnetsPerDevice1h, &r.subnets_per_device);
    windows(&mut f, Feature::InviterNewInvitees1h, &r.inviter_new_invitees);
    let fan_out = f64::from(r.distinct[5][0].max(1));
    f.set(
        Feature::InviterNewShare1h,
        (f64::from(r.inviter_new_invitees[0]) / fan_out).min(1.0),
    );
    let blind = r.inviter_blind_invitees[0];
    f.set(Feature::InviterBlindInvitees1h, f64::from(blind));
    f.set(Feature::InviterBlindShare1h, (f64::from(blind) / fan_out).min(1.0));
    let invitee_subnets = r.inviter_invitee_subnets[1];
    f.set(Feature::InviterInviteeSubnets24h, f64::from(invitee_subnets));
    let invitees = r.distinct[5][1];
    f.set(
        Feature::InviterSubnetShare24h,
        if invitees > 0 && invitee_subnets > 0 {
            (1.0 - f64::from(invitee_subnets) / f64::from(invitees)).max(0.0)
        } else {
            0.0
        },
    );
    let flag = |b: bool| f64::from(u8::from(b));
    f.set(Feature::DeviceLineHandoff, flag(r.device_line_handoff));
    f.set(Feature::InviterOnDevice, flag(r.inviter_on_device));
    f.set(Feature::InviterOnSubnet, flag(r.inviter_on_subnet));
    f.set(Feature::ReferralRing, flag(r.referral_ring));
    f.set(Feature::InviterIsInvitee, flag(r.inviter_is_invitee));
    f.set(Feature::InviterAgeS, r.inviter_age_ms.unwrap_or(0) as f64 / 1_000.0);
    windows(&mut f, Feature::UserBrowse1h, &r.browse);
    f.set(Feature::UserRegularGaps, f64::from(r.user_regular));
    f.set(Feature::DeviceRegularGaps, f64::from(r.device_regular));
    f.set(Feature::UserAgeS, r.user_age_ms.unwrap_or(0) as f64 / 1_000.0);
    f.set(Feature::DeviceAgeS, r.device_age_ms.unwrap_or(0) as f64 / 1_000.0);
    f.set(Feature::HasUser, flag(ids.user.is_some()));
    f.set(Feature::HasDevice, flag(ids.device.is_some()));
    f.set(Feature::HasPhone, flag(ids.phone.is_some()));
    f.set(Feature::HasAppVersion, flag(ids.app_version.is_some()));
    f.set(
        Feature::AppVersionStale,
        flag(ids.app_version.as_deref().is_some_and(|v| stale(v, signals))),
    );
    f.set(Feature::HasUserAgent, flag(ids.user_agent.is_some()));
    f.set(Feature::OnWifi, flag(ids.wifi));
    f.set(Feature::HasInviter, flag(ids.inviter.is_some()));
    f.set(Feature::Amount, ids.amount.unwrap_or(0.0));
    f.set(
        Feature::AmountJustAbove,
        flag(ids.amount.is_some_and(|a| just_above(a, signals))),
    );

    let mut outcomes = r.limits.into_iter();
    let limits = route
        .limits
        .iter()
        .map(|l| obs.keys[l.key_kind as usize].and_then(|_| outcomes.next()))
        .collect();
    Ok(Signals { features: f, limits })
}

/// The hashed leading `len` bytes of a device id at least twice that long (`None` when
/// shorter, or `len` is 0: a short id has no prefix worth the name).
fn device_prefix(hasher: &KeyHasher, device: &str, len: usize) -> Option<u64> {
    let bytes = device.as_bytes();
    (len > 0 && bytes.len() >= 2 * len).then(|| hasher.key_of(KeyKind::Device, &(0x9Fu8, &bytes[..len])))
}

/// Older than the oldest release in use, or not a dotted version at all.
fn stale(version: &str, signals: &SignalsConfig) -> bool {
    let floor = &signals.min_app_version;
    if floor.text.is_empty() {
        return false;
    }
    match (version_parts(version), floor.parts) {
        (Some(v), Some(min)) => v < min,
        _ => true,
    }
}

/// "3.12.1" → [3, 12, 1, 0] (up to four numeric parts). One pass over the bytes: it runs
/// on every request that carries a version.
pub(crate) fn version_parts(v: &str) -> Option<[u32; 4]> {
    let mut out = [0u32; 4];
    let mut part = 0;
    let mut digits = 0;
    for &b in v.trim().as_bytes() {
        match b {
            b'0'..=b'9' => {
                out[part] = out[part].checked_mul(10)?.checked_add(u32::from(b - b'0'))?;
                digits += 1;
            }
            b'.' if digits > 0 && part < 3 => {
                part += 1;
                digits = 0;
            }
            _ => return None,
        }
    }
    (digits > 0).then_some(out)
}

/// At or within `just_above_ratio` above one of the campaign's coupon thresholds.
fn just_above(amount: f64, signals: &SignalsConfig) -> bool {
    signals
        .order_thresholds
        .iter()
        .any(|t| amount >= *t && amount <= t * (1.0 + signals.just_above_ratio))
}

/// The state operations of one request: its keys and the limits that apply.
pub fn plan(hasher: &KeyHasher, route: &Route, signals: &SignalsConfig, ids: &Identities, ts_ms: u64) -> Observation {
    let text = |kind, v: &Option<String>| v.as_deref().map(|v| hasher.key(kind, v));
    let mut keys = [None; KINDS];
    keys[KeyKind::User as usize] = text(KeyKind::User, &ids.user);
    keys[KeyKind::Device as usize] = text(KeyKind::Device, &ids.device);
    keys[KeyKind::Ip as usize] = Some(hasher.key_of(KeyKind::Ip, &ids.ip));
    keys[KeyKind::Subnet as usize] = Some(hasher.key_of(KeyKind::Subnet, &ids.subnet));
    keys[KeyKind::Phone as usize] = text(KeyKind::Phone, &ids.phone);
    keys[KeyKind::Campaign as usize] = text(KeyKind::Campaign, &ids.campaign);
    keys[KeyKind::Route as usize] = Some(route.key);
    keys[KeyKind::Inviter as usize] = text(KeyKind::Inviter, &ids.inviter);
    keys[KeyKind::PayAccount as usize] = text(KeyKind::PayAccount, &ids.pay_account);
    keys[KeyKind::Address as usize] = text(KeyKind::Address, &ids.address);
    keys[KeyKind::UserAgent as usize] = text(KeyKind::UserAgent, &ids.user_agent);
    let limits = route
        .limits
        .iter()
        .filter_map(|l| {
            keys[l.key_kind as usize].map(|k| LimitCheck {
                key: combine(l.id, k),
                quota: l.quota,
                kind: l.key_kind,
                first_of_kind: l.first_of_kind,
            })
        })
        .collect();
    Observation {
        ts_ms,
        route: route.key,
        keys,
        inviter_as_user: text(KeyKind::User, &ids.inviter),
        device_prefix: ids
            .device
            .as_deref()
            .and_then(|d| device_prefix(hasher, d, signals.device_prefix_len)),
        browse: !route.scored,
        wifi: ids.wifi,
        new_account_ms: signals.new_account_s * 1_000,
        limits,
        timeout_ms: route.state_timeout_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::version_parts;

    #[test]
    fn versions_parse_as_dotted_numbers() {
        assert_eq!(version_parts("3.12.1"), Some([3, 12, 1, 0]));
        assert_eq!(version_parts(" 4.0.0.17 "), Some([4, 0, 0, 17]));
        assert_eq!(version_parts("10"), Some([10, 0, 0, 0]));
        assert_eq!(version_parts("007.1"), Some([7, 1, 0, 0]));
        for bad in [
            "",
            " ",
            ".",
            "3.",
            ".3",
            "3..1",
            "1.2.3.4.5",
            "3.9.0-beta",
            "v3.9",
            "3. 9",
            "+3.9",
            "99999999999.1",
        ] {
            assert_eq!(version_parts(bad), None, "{bad:?}");
        }
        assert!(version_parts("3.8.9") < version_parts("3.9.0"));
        assert!(version_parts("3.10") > version_parts("3.9.9"));
    }
}
