//! Messages as the kernel expects them, and answers parsed back.

use super::*;

const NLM_F_MULTI: u16 = 0x2;

/// One `RTM_NEWSTATS` message for link `index` as the kernel sends it.
fn stats_msg(seq: u32, index: u32, counters: [u64; 4]) -> Vec<u8> {
    let mut m = Msg::new(RTM_NEWSTATS, NLM_F_MULTI);
    let mut ifs = [0u8; 12];
    ifs[4..8].copy_from_slice(&index.to_ne_bytes());
    let mut stats: Vec<u8> = counters.iter().flat_map(|c| c.to_ne_bytes()).collect();
    // The rest of struct rtnl_link_stats64 (errors, drops, ...).
    stats.resize(8 * 24, 0);
    m.raw(&ifs).attr(IFLA_STATS_LINK_64, &stats);
    m.finish(seq).to_vec()
}

#[test]
fn a_stats_dump_gives_each_links_counters_until_done() {
    let mut batch = stats_msg(9, 4, [1, 2, 300, 400]);
    batch.extend(stats_msg(8, 5, [7, 7, 7, 7]));
    batch.extend(stats_msg(9, 6, [10, 20, 3000, 4000]));
    let mut out = HashMap::new();
    assert!(!parse_stats(&batch, 9, &mut out).unwrap());
    assert_eq!(out.len(), 2, "a message of another request is ignored");
    assert_eq!(
        out[&4],
        LinkStats {
            rx_packets: 1,
            tx_packets: 2,
            rx_bytes: 300,
            tx_bytes: 400
        }
    );
    assert_eq!(out[&6].tx_bytes, 4000);
    let mut done = Msg::new(NLMSG_DONE, NLM_F_MULTI);
    done.raw(&[0, 0, 0, 0]);
    assert!(parse_stats(done.finish(9), 9, &mut out).unwrap());
    let mut err = Msg::new(NLMSG_ERROR, 0);
    err.raw(&(-libc::EPERM).to_ne_bytes());
    assert_eq!(parse_stats(err.finish(9), 9, &mut out), Err(Errno::EPERM));
    assert_eq!(parse_stats(&batch[..20], 9, &mut out), Err(Errno::EIO));
}

#[test]
fn the_kernel_answers_a_stats_dump_with_the_loopback_counters() {
    let lo = link_index("lo").unwrap();
    let mut out = HashMap::new();
    Netlink::route().unwrap().link_stats(&mut out).unwrap();
    assert!(out.contains_key(&lo), "{out:?}");
}

#[test]
fn nested_attributes_carry_their_length_and_flag() {
    let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE);
    m.ifinfo(AF_UNSPEC, 0, IFF_UP, IFF_UP)
        .begin(IFLA_LINKINFO)
        .attr_str(IFLA_INFO_KIND, "veth")
        .end();
    let b = m.finish(7).to_vec();
    assert_eq!(
        u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
        b.len()
    );
    assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 7);
    // Header 16 + ifinfomsg 16, then the nest: 4 + ("veth\0" attr: 4 + 5, padded to 12).
    assert_eq!(b.len(), 16 + 16 + 4 + 12);
    let nest = &b[32..];
    assert_eq!(u16::from_ne_bytes([nest[0], nest[1]]), 16);
    assert_eq!(
        u16::from_ne_bytes([nest[2], nest[3]]),
        IFLA_LINKINFO | NLA_F_NESTED
    );
    assert_eq!(&nest[8..13], b"veth\0");
}
