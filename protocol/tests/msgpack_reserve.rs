//! A msgpack body whose nested arrays each claim as many entries as there
//! are bytes left must not make the decoder reserve memory for them: 500
//! levels in 1 MiB once reserved ~35 GB of address space. Alone in its file
//! (its own process), since it reads the process's peak address space.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use celeriac_protocol::limits::DecodeLimits;

fn vm_peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmPeak:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn nested_msgpack_headers_claiming_the_rest_of_the_body_reserve_nothing() {
    let (depth, total) = (500usize, 1usize << 20);
    let mut body = Vec::with_capacity(total);
    for level in 0..depth {
        // array32 of n entries, n = the bytes left after this header.
        let left_after = u32::try_from(total - 5 * (level + 1)).unwrap();
        body.push(0xdd);
        body.extend_from_slice(&left_after.to_be_bytes());
    }
    body.resize(total, 0x00);
    let before = vm_peak_kib();
    let strict = celeriac_protocol::msgpack::from_slice_with(&body, &DecodeLimits::any_content());
    let any = celeriac_protocol::codec::decode(celeriac_protocol::ContentType::Msgpack, &body);
    let grown_mib = (vm_peak_kib() - before) / 1024;
    assert!(strict.is_err() && any.is_err(), "truncated bodies: {strict:?} {any:?}");
    assert!(grown_mib < 256, "a 1 MiB body raised the peak address space by {grown_mib} MiB");
}
