//! HMAC-SHA256, HKDF-SHA256 and SHA-256 over key material, with every state that holds key
//! material wiped when dropped, and every output key held in a [`Secret32`].
//!
//! The hashing is SHA-256's compression function (RustCrypto `sha2` 0.11's
//! `compress256`: SHA-NI here) driven by [`Sha256State`] below, which pads and buffers
//! messages itself and wipes its chaining value and block buffer on drop. An [`HmacKey`] is
//! two chaining values: after the key XOR ipad block and after the key XOR opad block, so a
//! MAC costs one compression per 64 bytes of message (plus padding) and one for the outer
//! hash, with no copy of a general-purpose hasher per message.
//!
//! HKDF here is RFC 5869 for outputs of at most 32 bytes (one HMAC block, `T(1)`), which is
//! all strongroom derives: 32-byte keys and a 16-byte key id.

use sha2_zeroizing::block_api::compress256;
use zeroize::{Zeroize, Zeroizing};

/// SHA-256's initial chaining value (FIPS 180-4, 5.3.3).
const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];
const BLOCK: usize = 64;

/// 32 secret bytes (a MAC, a derived key), wiped on drop. Unlike `Zeroizing<[u8; 32]>`,
/// for which `zeroize` writes the array one volatile byte at a time, it clears them as a
/// slice: one fill behind `zeroize`'s optimisation barrier.
pub(crate) struct Secret32([u8; 32]);

impl Secret32 {
    pub(crate) fn new(bytes: [u8; 32]) -> Secret32 {
        Secret32(bytes)
    }
}

impl std::ops::Deref for Secret32 {
    type Target = [u8; 32];
    fn deref(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::ops::DerefMut for Secret32 {
    fn deref_mut(&mut self) -> &mut [u8; 32] {
        &mut self.0
    }
}

impl AsRef<[u8]> for Secret32 {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for Secret32 {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl Drop for Secret32 {
    fn drop(&mut self) {
        self.0.as_mut_slice().zeroize();
    }
}

/// A SHA-256 computation in progress: chaining value, partial block and length. Wiped on drop
/// (the chaining value of a message that starts with key material is as secret as the key).
struct Sha256State {
    state: [u32; 8],
    buf: [u8; BLOCK],
    /// Bytes in `buf`.
    buffered: usize,
    /// Bytes absorbed so far, whole blocks included.
    len: u64,
}

impl Drop for Sha256State {
    fn drop(&mut self) {
        // As slices: `zeroize` clears a slice in one fill behind an optimisation barrier,
        // where it would write an array one volatile element at a time.
        self.state.as_mut_slice().zeroize();
        self.buf.as_mut_slice().zeroize();
    }
}

impl Sha256State {
    /// Continues from `state`, a chaining value after `len` bytes (a multiple of 64).
    fn resume(state: &[u32; 8], len: u64) -> Sha256State {
        Sha256State {
            state: *state,
            buf: [0u8; BLOCK],
            buffered: 0,
            len,
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.buffered > 0 {
            let n = data.len().min(BLOCK - self.buffered);
            self.buf[self.buffered..self.buffered + n].copy_from_slice(&data[..n]);
            self.buffered += n;
            data = &data[n..];
            if self.buffered < BLOCK {
                return;
            }
            compress256(&mut self.state, std::slice::from_ref(&self.buf));
            self.buffered = 0;
        }
        let (blocks, rest) = data.as_chunks::<BLOCK>();
        if !blocks.is_empty() {
            compress256(&mut self.state, blocks);
        }
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buffered = rest.len();
    }

    /// Pads (`0x80`, zeros, the bit length) and returns the digest.
    fn finish(mut self) -> Secret32 {
        let bits = self.len.wrapping_mul(8);
        let at = self.buffered;
        self.buf[at] = 0x80;
        self.buf[at + 1..].fill(0);
        if at + 1 > BLOCK - 8 {
            compress256(&mut self.state, std::slice::from_ref(&self.buf));
            self.buf.fill(0);
        }
        self.buf[BLOCK - 8..].copy_from_slice(&bits.to_be_bytes());
        compress256(&mut self.state, std::slice::from_ref(&self.buf));
        let mut out = Secret32([0u8; 32]);
        // By reference: iterating the state by value would leave a copy of it (the digest)
        // on the stack.
        for (chunk, word) in out.chunks_exact_mut(4).zip(self.state.iter()) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }
}

/// An HMAC-SHA256 key, kept as the chaining values after its inner and outer pad blocks, so
/// the key is padded and hashed once. Wiped on drop, as is every clone.
#[derive(Clone)]
pub(crate) struct HmacKey {
    inner: Zeroizing<[u32; 8]>,
    outer: Zeroizing<[u32; 8]>,
}

impl HmacKey {
    /// A key of any length (HMAC hashes a longer one, pads a shorter one).
    pub(crate) fn new(key: &[u8]) -> HmacKey {
        let mut block = [0u8; BLOCK];
        if key.len() > BLOCK {
            block[..32].copy_from_slice(sha256(&[key]).as_ref());
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let mut inner = Zeroizing::new(IV);
        let mut outer = Zeroizing::new(IV);
        block.iter_mut().for_each(|b| *b ^= 0x36);
        compress256(&mut inner, std::slice::from_ref(&block));
        block.iter_mut().for_each(|b| *b ^= 0x36 ^ 0x5c);
        compress256(&mut outer, std::slice::from_ref(&block));
        block.as_mut_slice().zeroize();
        HmacKey { inner, outer }
    }

    /// `HMAC-SHA256(key, parts[0] || parts[1] || ...)`.
    pub(crate) fn mac(&self, parts: &[&[u8]]) -> Secret32 {
        self.mac_then(parts, &[])
    }

    /// `HMAC-SHA256(key, parts[0] || ... || last)`.
    fn mac_then(&self, parts: &[&[u8]], last: &[u8]) -> Secret32 {
        let mut h = Sha256State::resume(&self.inner, BLOCK as u64);
        for part in parts {
            h.update(part);
        }
        h.update(last);
        let inner = h.finish();
        let mut h = Sha256State::resume(&self.outer, BLOCK as u64);
        h.update(inner.as_ref());
        h.finish()
    }

    /// HKDF-Expand (RFC 5869) of at most 32 bytes with this key as the PRK:
    /// `T(1) = HMAC(PRK, info || 0x01)`, truncated to `out.len()`. `info` is given in parts
    /// that are concatenated.
    pub(crate) fn expand_into(&self, info: &[&[u8]], out: &mut [u8]) {
        assert!(out.len() <= 32, "one HMAC-SHA256 block");
        let t1 = self.mac_then(info, &[0x01]);
        out.copy_from_slice(&t1[..out.len()]);
    }

    /// [`HmacKey::expand_into`] of a 32-byte key.
    pub(crate) fn expand32(&self, info: &[&[u8]]) -> Secret32 {
        self.mac_then(info, &[0x01])
    }
}

/// HKDF-Extract (RFC 5869): `PRK = HMAC-SHA256(salt, ikm)`, returned as a keyed HMAC ready
/// to expand.
pub(crate) fn extract(salt: &[u8], ikm: &[u8]) -> HmacKey {
    let prk = HmacKey::new(salt).mac(&[ikm]);
    HmacKey::new(prk.as_ref())
}

/// SHA-256 of `parts` concatenated, on a hash state that wipes itself on drop (for inputs
/// that hold key material).
pub(crate) fn sha256_wiping(parts: &[&[u8]]) -> [u8; 32] {
    *sha256(parts)
}

/// SHA-256 of `parts` concatenated (the state wipes itself on drop; the digest is returned
/// in a [`Secret32`] for callers that hash key material).
pub(crate) fn sha256(parts: &[&[u8]]) -> Secret32 {
    let mut h = Sha256State::resume(&IV, 0);
    for part in parts {
        h.update(part);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5869, test case 1 (the first 32 of its 42 output bytes) and test case 3 (no
    /// salt, empty info).
    #[test]
    fn hkdf_matches_rfc_5869() {
        let ikm = [0x0bu8; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let prk = extract(&salt, &ikm);
        assert_eq!(
            hex::encode(prk.expand32(&[&info]).as_ref()),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        );
        let prk = extract(&[0u8; 32], &ikm);
        assert_eq!(
            hex::encode(prk.expand32(&[]).as_ref()),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
        );
        // Split info is the same as joined info; a shorter output is a prefix.
        let prk = extract(&salt, &ikm);
        let mut short = [0u8; 16];
        prk.expand_into(&[&info[..3], &info[3..]], &mut short);
        assert_eq!(hex::encode(short), "3cb25f25faacd57a90434f64d0362f2a");
    }

    /// The hand-driven padding against RustCrypto's `sha2` 0.10 (a separate implementation),
    /// for every length around the one- and two-block padding boundaries, split anywhere.
    #[test]
    fn sha256_matches_the_sha2_crate() {
        use sha2::Digest;
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..data.len() {
            let want: [u8; 32] = sha2::Sha256::digest(&data[..len]).into();
            assert_eq!(*sha256(&[&data[..len]]), want, "length {len}");
            for split in [0, 1, len / 3, len / 2, len.saturating_sub(1), len] {
                let split = split.min(len);
                let (a, b) = data[..len].split_at(split);
                let (b, c) = b.split_at(b.len() / 2);
                assert_eq!(*sha256(&[a, b, c]), want, "length {len}, split {split}");
            }
        }
        // HMAC with a key longer than a block (hashed first): RFC 4231, test case 6.
        let tag = HmacKey::new(&[0xaa; 131])
            .mac(&[b"Test Using Larger Than Block-Size Key - Hash Key First"]);
        assert_eq!(
            hex::encode(tag.as_ref()),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    /// RFC 4231, test case 2.
    #[test]
    fn hmac_matches_rfc_4231() {
        let tag = HmacKey::new(b"Jefe").mac(&[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(tag.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(sha256_wiping(&[b"a", b"bc"])),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
