//! Invitation codes: one copy-pasteable line that carries everything a joiner needs.
//!
//! `kith1` + base32 (RFC 4648, no padding) of CBOR `{grid, inviter, addrs, onion, k, happy, n,
//! secret, expires}` followed by the first 4 bytes of its SHA-256 (catches typos and truncated
//! pastes before any network traffic). The secret is 16 random bytes; the inviter keeps only
//! its SHA-256 with the expiry and the uses left, and spends a use when a joiner presents it
//! over a connection authenticated as the joiner's peer id. There is no rendezvous server: the
//! joiner dials the inviter at the addresses (or onion address) in the code.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest as _, Sha256};

use crate::membership::{GridId, MAX_ADDR_LEN, MAX_ADDRS, MAX_TEXT, PublicKey};

/// Prefix of every code.
pub const PREFIX: &str = "kith1";
/// Longest code accepted (characters).
pub const MAX_CODE: usize = 2048;

/// What an invitation code carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    /// The grid (founder's key).
    #[serde(rename = "g", with = "serde_bytes")]
    pub grid: GridId,
    /// The inviter's public key (its peer id).
    #[serde(rename = "i", with = "serde_bytes")]
    pub inviter: PublicKey,
    /// The inviter's binary multiaddrs.
    #[serde(rename = "a")]
    pub addrs: Vec<ByteBuf>,
    /// The inviter's onion address, if any.
    #[serde(rename = "o")]
    pub onion: Option<String>,
    /// The grid's default encoding: shares needed.
    #[serde(rename = "k")]
    pub k: u8,
    /// Servers of happiness.
    #[serde(rename = "h")]
    pub happy: u8,
    /// Total shares.
    #[serde(rename = "n")]
    pub n: u8,
    /// The one-time secret.
    #[serde(rename = "s", with = "serde_bytes")]
    pub secret: [u8; 16],
    /// Expiry (unix seconds).
    #[serde(rename = "x")]
    pub expires: u64,
}

/// Why a code could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodeError {
    /// Not a kith invitation code at all.
    #[error("not a kith invitation code (it should start with \"{PREFIX}\")")]
    Prefix,
    /// Too long.
    #[error("invitation code too long")]
    TooLong,
    /// Not base32.
    #[error("invitation code contains characters that are not base32: was it copied whole?")]
    Encoding,
    /// Checksum mismatch.
    #[error("invitation code is damaged (checksum mismatch): copy it again")]
    Checksum,
    /// Well-formed text that does not hold an invitation.
    #[error("invitation code does not hold a valid invitation")]
    Malformed,
}

impl Invitation {
    /// The SHA-256 of the secret (what the inviter stores).
    pub fn secret_hash(secret: &[u8; 16]) -> [u8; 32] {
        Sha256::digest(secret).into()
    }

    /// The one-line code.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::new();
        // Writing CBOR into a Vec cannot fail.
        #[allow(clippy::expect_used)]
        ciborium::into_writer(self, &mut bytes).expect("CBOR into a Vec");
        let sum = Sha256::digest(&bytes);
        bytes.extend_from_slice(&sum[..4]);
        format!(
            "{PREFIX}{}",
            data_encoding::BASE32_NOPAD
                .encode(&bytes)
                .to_ascii_lowercase()
        )
    }

    /// Reads a code (surrounding whitespace and case are ignored).
    pub fn decode(code: &str) -> Result<Invitation, CodeError> {
        let code = code.trim();
        if code.len() > MAX_CODE {
            return Err(CodeError::TooLong);
        }
        let body = code
            .get(..PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PREFIX))
            .map(|_| &code[PREFIX.len()..])
            .ok_or(CodeError::Prefix)?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| CodeError::Encoding)?;
        if bytes.len() < 5 {
            return Err(CodeError::Malformed);
        }
        let (data, sum) = bytes.split_at(bytes.len() - 4);
        if Sha256::digest(data)[..4] != *sum {
            return Err(CodeError::Checksum);
        }
        let inv: Invitation = ciborium::de::from_reader_with_recursion_limit(data, 4)
            .map_err(|_| CodeError::Malformed)?;
        let ok = inv.addrs.len() <= MAX_ADDRS
            && inv.addrs.iter().all(|a| a.len() <= MAX_ADDR_LEN)
            && inv.onion.as_deref().is_none_or(|o| o.len() <= MAX_TEXT)
            && inv.k >= 1
            && inv.k <= inv.happy
            && inv.happy <= inv.n;
        if ok {
            Ok(inv)
        } else {
            Err(CodeError::Malformed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn inv() -> Invitation {
        Invitation {
            grid: [1; 32],
            inviter: [2; 32],
            addrs: vec![ByteBuf::from(vec![4, 127, 0, 0, 1, 6, 0x1f, 0x90])],
            onion: None,
            k: 3,
            happy: 7,
            n: 10,
            secret: [7; 16],
            expires: 1_800_000_000,
        }
    }

    #[test]
    fn codes_round_trip_and_damage_is_named() {
        let code = inv().encode();
        assert!(code.starts_with(PREFIX));
        assert!(code.len() < 260, "{} chars", code.len());
        assert_eq!(Invitation::decode(&code), Ok(inv()));
        assert_eq!(
            Invitation::decode(&format!("  {}\n", code.to_uppercase())),
            Ok(inv())
        );
        assert_eq!(Invitation::decode("hello"), Err(CodeError::Prefix));
        assert_eq!(
            Invitation::decode(&format!("{code}!")),
            Err(CodeError::Encoding)
        );
        // One changed character: the checksum catches it.
        let mut chars: Vec<char> = code.chars().collect();
        let i = chars.len() / 2;
        chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
        let bad: String = chars.into_iter().collect();
        assert!(matches!(
            Invitation::decode(&bad),
            Err(CodeError::Checksum | CodeError::Encoding)
        ));
        // Truncated.
        assert!(Invitation::decode(&code[..code.len() - 8]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,300}") {
            let _ = Invitation::decode(&s);
            let _ = Invitation::decode(&format!("kith1{s}"));
        }
    }
}
