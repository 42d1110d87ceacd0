//! Empty library target: lets lb-userspace list this crate as a build
//! dependency, so cargo rebuilds the agent when the XDP program changes.
#![no_std]
