//! Random, URL- and branch-safe identifiers.

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Length of a full id. 12 base32 characters carry 60 random bits.
pub const ID_LEN: usize = 12;
/// Length of the short id used in branch names and listings.
pub const SHORT_LEN: usize = 8;

/// A new random id of [`ID_LEN`] lowercase Crockford base32 characters.
pub fn new_id() -> String {
    let mut bytes = [0u8; ID_LEN];
    if getrandom::fill(&mut bytes).is_err() {
        // The OS random source failing is exceptional; fall back to time + address entropy
        // rather than refusing to create a task.
        let seed = crate::now_ms() as u64 ^ (&bytes as *const _ as u64).rotate_left(17);
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (seed.rotate_left((i * 5) as u32) & 0xff) as u8 ^ (i as u8).wrapping_mul(37);
        }
    }
    bytes
        .iter()
        .map(|b| ALPHABET[(*b & 31) as usize] as char)
        .collect()
}

/// The first [`SHORT_LEN`] characters of an id.
pub fn short_id(id: &str) -> &str {
    match id.char_indices().nth(SHORT_LEN) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

/// Whether `s` could be an id or an id prefix (used to validate user input early).
pub fn looks_like_id_prefix(s: &str) -> bool {
    !s.is_empty() && s.len() <= ID_LEN && s.bytes().all(|b| ALPHABET.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_well_formed() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), ID_LEN);
        assert!(looks_like_id_prefix(&a));
        assert_eq!(short_id(&a).len(), SHORT_LEN);
        assert!(!looks_like_id_prefix("ABC"));
        assert!(!looks_like_id_prefix("../x"));
    }
}
