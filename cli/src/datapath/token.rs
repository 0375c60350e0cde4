//! What an epoll event is about. Every epoll set of the daemon (the workers', the NAT
//! service's) registers its descriptors with a [`Token`], packed into epoll's 64-bit user data.

use vswitch_switch::PortId;

/// The subject of an epoll event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// The thread's own eventfd: someone wants it to look at its queue or its stop flag.
    Wake,
    /// The datapath hook's descriptor (the NAT's echo socket).
    Hook,
    /// Receive queue `queue` of port `port`.
    Queue { port: PortId, queue: u16 },
    /// One side (0 or 1) of relayed TCP pair `pair`.
    Relay { pair: u64, side: u8 },
    /// The NAT service's relay listener number `n`.
    Listener(u16),
    /// One of the NAT service's on-the-fly sockets.
    Entry(u64),
    /// A NAT'd UDP flow's socket (the NAT service's token for it).
    Udp(u64),
}

/// The top 4 bits say which kind of token, the other 60 carry its fields.
const KIND_SHIFT: u32 = 60;
const PAYLOAD: u64 = (1 << KIND_SHIFT) - 1;

impl From<Token> for u64 {
    fn from(token: Token) -> u64 {
        let (kind, payload) = match token {
            Token::Wake => (0, 0),
            Token::Hook => (1, 0),
            Token::Queue { port, queue } => (2, u64::from(queue) << 16 | u64::from(port.0)),
            Token::Relay { pair, side } => (3, (pair << 1 | u64::from(side & 1)) & PAYLOAD),
            Token::Listener(n) => (4, u64::from(n)),
            Token::Entry(n) => (5, n & PAYLOAD),
            Token::Udp(n) => (6, n & PAYLOAD),
        };
        kind << KIND_SHIFT | payload
    }
}

impl Token {
    /// The token behind epoll user data; `None` for data no token encodes.
    pub fn decode(data: u64) -> Option<Token> {
        let payload = data & PAYLOAD;
        Some(match data >> KIND_SHIFT {
            0 => Token::Wake,
            1 => Token::Hook,
            2 => Token::Queue {
                port: PortId(payload as u16),
                queue: (payload >> 16) as u16,
            },
            3 => Token::Relay {
                pair: payload >> 1,
                side: (payload & 1) as u8,
            },
            4 => Token::Listener(payload as u16),
            5 => Token::Entry(payload),
            6 => Token::Udp(payload),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_survive_the_round_trip() {
        for token in [
            Token::Wake,
            Token::Hook,
            Token::Queue {
                port: PortId(u16::MAX),
                queue: 7,
            },
            Token::Relay {
                pair: (1 << 58) + 3,
                side: 1,
            },
            Token::Listener(15),
            Token::Entry(1 << 40),
            Token::Udp(1 << 40),
        ] {
            assert_eq!(Token::decode(u64::from(token)), Some(token));
        }
        assert_eq!(Token::decode(u64::MAX), None);
    }
}
