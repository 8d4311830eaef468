//! The one named, versioned feature list shared by rules, the audit record and (later) the model.
//!
//! Serving and training read features through this table only, so a feature can never
//! mean one thing to a rule and another to the classifier.

/// Bumped whenever a feature is added, removed, renamed or changes meaning.
pub const FEATURE_SET_VERSION: &str = "rg-features-9";

macro_rules! features {
    ($( $variant:ident => $name:literal, $window:literal, $meaning:literal; )*) => {
        /// A feature, by position in the feature vector.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum Feature { $( $variant, )* }

        /// Every feature in vector order.
        pub const ALL: &[Feature] = &[ $( Feature::$variant, )* ];

        impl Feature {
            /// The name used in rules, model files and docs.
            pub const fn name(self) -> &'static str {
                match self { $( Feature::$variant => $name, )* }
            }
            /// The window the feature covers (`-` when it has none).
            pub const fn window(self) -> &'static str {
                match self { $( Feature::$variant => $window, )* }
            }
            /// One line a security engineer understands.
            pub const fn meaning(self) -> &'static str {
                match self { $( Feature::$variant => $meaning, )* }
            }
        }
    };
}

features! {
    UserReqs1s => "user_reqs_1s", "1 s", "requests by this account on this route";
    UserReqs1m => "user_reqs_1m", "1 min", "requests by this account on this route";
    UserReqs1h => "user_reqs_1h", "1 h", "requests by this account on this route";
    UserReqs24h => "user_reqs_24h", "24 h", "requests by this account on this route";
    DeviceReqs1s => "device_reqs_1s", "1 s", "requests from this device on this route";
    DeviceReqs1m => "device_reqs_1m", "1 min", "requests from this device on this route";
    DeviceReqs1h => "device_reqs_1h", "1 h", "requests from this device on this route";
    DeviceReqs24h => "device_reqs_24h", "24 h", "requests from this device on this route";
    IpReqs1s => "ip_reqs_1s", "1 s", "requests from this client IP on this route";
    IpReqs1m => "ip_reqs_1m", "1 min", "requests from this client IP on this route";
    IpReqs1h => "ip_reqs_1h", "1 h", "requests from this client IP on this route";
    IpReqs24h => "ip_reqs_24h", "24 h", "requests from this client IP on this route";
    SubnetReqs1s => "subnet_reqs_1s", "1 s", "requests from this /24 (IPv4) or /64 (IPv6) on this route";
    SubnetReqs1m => "subnet_reqs_1m", "1 min", "requests from this /24 or /64 on this route";
    SubnetReqs1h => "subnet_reqs_1h", "1 h", "requests from this /24 or /64 on this route";
    SubnetReqs24h => "subnet_reqs_24h", "24 h", "requests from this /24 or /64 on this route";
    PhoneReqs1s => "phone_reqs_1s", "1 s", "requests carrying this phone hash on this route";
    PhoneReqs1m => "phone_reqs_1m", "1 min", "requests carrying this phone hash on this route";
    PhoneReqs1h => "phone_reqs_1h", "1 h", "requests carrying this phone hash on this route";
    PhoneReqs24h => "phone_reqs_24h", "24 h", "requests carrying this phone hash on this route";
    CampaignReqs1s => "campaign_reqs_1s", "1 s", "requests for this campaign on this route";
    CampaignReqs1m => "campaign_reqs_1m", "1 min", "requests for this campaign on this route";
    CampaignReqs1h => "campaign_reqs_1h", "1 h", "requests for this campaign on this route";
    CampaignReqs24h => "campaign_reqs_24h", "24 h", "requests for this campaign on this route";
    RouteReqs1s => "route_reqs_1s", "1 s", "requests on this route from everyone";
    RouteReqs1m => "route_reqs_1m", "1 min", "requests on this route from everyone";
    RouteReqs1h => "route_reqs_1h", "1 h", "requests on this route from everyone";
    RouteReqs24h => "route_reqs_24h", "24 h", "requests on this route from everyone";
    InviterReqs1s => "inviter_reqs_1s", "1 s", "assists for this inviter on this route";
    InviterReqs1m => "inviter_reqs_1m", "1 min", "assists for this inviter on this route";
    InviterReqs1h => "inviter_reqs_1h", "1 h", "assists for this inviter on this route";
    InviterReqs24h => "inviter_reqs_24h", "24 h", "assists for this inviter on this route";
    InviterBurstAfterLull => "inviter_burst_after_lull", "1 min", "assists for this inviter in the last minute when it had none in the hour before (a task was posted), else 0";
    UsersPerDevice1h => "users_per_device_1h", "1 h", "distinct accounts seen on this device (any route)";
    UsersPerDevice24h => "users_per_device_24h", "24 h", "distinct accounts seen on this device (any route)";
    DevicesPerUser1h => "devices_per_user_1h", "1 h", "distinct devices this account used (any route)";
    DevicesPerUser24h => "devices_per_user_24h", "24 h", "distinct devices this account used (any route)";
    UsersPerIp1h => "users_per_ip_1h", "1 h", "distinct accounts seen from this client IP (any route)";
    UsersPerIp24h => "users_per_ip_24h", "24 h", "distinct accounts seen from this client IP (any route)";
    UsersPerSubnet1h => "users_per_subnet_1h", "1 h", "distinct accounts seen from this /24 or /64 (any route)";
    UsersPerSubnet24h => "users_per_subnet_24h", "24 h", "distinct accounts seen from this /24 or /64 (any route)";
    UsersPerPhone1h => "users_per_phone_1h", "1 h", "distinct accounts seen with this phone hash (any route)";
    UsersPerPhone24h => "users_per_phone_24h", "24 h", "distinct accounts seen with this phone hash (any route)";
    UsersPerInviter1h => "users_per_inviter_1h", "1 h", "distinct accounts that assisted this inviter (fan-out)";
    UsersPerInviter24h => "users_per_inviter_24h", "24 h", "distinct accounts that assisted this inviter (fan-out)";
    UsersPerPay1h => "users_per_pay_1h", "1 h", "distinct accounts ordering with this payment-account hash";
    UsersPerPay24h => "users_per_pay_24h", "24 h", "distinct accounts ordering with this payment-account hash";
    UsersPerAddress1h => "users_per_address_1h", "1 h", "distinct accounts ordering to this address hash";
    UsersPerAddress24h => "users_per_address_24h", "24 h", "distinct accounts ordering to this address hash";
    SubnetsPerDevice1h => "subnets_per_device_1h", "1 h", "distinct /24 or /64 networks this device came from (IP rotation)";
    SubnetsPerDevice24h => "subnets_per_device_24h", "24 h", "distinct /24 or /64 networks this device came from";
    DeviceLineHandoff => "device_line_handoff", "24 h", "1 when, on Wi-Fi, this device's previous account (last 24 h) was on another Wi-Fi IP: a pooled phone handed between accounts and lines; a family's shared phone changes hands on one line";
    LinkedAccounts24h => "linked_accounts_24h", "24 h", "accounts sharing this request's device, phone, payment account or address (the largest)";
    ClusterAccounts24h => "cluster_accounts_24h", "24 h", "accounts in this account's cluster: linked through shared devices, phones and payment accounts, any number of hops";
    ClusterNewAccounts1h => "cluster_new_accounts_1h", "1 h", "accounts of the cluster that joined it brand new (first seen under an hour before) in the last hour";
    ClusterNewShare1h => "cluster_new_share_1h", "1 h", "cluster_new_accounts_1h / cluster_accounts_24h (0-1): a cluster that appeared at once";
    ClusterClaimed24h => "cluster_claimed_24h", "24 h", "accounts of the cluster that made their first request on this route for this campaign (this one included)";
    DeviceNewUsers1h => "device_new_users_1h", "1 h", "accounts first seen on this device (new registrations on one phone)";
    DeviceNewUsers24h => "device_new_users_24h", "24 h", "accounts first seen on this device (new registrations on one phone)";
    IpNewUsers1h => "ip_new_users_1h", "1 h", "accounts first seen from this client IP";
    IpNewUsers24h => "ip_new_users_24h", "24 h", "accounts first seen from this client IP";
    IpNewDevices1m => "ip_new_devices_1m", "1 min", "devices first seen from this client IP: a rack of new phones starting together behind one line";
    SubnetNewWifiDevices1m => "subnet_new_wifi_devices_1m", "1 min", "devices first seen on Wi-Fi from this /24 or /64: a crew's phones started together on its line, a fresh IP for each account";
    SubnetNewWifiLift1m => "subnet_new_wifi_lift_1m", "1 min", "subnet_new_wifi_devices_1m against the average network that had a device first seen on Wi-Fi in the same minute (count x networks / devices; 0 when none): a flash sale raises every network alike";
    SubnetNewUsers1h => "subnet_new_users_1h", "1 h", "accounts first seen from this /24 or /64";
    SubnetNewUsers24h => "subnet_new_users_24h", "24 h", "accounts first seen from this /24 or /64";
    UaNewDevices1h => "ua_new_devices_1h", "1 h", "devices first seen with this exact user-agent string";
    UaNewDevices24h => "ua_new_devices_24h", "24 h", "devices first seen with this exact user-agent string";
    PrefixNewDevices1h => "prefix_new_devices_1h", "1 h", "devices first seen whose id starts like this one's (signals.device_prefix_len characters): ids made by one generator";
    PrefixNewDevices24h => "prefix_new_devices_24h", "24 h", "devices first seen whose id starts like this one's";
    UasPerDevice1h => "uas_per_device_1h", "1 h", "distinct user-agent strings this device sent (a spoofed or replayed device id)";
    UasPerDevice24h => "uas_per_device_24h", "24 h", "distinct user-agent strings this device sent";
    UaHastyDevices1h => "ua_hasty_devices_1h", "1 h", "for a hasty first request (a device first seen under signals.new_account_s ago, its first request on this route, its account browsed at most once): new devices with this exact user agent that made one here, else 0";
    UaHastyShare1h => "ua_hasty_share_1h", "1 h", "for a hasty first request: ua_hasty_devices_1h / first requests here of new devices with this user agent (0-1), else 0";
    UaHastyLift1h => "ua_hasty_lift_1h", "1 h", "for a hasty first request: ua_hasty_share_1h / the same share of every other user agent on this route (a cloned device profile, not a rush; 0 when there is no other), else 0";
    InviterNewInvitees1h => "inviter_new_invitees_1h", "1 h", "brand-new accounts (see signals.new_account_s) that assisted this inviter";
    InviterNewInvitees24h => "inviter_new_invitees_24h", "24 h", "brand-new accounts that assisted this inviter";
    InviterNewShare1h => "inviter_new_share_1h", "1 h", "share of this inviter's invitees that were brand new (0-1)";
    InviterBlindInvitees1h => "inviter_blind_invitees_1h", "1 h", "assists for this inviter by accounts that had viewed no campaign or item page in the hour before (a task link, not a friend's share card)";
    InviterBlindShare1h => "inviter_blind_share_1h", "1 h", "inviter_blind_invitees_1h / users_per_inviter_1h (0-1)";
    InviterInviteeSubnets24h => "inviter_invitee_subnets_24h", "24 h", "distinct /24 or /64 networks this inviter's invitees assisted from";
    InviterSubnetShare24h => "inviter_subnet_share_24h", "24 h", "1 - invitee networks / invitees (0-1): the inviter's invitees sharing networks with each other";
    InviterOnDevice => "inviter_on_device", "24 h", "1 when the inviter's account was seen on this device";
    InviterOnSubnet => "inviter_on_subnet", "24 h", "1 when the inviter's account was seen on this /24 or /64";
    ReferralRing => "referral_ring", "24 h", "1 when the inviter had assisted this account before (A assists B, B assists A)";
    InviterIsInvitee => "inviter_is_invitee", "24 h", "1 when the inviter itself assisted someone (a chain A to B to C)";
    InviterAgeS => "inviter_age_s", "-", "seconds since the inviter's account was first seen (0 = new now or never seen): a ring's inviters are made minutes before their invitees";
    UserBrowse1h => "user_browse_1h", "1 h", "browsing requests (campaign and item pages) by this account";
    UserBrowse24h => "user_browse_24h", "24 h", "browsing requests (campaign and item pages) by this account";
    UserRegularGaps => "user_regular_gaps", "-", "consecutive gaps between this account's requests within 5% of the previous gap (timer-driven)";
    DeviceRegularGaps => "device_regular_gaps", "-", "consecutive gaps between this device's requests within 5% of the previous gap";
    UserAgeS => "user_age_s", "-", "seconds since this account was first seen (0 = new now or absent)";
    DeviceAgeS => "device_age_s", "-", "seconds since this device was first seen (0 = new now or absent)";
    HasUser => "has_user", "-", "1 when the request names an account";
    HasDevice => "has_device", "-", "1 when the request carries a device id";
    HasPhone => "has_phone", "-", "1 when the request carries a phone hash";
    HasAppVersion => "has_app_version", "-", "1 when the request carries the app version header";
    AppVersionStale => "app_version_stale", "-", "1 when the app version is older than signals.min_app_version or not a version at all";
    HasUserAgent => "has_user_agent", "-", "1 when the request carries a user agent";
    OnWifi => "on_wifi", "-", "1 when the user agent reports a Wi-Fi connection (NetType/WIFI, as WeChat and Alipay send): a home or office line, not a carrier's shared NAT";
    HasInviter => "has_inviter", "-", "1 when the request names an inviter";
    Amount => "amount", "-", "order amount from the request (0 when absent)";
    AmountJustAbove => "amount_just_above_threshold", "-", "1 when the amount is at or just above a coupon threshold (signals.order_thresholds)";
}

/// Number of features in the vector.
pub const COUNT: usize = ALL.len();

/// The feature values of one request, in `ALL` order.
#[derive(Debug, Clone, PartialEq)]
pub struct Features(pub [f64; COUNT]);

impl Default for Features {
    fn default() -> Self {
        Features([0.0; COUNT])
    }
}

impl Features {
    /// The value of one feature.
    pub fn get(&self, f: Feature) -> f64 {
        self.0[f as usize]
    }
    /// Sets one feature.
    pub fn set(&mut self, f: Feature, value: f64) {
        self.0[f as usize] = value;
    }
    /// All values in vector order.
    pub fn as_slice(&self) -> &[f64] {
        &self.0
    }
}

/// Looks a feature up by its name (as rules and model files spell it).
pub fn by_name(name: &str) -> Option<Feature> {
    ALL.iter().copied().find(|f| f.name() == name)
}

/// Index of a named feature in the vector, for compiling rules.
pub fn index_of(name: &str) -> Option<usize> {
    by_name(name).map(|f| f as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_in_vector_order() {
        for (i, f) in ALL.iter().enumerate() {
            assert_eq!(*f as usize, i);
            assert_eq!(by_name(f.name()), Some(*f));
            assert!(!f.meaning().is_empty());
        }
        let mut names: Vec<_> = ALL.iter().map(|f| f.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), COUNT);
        assert_eq!(by_name("no_such_feature"), None);
    }

    #[test]
    fn every_feature_is_documented_in_architecture_md() {
        let doc = include_str!("../ARCHITECTURE.md");
        for f in ALL {
            let row = format!("| `{}` | {} | {} |", f.name(), f.window(), f.meaning());
            assert!(doc.contains(&row), "ARCHITECTURE.md lacks the row {row}");
        }
    }
}
