//! Batch sealing: one Ed25519 signature covers a batch of consecutive receipts
//! through a Merkle tree over their hashes, and each receipt carries its own path
//! to the root, so a single receipt verifies with nothing but the public key.
//!
//! The tree is RFC 6962's (Certificate Transparency, section 2.1), with SHA-256:
//!
//! ```text
//! leaf(h)        = SHA-256(0x00 || h)          h = the receipt's 32-byte hash
//! node(l, r)     = SHA-256(0x01 || l || r)
//! MTH([x])       = leaf(x)
//! MTH(D[0..n])   = node(MTH(D[0..k]), MTH(D[k..n]))   k = largest power of 2 < n
//! ```
//!
//! The 0x00/0x01 prefixes keep a leaf from passing for an inner node. The
//! signature is over [`signed_message`]: the domain string, the batch's first and
//! last seq (so a batch cannot be presented as another range), and the root.

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// The first bytes of every signed message: which format, and that it is a
/// receipt batch (so a signature made here is useless anywhere else).
pub const DOMAIN: &[u8] = b"agentd-receipts-v1";

/// The Merkle leaf of a receipt whose hash is `h`.
pub fn leaf_hash(h: &[u8; 32]) -> [u8; 32] {
    let mut d = Sha256::new();
    d.update([0x00]);
    d.update(h);
    d.finalize().into()
}

/// The inner node over `left` and `right`.
pub fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut d = Sha256::new();
    d.update([0x01]);
    d.update(left);
    d.update(right);
    d.finalize().into()
}

/// What the node key signs for a batch: [`DOMAIN`] (18 bytes), `first_seq` and
/// `last_seq` as 8-byte big-endian integers, then the 32-byte root: 66 bytes.
pub fn signed_message(first_seq: u64, last_seq: u64, root: &[u8; 32]) -> [u8; 66] {
    let mut m = [0u8; 66];
    m[..18].copy_from_slice(DOMAIN);
    m[18..26].copy_from_slice(&first_seq.to_be_bytes());
    m[26..34].copy_from_slice(&last_seq.to_be_bytes());
    m[34..].copy_from_slice(root);
    m
}

/// A sealed batch: the root, its signature, and each receipt's inclusion proof
/// (sibling hashes from the leaf up), in receipt order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedBatch {
    pub first_seq: u64,
    pub last_seq: u64,
    pub root: [u8; 32],
    pub signature: Signature,
    pub proofs: Vec<Vec<[u8; 32]>>,
}

/// Seals the receipts with hashes `hashes`, the first of which has seq
/// `first_seq`. `hashes` must not be empty.
pub fn seal(key: &SigningKey, first_seq: u64, hashes: &[[u8; 32]]) -> SealedBatch {
    assert!(!hashes.is_empty(), "a batch has at least one receipt");
    let last_seq = first_seq + hashes.len() as u64 - 1;
    let leaves: Vec<[u8; 32]> = hashes.iter().map(leaf_hash).collect();
    let mut proofs = vec![Vec::new(); leaves.len()];
    let root = subtree(&leaves, &mut proofs);
    let signature = key.sign(&signed_message(first_seq, last_seq, &root));
    SealedBatch { first_seq, last_seq, root, signature, proofs }
}

/// MTH of `leaves` (already leaf-hashed), pushing onto each leaf's proof the
/// sibling it needs at every level. Depth first, so proofs fill from the leaf up.
fn subtree(leaves: &[[u8; 32]], proofs: &mut [Vec<[u8; 32]>]) -> [u8; 32] {
    if leaves.len() == 1 {
        return leaves[0];
    }
    let k = split(leaves.len());
    let (ll, rl) = leaves.split_at(k);
    let (lp, rp) = proofs.split_at_mut(k);
    let left = subtree(ll, lp);
    let right = subtree(rl, rp);
    for p in lp.iter_mut() {
        p.push(right);
    }
    for p in rp.iter_mut() {
        p.push(left);
    }
    node_hash(&left, &right)
}

/// The largest power of two below `n` (n >= 2).
fn split(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The root that the leaf at `index` of a tree of `size` leaves, with inclusion
/// proof `proof`, implies; `None` if the proof has the wrong length for that place
/// (RFC 9162, section 2.1.3.2). The caller compares it with the signed root.
pub fn root_from_proof(index: u64, size: u64, leaf: &[u8; 32], proof: &[[u8; 32]]) -> Option<[u8; 32]> {
    if index >= size {
        return None;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return None;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            // A right-most node with no right sibling at this level: climb until
            // it is a right child again.
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    (sn == 0).then_some(r)
}

/// Whether `signature` is `key`'s over the batch `first_seq..=last_seq` with `root`.
pub fn check_signature(key: &VerifyingKey, first_seq: u64, last_seq: u64, root: &[u8; 32], signature: &Signature) -> bool {
    key.verify(&signed_message(first_seq, last_seq, root), signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(n: usize) -> Vec<[u8; 32]> {
        (0..n).map(|i| crate::receipts::encode::sha256(&i.to_be_bytes())).collect()
    }

    /// MTH straight from the definition, to check the one-pass builder against.
    fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
        if leaves.len() == 1 {
            return leaves[0];
        }
        let k = split(leaves.len());
        node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
    }

    #[test]
    fn every_proof_of_every_size_leads_to_the_signed_root() {
        let key = SigningKey::from_bytes(&[3; 32]);
        for n in 1..=40 {
            let h = hashes(n);
            let b = seal(&key, 100, &h);
            let leaves: Vec<_> = h.iter().map(leaf_hash).collect();
            assert_eq!(b.root, mth(&leaves), "size {n}");
            assert_eq!((b.first_seq, b.last_seq), (100, 99 + n as u64));
            assert!(check_signature(&key.verifying_key(), 100, b.last_seq, &b.root, &b.signature));
            for (i, p) in b.proofs.iter().enumerate() {
                assert_eq!(root_from_proof(i as u64, n as u64, &leaves[i], p), Some(b.root), "size {n} leaf {i}");
                // The same proof does not fit another place or another leaf. (It may
                // fit another tree size: an RFC 6962 path does not commit to the size,
                // which is why the signed message names the batch's seq range.)
                if n > 1 {
                    assert_ne!(root_from_proof(((i + 1) % n) as u64, n as u64, &leaves[i], p), Some(b.root));
                    assert_ne!(root_from_proof(i as u64, n as u64, &leaves[(i + 1) % n], p), Some(b.root));
                }
                assert_eq!(root_from_proof(n as u64, n as u64, &leaves[i], p), None, "index past the end");
            }
        }
    }

    #[test]
    fn a_signature_names_its_range() {
        let key = SigningKey::from_bytes(&[4; 32]);
        let b = seal(&key, 1, &hashes(4));
        let vk = key.verifying_key();
        assert!(check_signature(&vk, 1, 4, &b.root, &b.signature));
        assert!(!check_signature(&vk, 2, 5, &b.root, &b.signature));
        assert!(!check_signature(&vk, 1, 3, &b.root, &b.signature));
        let other = SigningKey::from_bytes(&[5; 32]).verifying_key();
        assert!(!check_signature(&other, 1, 4, &b.root, &b.signature));
        assert_eq!(&signed_message(1, 4, &b.root)[..18], b"agentd-receipts-v1");
    }

    #[test]
    fn leaves_and_nodes_are_told_apart() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mut both = [0u8; 64];
        both[..32].copy_from_slice(&a);
        both[32..].copy_from_slice(&b);
        // Without the prefixes these would be one hash of the same 64 bytes.
        assert_ne!(node_hash(&a, &b), crate::receipts::encode::sha256(&both));
        assert_ne!(leaf_hash(&a), crate::receipts::encode::sha256(&a));
    }
}
