//! The resets the datapath asks for: when it answers a packet of a
//! terminated flow with a reset, it asks the agent (through a ring buffer)
//! to reset the other end too. The agent waits on the ring buffer's
//! descriptor and answers at once, not on a tick.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd, RawFd},
};

use aya::maps::{Map, MapData, RingBuf};
use lb_common::{ResetRequest, ResetRequest6};

use super::{
    Maps,
    tcp_reset::{Reset, ResetSender},
};

pub struct ResetRequests {
    ring: RingBuf<MapData>,
    sender: ResetSender,
}

impl ResetRequests {
    /// The ring buffer, opened a second time (by a duplicated descriptor):
    /// this reader is its only consumer.
    pub fn open(maps: &Maps, sender: ResetSender) -> io::Result<ResetRequests> {
        let fd = maps.reset_requests_fd().try_clone_to_owned()?;
        let map = MapData::from_fd(fd).map_err(io::Error::other)?;
        let ring = RingBuf::try_from(Map::RingBuf(map)).map_err(io::Error::other)?;
        Ok(ResetRequests { ring, sender })
    }

    /// Sends every reset asked for so far; returns how many were sent.
    pub fn answer_all(&mut self) -> usize {
        let mut sent = 0;
        while let Some(item) = self.ring.next() {
            // The record's size tells its family.
            let reset = match item.len() {
                n if n >= size_of::<ResetRequest6>() => {
                    Reset::from_request6(&bytemuck::pod_read_unaligned(&item[..size_of::<ResetRequest6>()]))
                }
                n if n >= size_of::<ResetRequest>() => {
                    Reset::from_request(&bytemuck::pod_read_unaligned(&item[..size_of::<ResetRequest>()]))
                }
                _ => continue,
            };
            match self.sender.send(&reset) {
                Ok(()) => sent += 1,
                Err(e) => log::warn!("cannot send reset {reset:?}: {e}"),
            }
        }
        sent
    }
}

impl AsRawFd for ResetRequests {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_fd().as_raw_fd()
    }
}
