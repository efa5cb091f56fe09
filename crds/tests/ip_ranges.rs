//! IP allow ranges: the spellings of one IPv6 address are equal, and the 65,536-address cap
//! holds for both families.

use crds::{IpAllowRange, IpAllowRangeSpec, manifest::validate_object};

fn range(cidr: &str) -> IpAllowRange {
    IpAllowRange::new(
        "r",
        IpAllowRangeSpec {
            description: "test".into(),
            cidr: cidr.into(),
            enabled: true,
        },
    )
}

#[test]
fn three_ipv6_spellings_validate_and_are_one_address() {
    let spellings = [
        "1050:0000:0000:0000:0005:0600:300c:326b",
        "1050:0:0:0:5:600:300c:326b",
        "1050::5:600:300c:326b",
    ];
    for s in spellings {
        assert_eq!(validate_object(&range(s)), Ok(()), "{s}");
        assert_eq!(
            validate_object(&range(&format!("{s}/128"))),
            Ok(()),
            "{s}/128"
        );
    }
    let parsed: Vec<std::net::Ipv6Addr> = spellings.iter().map(|s| s.parse().unwrap()).collect();
    assert!(parsed.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn size_limits_per_family() {
    let size = "spec.cidr: cidr covers more than 65,536 addresses: use an IPv4 prefix of /16 or longer, or an IPv6 prefix of /112 or longer";
    assert_eq!(
        validate_object(&range("10.0.0.0/15")),
        Err(vec![size.to_string()])
    );
    assert_eq!(
        validate_object(&range("2001:db8::/111")),
        Err(vec![size.to_string()])
    );
    assert_eq!(validate_object(&range("10.0.0.0/16")), Ok(()));
    assert_eq!(validate_object(&range("2001:db8::/112")), Ok(()));
    assert_eq!(validate_object(&range("192.0.2.7")), Ok(()));
}

#[test]
fn host_bits_name_the_canonical_network() {
    assert_eq!(
        validate_object(&range("2001:db8::1:5/112")),
        Err(vec![
            "spec.cidr: cidr has host bits set below the prefix; the network is 2001:db8::1:0/112"
                .to_string()
        ])
    );
    assert_eq!(
        validate_object(&range("10.0.0.1/16")),
        Err(vec![
            "spec.cidr: cidr has host bits set below the prefix; the network is 10.0.0.0/16"
                .to_string()
        ])
    );
}

#[test]
fn garbage_is_not_a_range() {
    let errors = validate_object(&range("10.0.0.300")).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("spec.cidr: cidr must be an IPv4 or IPv6 address or CIDR range"));
}
