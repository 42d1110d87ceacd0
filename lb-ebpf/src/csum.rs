//! Incremental Internet checksum updates (RFC 1624): when a field changes,
//! adjust the checksum instead of recomputing it over the whole packet.
//!
//! Values are used exactly as loaded from the packet (network byte order in a
//! native integer): a one's complement sum does not depend on byte order as
//! long as every operand is loaded the same way.

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// What a 16-bit word changing from `old` to `new` adds to the sum.
/// Unfolded: add several changes up, then [`apply`] them once.
#[inline(always)]
pub fn change2(old: u16, new: u16) -> u32 {
    !old as u32 + new as u32
}

/// What a 32-bit word changing from `old` to `new` adds to the sum.
#[inline(always)]
pub fn change4(old: u32, new: u32) -> u32 {
    let old = !old;
    (old >> 16) + (old & 0xffff) + (new >> 16) + (new & 0xffff)
}

/// Checksum after the changes summed in `change` (a few [`change2`] and
/// [`change4`]: two folds carry any such sum back into 16 bits).
#[inline(always)]
pub fn apply(check: u16, change: u32) -> u16 {
    !fold(!check as u32 + change)
}

/// Checksum of `words` (16-bit words as loaded from memory) plus `extra`
/// (an already summed part, such as a pseudo-header).
#[inline(always)]
pub fn over(words: &[u16], extra: u32) -> u16 {
    let mut sum = extra;
    for w in words {
        sum += *w as u32;
    }
    !fold(sum)
}
