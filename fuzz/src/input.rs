//! The fuzzer's bytes, read as a sequence of small decisions.
//!
//! Each target reads its input front to back: an opcode, then the operands of that operation
//! (which port, which flow, how long to wait, which flags...), then the next opcode. Most
//! decisions pick from a short list of meaningful values (a registered port, a known flow, a
//! timeout boundary) and only sometimes take raw bytes, so that random bytes and libFuzzer's
//! mutations both reach deep states: a byte changed by the mutator changes one decision. An
//! exhausted input reads as zeros, so every input is valid and decoding never fails.

/// A cursor over the fuzzer's bytes.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte, 0 once the input is exhausted.
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// A number below `n` (1..=256).
    pub fn below(&mut self, n: usize) -> usize {
        usize::from(self.u8()) % n.max(1)
    }

    /// One of `items` (which must not be empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// True with probability `k`/256.
    pub fn chance(&mut self, k: u8) -> bool {
        self.u8() < k
    }

    /// Up to `n` raw bytes (fewer if the input runs out).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Exactly `n` bytes: the input's, then a fixed pattern once it runs out (so that large
    /// payloads cost no input bytes).
    pub fn filled(&mut self, n: usize) -> Vec<u8> {
        let mut v = self.bytes(n).to_vec();
        let have = v.len();
        v.extend((have..n).map(|i| (i as u8).wrapping_mul(31)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhausted_input_reads_zeros() {
        let mut i = Input::new(&[1, 2, 3]);
        assert_eq!(i.u16(), 0x0201);
        assert_eq!(i.u16(), 3);
        assert!(i.is_empty());
        assert_eq!((i.u8(), i.u32(), i.bytes(4).len()), (0, 0, 0));
        assert_eq!(i.filled(3).len(), 3);
        assert_eq!(i.below(5), 0);
    }
}
