//! tc objects: the clsact qdisc and the fast path's direct-action cls_bpf filters on its
//! ingress and egress hooks (where the kernel has no tcx links).

use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::tc::{
    TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::{Netlink, NetlinkError};

/// A clsact qdisc's handle (`ffff:0`).
const CLSACT_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// A clsact qdisc's ingress hook, as a filter's parent (`TC_H_MAKE(TC_H_CLSACT,
/// TC_H_MIN_INGRESS)`).
const CLSACT_INGRESS: TcHandle = TcHandle {
    major: 0xffff,
    minor: TcHandle::MIN_INGRESS,
};
/// Its egress hook (`TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS)`).
const CLSACT_EGRESS: TcHandle = TcHandle {
    major: 0xffff,
    minor: TcHandle::MIN_EGRESS,
};
/// The handle of the one BPF filter the daemon puts on a hook.
const BPF_FILTER_HANDLE: TcHandle = TcHandle { major: 0, minor: 1 };

/// Which of a link's two clsact (or tcx) hooks: frames it receives, or frames it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcHook {
    Ingress,
    Egress,
}

impl TcHook {
    pub fn name(self) -> &'static str {
        match self {
            TcHook::Ingress => "ingress",
            TcHook::Egress => "egress",
        }
    }
}

impl Netlink {
    /// Adds a `clsact` qdisc to link `index`: the hooks for tc programs on its ingress and
    /// egress, with no queue. `false` if the link already had one (then it is not ours).
    pub fn add_clsact(&mut self, index: u32) -> Result<bool, NetlinkError> {
        let mut msg = tc_message(index, CLSACT_HANDLE, TcHandle::CLSACT);
        msg.attributes.push(TcAttribute::Kind("clsact".into()));
        match self.request(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("add a clsact qdisc to link {index}"),
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives link `index` a `pfifo_fast` root qdisc (a queue of `txqueuelen` frames) in place of
    /// whatever it has, such as a veth's `noqueue`.
    pub fn set_root_pfifo_fast(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = tc_message(index, TcHandle::default(), TcHandle::ROOT);
        msg.attributes.push(TcAttribute::Kind("pfifo_fast".into()));
        self.request(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("give link {index} a pfifo_fast qdisc"),
        )?;
        Ok(())
    }

    /// Deletes link `index`'s `clsact` qdisc and every filter on it.
    pub fn delete_clsact(&mut self, index: u32) -> Result<(), NetlinkError> {
        let msg = tc_message(index, CLSACT_HANDLE, TcHandle::CLSACT);
        self.request(RouteNetlinkMessage::DelQueueDiscipline(msg), 0, || {
            format!("delete the clsact qdisc of link {index}")
        })?;
        Ok(())
    }

    /// Puts BPF program `prog` (a `SCHED_CLS` program) on link `index`'s clsact `hook` as a
    /// `cls_bpf` filter in direct-action mode (the program's return value is the verdict),
    /// for every protocol, at priority `prio`, under `name`. A filter already there at that
    /// priority (one a killed daemon left: unlike a tcx link, a filter outlives its process) is
    /// replaced, in one step.
    pub fn add_bpf_filter(
        &mut self,
        index: u32,
        hook: TcHook,
        prio: u16,
        prog: BorrowedFd<'_>,
        name: &str,
    ) -> Result<(), NetlinkError> {
        let mut msg = bpf_filter(index, hook, prio);
        msg.attributes.push(TcAttribute::Kind("bpf".into()));
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(prog.as_raw_fd() as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
        self.request(
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            || {
                format!(
                    "add BPF filter {name} to the {} of link {index}",
                    hook.name()
                )
            },
        )?;
        Ok(())
    }

    /// Deletes the filter [`Netlink::add_bpf_filter`] put on link `index`'s `hook` at priority
    /// `prio`.
    pub fn delete_bpf_filter(
        &mut self,
        index: u32,
        hook: TcHook,
        prio: u16,
    ) -> Result<(), NetlinkError> {
        let mut msg = bpf_filter(index, hook, prio);
        msg.attributes.push(TcAttribute::Kind("bpf".into()));
        self.request(RouteNetlinkMessage::DelTrafficFilter(msg), 0, || {
            format!(
                "delete the BPF filter on the {} of link {index}",
                hook.name()
            )
        })?;
        Ok(())
    }
}

/// A tc request about link `index`'s object `handle` under `parent`.
fn tc_message(index: u32, handle: TcHandle, parent: TcHandle) -> TcMessage {
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.handle = handle;
    msg.header.parent = parent;
    msg
}

/// The daemon's BPF filter on link `index`'s clsact `hook`, at priority `prio`, for every
/// protocol (`tcm_info` is `TC_H_MAKE(prio << 16, htons(ETH_P_ALL))`).
fn bpf_filter(index: u32, hook: TcHook, prio: u16) -> TcMessage {
    let parent = match hook {
        TcHook::Ingress => CLSACT_INGRESS,
        TcHook::Egress => CLSACT_EGRESS,
    };
    let mut msg = tc_message(index, BPF_FILTER_HANDLE, parent);
    msg.header.info = u32::from(prio) << 16 | u32::from((libc::ETH_P_ALL as u16).to_be());
    msg
}
