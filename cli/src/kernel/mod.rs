//! The kernel's interfaces the daemon uses, wrapped once: raw system calls (epoll, eventfd),
//! rtnetlink, and network namespaces. Nothing here knows about switching.

pub mod epoll;
pub mod ethtool;
pub mod fdpass;
pub mod netlink;
pub mod netns;
pub mod sockdiag;
pub mod sys;
