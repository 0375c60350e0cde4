//! Why a frame is not translated ([`NatDrop`], part of a verdict and counted) and why a call from
//! the edge failed ([`NatError`]).

use thiserror::Error;

use crate::conntrack::FlowId;

/// Why [`crate::Nat::outbound`] or [`crate::Nat::from_host`] refused a frame. Each reason has a
/// counter in [`crate::NatStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum NatDrop {
    #[error("malformed frame")]
    Malformed,
    #[error("IPv4 fragment (fragments are not translated)")]
    Fragment,
    #[error("flow table full")]
    TableFull,
    #[error("no flow for this segment")]
    NoFlow,
    #[error("no free relay port for this container address and port")]
    NoRelayPort,
    #[error("no free ICMP echo identifier")]
    NoEchoIdent,
    #[error("protocol or ICMP type not translated")]
    Unsupported,
    #[error("source or destination address not allowed")]
    BadAddress,
    #[error("IPv4 header checksum wrong")]
    BadChecksum,
    #[error("IPv4 total length does not match the frame")]
    BadLength,
    #[error("TTL exhausted (answered with ICMP time exceeded)")]
    TtlExceeded,
    #[error("VLAN-tagged frame on an untagged port")]
    Tagged,
    #[error("the container's share of the flow table is used up")]
    ContainerLimit,
    #[error("the container has too many TCP connections still connecting")]
    HalfOpenLimit,
}

/// Errors of the calls the edge makes for a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum NatError {
    #[error("no flow {0:#x} (expired or removed)")]
    UnknownFlow(FlowId),
    #[error("no echo flow with identifier {0}")]
    UnknownEchoIdent(u16),
    #[error("flow {0:#x} is not of the kind this call needs")]
    WrongFlowKind(FlowId),
    #[error("flow {0:#x} is not waiting for its connect")]
    NotConnecting(FlowId),
    #[error("flow {0:#x} was reset by the container")]
    FlowClosed(FlowId),
    #[error("the frame does not belong to flow {0:#x}")]
    FrameMismatch(FlowId),
    #[error("malformed frame")]
    Malformed,
    #[error("output buffer too small: {need} bytes needed, {have} given")]
    BufferTooSmall { need: usize, have: usize },
    #[error("payload of {0} bytes does not fit in an IPv4 packet")]
    PayloadTooLarge(usize),
    #[error("address or port already tracked by another flow")]
    InUse,
    #[error("address is not in the containers' subnet")]
    NotInSubnet,
    #[error("client is in the containers' subnet or the gateway: reach the container without translation")]
    LocalClient,
    #[error("flow table full")]
    TableFull,
    #[error("no free ICMP echo identifier")]
    NoEchoIdent,
}
