//! Keypad codes: the [`Code`] type, its format rules, and the Argon2id lookup key (DESIGN.md 1, 2).
//!
//! A code is a secret with a tiny keyspace. It lives in a [`Code`] value that cannot be printed
//! (`Debug` shows `***`, there is no `Display`) and is turned into a lookup key by exactly one
//! Argon2id computation, keyed by the site secret and salted by the site salt, so that the store
//! maps lookup key → user id and checking a code never depends on the number of users.
//! Everything here is pure and synchronous; the daemon runs [`LookupKeyer::key`] off the runtime.
//!
//! The keyer owns one Argon2 working memory (19 MiB at the default parameters), allocated once
//! and reused by every computation, one at a time. A fresh block per computation is freed back
//! to glibc, which keeps it in the arena of whichever blocking-pool thread ran it: the daemon
//! grew to hundreds of MB that way (issue 11).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use argon2::{Algorithm, Argon2, Block, Params, Version};
use serde::{Deserialize, Serialize};

/// A keypad code that has passed the format rules. It can be compared and hashed, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Code(String);

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Code(***)")
    }
}

/// Why a typed or submitted code is not a code. Messages never repeat the code itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeFormatError {
    #[error("a code is made of the ASCII digits 0-9 only (no spaces, signs or other digits)")]
    NotDigits,
    #[error("a code has {min} to {max} digits")]
    Length { len: usize, min: usize, max: usize },
    #[error(
        "a tag is 6 to 20 hex digits (a leading +, and -, : or spaces between them, are dropped)"
    )]
    Tag,
}

/// The lookup-key domain of tags: a code is digits only, so no tag's input is a code's.
const TAG_DOMAIN: &str = "tag:";
const TAG_MIN: usize = 6;
const TAG_MAX: usize = 20;

impl Code {
    /// Checks the format rules of DESIGN.md 1: ASCII digits only, `min..=max` of them.
    /// Leading zeros are kept: "0042" and "42" are different codes.
    pub fn parse(raw: &str, min: usize, max: usize) -> Result<Code, CodeFormatError> {
        if !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CodeFormatError::NotDigits);
        }
        let len = raw.len();
        if len < min || len > max {
            return Err(CodeFormatError::Length { len, min, max });
        }
        Ok(Code(raw.to_owned()))
    }

    /// An RFID tag's value (DESIGN 10b), normalised: a leading `+` dropped, `-`, `:` and
    /// spaces dropped, upper-cased; then 6 to 20 hex digits (a Wiegand reader's decimal number
    /// is hex digits too). Kept with the tag domain prefix, so that its lookup key can never be
    /// a code's (a code is digits only).
    pub fn tag(raw: &str) -> Result<Code, CodeFormatError> {
        let raw = raw.trim();
        let raw = raw.strip_prefix('+').unwrap_or(raw);
        let mut value: String = raw
            .chars()
            .filter(|c| !matches!(c, '-' | ':' | ' '))
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let ok = value.bytes().all(|b| b.is_ascii_hexdigit())
            && (TAG_MIN..=TAG_MAX).contains(&value.len());
        let result = if ok {
            Ok(Code(format!("{TAG_DOMAIN}{value}")))
        } else {
            Err(CodeFormatError::Tag)
        };
        zeroize::Zeroize::zeroize(&mut value);
        result
    }

    /// Whether this is an RFID tag rather than a typed code.
    pub fn is_tag(&self) -> bool {
        self.0.starts_with(TAG_DOMAIN)
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Whether this is one of the commonest PINs (DESIGN 10c), the ones a guesser tries first.
    pub fn is_common(&self) -> bool {
        !self.is_tag() && COMMON_PINS.contains(&self.0.as_str())
    }
}

/// The twenty commonest 4-digit PINs (DESIGN 10c).
const COMMON_PINS: [&str; 20] = [
    "1234", "0000", "1111", "1212", "7777", "1004", "2000", "4444", "2222", "6969", "9999", "3333",
    "5555", "6666", "1122", "1313", "8888", "4321", "2001", "1010",
];

impl Drop for Code {
    fn drop(&mut self) {
        // Overwrite the digits before the memory is released.
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// A parsed JSON message that may hold a code (a keypad entry, a command): every string in it
/// is overwritten when it is dropped. (serde_json's own scratch buffer for escaped strings
/// and the MQTT client's read buffers are beyond reach.)
pub struct WipedJson(pub serde_json::Value);

impl WipedJson {
    pub fn parse(bytes: &[u8]) -> serde_json::Result<WipedJson> {
        serde_json::from_slice(bytes).map(WipedJson)
    }
}

impl Drop for WipedJson {
    fn drop(&mut self) {
        wipe_json(&mut self.0);
    }
}

/// Overwrites every string of a JSON value, keys left as they are.
pub fn wipe_json(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) => zeroize::Zeroize::zeroize(s),
        Value::Array(items) => items.iter_mut().for_each(wipe_json),
        Value::Object(map) => map.values_mut().for_each(wipe_json),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Argon2id cost parameters: the `codes.argon2` config section, recorded in the store when it is
/// created. Defaults are OWASP's minimum for Argon2id. (A damaged record that lost a field and
/// got a default would fail the store's secret check, not go unnoticed.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Argon2Params {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Params {
    fn default() -> Self {
        Argon2Params {
            memory_kib: 19456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// The length of a lookup key in bytes.
pub const LOOKUP_KEY_LEN: usize = 32;

/// What a code becomes in the store: Argon2id(code, site salt, site secret).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LookupKey(pub [u8; LOOKUP_KEY_LEN]);

impl fmt::Debug for LookupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LookupKey(..)")
    }
}

impl LookupKey {
    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(hex: &str) -> Option<LookupKey> {
        if hex.len() != LOOKUP_KEY_LEN * 2 || !hex.is_ascii() {
            return None;
        }
        let mut out = [0u8; LOOKUP_KEY_LEN];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(LookupKey(out))
    }
}

/// Computes lookup keys with the site's secret, salt and recorded parameters.
///
/// Cheap to clone; clones share the working memory (so at most one computation runs at a time,
/// whatever the number of blocking threads) and the computation counter, which tests read to
/// prove that a locked-out source is refused without hashing.
#[derive(Clone)]
pub struct LookupKeyer {
    secret: Arc<[u8]>,
    salt: Arc<[u8]>,
    params: Params,
    /// The Argon2 working memory, `params.block_count()` blocks, wiped after each use.
    memory: Arc<Mutex<Vec<Block>>>,
    computations: Arc<AtomicU64>,
}

impl fmt::Debug for LookupKeyer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LookupKeyer").finish_non_exhaustive()
    }
}

impl LookupKeyer {
    pub fn new(secret: &[u8], salt: &[u8], params: Argon2Params) -> Result<Self, argon2::Error> {
        let params = Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            Some(LOOKUP_KEY_LEN),
        )?;
        // Validate the combination once, so that `key` cannot fail later.
        Argon2::new_with_secret(secret, Algorithm::Argon2id, Version::V0x13, params.clone())?;
        let memory = working_memory(params.block_count());
        Ok(LookupKeyer {
            secret: secret.into(),
            salt: salt.into(),
            params,
            memory: Arc::new(Mutex::new(memory)),
            computations: Arc::new(AtomicU64::new(0)),
        })
    }

    /// One Argon2id computation. Blocking: tens of milliseconds, more on a Raspberry Pi.
    pub fn key(&self, code: &Code) -> LookupKey {
        self.key_then(code, |key| key)
    }

    /// [`LookupKeyer::key`], with what depends on the key done before the working memory is
    /// wiped: `then` (a lookup, handing the answer to the loop) runs first, and the wipe (about
    /// a millisecond for 19 MiB) only after it, while the reply is on its way. The next
    /// computation waits for the wipe.
    pub fn key_then<R>(&self, code: &Code, then: impl FnOnce(LookupKey) -> R) -> R {
        self.computations.fetch_add(1, Ordering::Relaxed);
        self.raw(code.as_bytes(), then)
    }

    /// Derives a fixed-purpose value from the secret (used to check that the secret file
    /// matches the store); not counted as a code check.
    pub fn derive(&self, purpose: &[u8]) -> LookupKey {
        self.raw(purpose, |key| key)
    }

    fn raw<R>(&self, pwd: &[u8], then: impl FnOnce(LookupKey) -> R) -> R {
        let mut out = [0u8; LOOKUP_KEY_LEN];
        // argon2's `zeroize` feature wipes only its own stack values, not caller memory; what is
        // left in the blocks would let a memory dump test guesses more cheaply. The guard
        // wipes them however this ends, a panic in `then` included, before the lock is
        // released (a poisoned lock is taken over: the memory holds nothing to keep).
        let mut memory = Wiped(self.memory.lock().unwrap_or_else(|e| e.into_inner()));
        // The parameters and secret were validated in `new`, the store checks the salt's
        // length when it opens, the memory has the parameters' block count, and a code is a
        // few bytes long: hashing cannot fail.
        Argon2::new_with_secret(
            &self.secret,
            Algorithm::Argon2id,
            Version::V0x13,
            self.params.clone(),
        )
        .and_then(|a| a.hash_password_into_with_memory(pwd, &self.salt, &mut out, &mut *memory.0))
        .expect("argon2 parameters were validated when the keyer was built");
        let answer = then(LookupKey(out));
        drop(memory);
        answer
    }

    /// A cheap keyed digest (Argon2id with the site secret and salt at its smallest cost:
    /// 64 KiB, one pass) for data that may hold codes, such as a command's fields kept for
    /// idempotency. Not a code check: not counted, and not meant to resist guessing.
    pub fn digest(&self, data: &[u8]) -> LookupKey {
        let mut out = [0u8; LOOKUP_KEY_LEN];
        Params::new(64, 1, 1, Some(LOOKUP_KEY_LEN))
            .and_then(|p| {
                Argon2::new_with_secret(&self.secret, Algorithm::Argon2id, Version::V0x13, p)
            })
            .and_then(|a| a.hash_password_into(data, &self.salt, &mut out))
            .expect(
                "fixed parameters; the secret and salt were validated when the keyer was built",
            );
        LookupKey(out)
    }

    /// How many code lookup keys this keyer (and its clones) has computed.
    pub fn computations(&self) -> u64 {
        self.computations.load(Ordering::Relaxed)
    }
}

/// The Argon2 working memory, `blocks` KiB. On Linux it asks for transparent huge pages
/// before the memory is first touched: Argon2 reads it at random, and with 2 MiB pages most
/// of those reads no longer miss the TLB (one computation took 10–12% less here; where the
/// kernel's setting is `never`, nothing changes).
fn working_memory(blocks: usize) -> Vec<Block> {
    let mut memory: Vec<Block> = Vec::with_capacity(blocks);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // The allocation is megabytes: glibc maps it on its own, untouched so far. The advice
        // covers the whole pages inside it.
        let start = memory.as_mut_ptr() as usize;
        let end = start + blocks * std::mem::size_of::<Block>();
        let page = 4096;
        let aligned = start.div_ceil(page) * page;
        if end > aligned {
            // SAFETY: the range lies inside this vector's allocation; MADV_HUGEPAGE only
            // advises how it is backed and changes no content.
            unsafe {
                libc::madvise(
                    aligned as *mut libc::c_void,
                    end - aligned,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    memory.resize(blocks, Block::new());
    memory
}

/// The locked working memory, wiped when dropped (before the lock is released).
struct Wiped<'a>(std::sync::MutexGuard<'a, Vec<Block>>);

impl Drop for Wiped<'_> {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0.iter_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_normalised_and_checked() {
        let a = Code::tag("+3DD5FCFF").unwrap();
        assert_eq!(a, Code::tag("3d:d5:fc:ff").unwrap());
        assert_eq!(a, Code::tag("3D-D5-FC-FF").unwrap());
        assert_eq!(a, Code::tag("3d d5 fc ff").unwrap());
        assert!(a.is_tag());
        assert_eq!(
            Code::tag("74-10-37-94").unwrap(),
            Code::tag("74103794").unwrap()
        );
        // A Wiegand reader's decimal number, as it is.
        assert!(Code::tag("0012345678").is_ok());
        for bad in [
            "",
            "+",
            "ABCDE",
            "12345",
            "G1234567",
            "+3DD5FCFF!",
            &"A".repeat(21),
        ] {
            assert_eq!(Code::tag(bad), Err(CodeFormatError::Tag), "{bad}");
        }
        assert!(!Code::parse("1234", 4, 8).unwrap().is_tag());
        assert!(!Code::tag("123456").unwrap().is_common());
    }

    #[test]
    fn a_tag_of_digits_never_has_the_key_of_the_same_code() {
        let keyer = LookupKeyer::new(
            &[7u8; 32],
            &[9u8; 16],
            Argon2Params {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
        )
        .unwrap();
        let code = Code::parse("123456", 4, 8).unwrap();
        let tag = Code::tag("123456").unwrap();
        assert_ne!(keyer.key(&code), keyer.key(&tag));
        assert_eq!(
            keyer.computations(),
            2,
            "one Argon2id per check, tag or code"
        );
    }

    #[test]
    fn wiping_a_parsed_message_overwrites_every_string_in_it() {
        let mut v: serde_json::Value = serde_json::from_str(
            r#"{"code": "4711", "user": {"name": "0042", "x": ["1234", 5]}, "n": 6}"#,
        )
        .unwrap();
        wipe_json(&mut v);
        let text = v.to_string();
        for digits in ["4711", "0042", "1234"] {
            assert!(!text.contains(digits), "{text}");
        }
        assert_eq!(v["n"], 6);
    }

    fn keyer(secret: &[u8]) -> LookupKeyer {
        let params = Argon2Params {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        LookupKeyer::new(secret, b"0123456789abcdef", params).unwrap()
    }

    #[test]
    fn codes_are_ascii_digits_within_the_configured_length() {
        assert!(Code::parse("0042", 4, 6).is_ok());
        assert!(Code::parse("123456", 4, 6).is_ok());
        assert_eq!(
            Code::parse("123", 4, 6),
            Err(CodeFormatError::Length {
                len: 3,
                min: 4,
                max: 6
            })
        );
        assert!(matches!(
            Code::parse("1234567", 4, 6),
            Err(CodeFormatError::Length { len: 7, .. })
        ));
        for bad in ["12 34", "١٢٣٤", "-1234", "12a4", "１２３４", ""] {
            let err = Code::parse(bad, 4, 6).unwrap_err();
            assert!(
                matches!(
                    err,
                    CodeFormatError::NotDigits | CodeFormatError::Length { .. }
                ),
                "{bad:?} was accepted"
            );
        }
        assert_eq!(Code::parse("١٢٣٤", 4, 6), Err(CodeFormatError::NotDigits));
    }

    #[test]
    fn a_code_never_prints_its_digits() {
        let code = Code::parse("4711", 4, 6).unwrap();
        let shown = format!("{code:?} {:?}", Some(&code));
        assert!(!shown.contains("4711"), "{shown}");
    }

    #[test]
    fn leading_zeros_give_a_different_lookup_key() {
        let k = keyer(b"secret-one-secret-one-secret-one");
        let a = k.key(&Code::parse("0042", 4, 6).unwrap());
        let b = k.key(&Code::parse("00042", 4, 6).unwrap());
        assert_ne!(a, b);
    }

    #[test]
    fn the_lookup_key_depends_on_the_secret_and_is_stable() {
        let code = Code::parse("1234", 4, 6).unwrap();
        let one = keyer(b"secret-one-secret-one-secret-one");
        let two = keyer(b"secret-two-secret-two-secret-two");
        let first = one.key(&code);
        assert_eq!(first, one.key(&code));
        assert_ne!(first, two.key(&code));
        assert_eq!(one.computations(), 2);
        assert_eq!(one.clone().computations(), 2);
        assert_eq!(two.computations(), 1);
    }

    #[test]
    fn the_lookup_key_is_the_one_argon2id_gives_with_its_own_memory() {
        // Vectors computed with `Argon2::hash_password_into` (a fresh block each time), as the
        // keyer did before it reused one working memory.
        let code = Code::parse("0042", 4, 6).unwrap();
        let small = keyer(b"secret-one-secret-one-secret-one");
        let expected = "c453426c3df6ffae208eddb318dc1d61fbf7b59ea325a864375bb1d64636d3ed";
        assert_eq!(small.key(&code).to_hex(), expected);
        assert_eq!(
            small.key(&code).to_hex(),
            expected,
            "the reused memory changes nothing"
        );
        let default = LookupKeyer::new(
            b"secret-one-secret-one-secret-one",
            b"0123456789abcdef",
            Argon2Params {
                memory_kib: 19456,
                iterations: 2,
                parallelism: 1,
            },
        )
        .unwrap();
        assert_eq!(
            default.key(&code).to_hex(),
            "6c8d4fc277311a4550b1c829ba3526d0c3af476f9bf705c8843b1acad0453135"
        );
    }

    #[test]
    fn the_working_memory_is_wiped_after_each_computation() {
        let k = keyer(b"secret-one-secret-one-secret-one");
        k.key(&Code::parse("4711", 4, 6).unwrap());
        let memory = k.memory.lock().unwrap();
        assert!(memory.iter().all(|b| b.as_ref().iter().all(|&w| w == 0)));
    }

    #[test]
    fn what_needs_the_key_runs_before_the_wipe_and_the_next_computation_waits_for_it() {
        let k = keyer(b"secret-one-secret-one-secret-one");
        let code = Code::parse("4711", 4, 6).unwrap();
        let (key, held) = k.key_then(&code, |key| (key, k.memory.try_lock().is_err()));
        assert_eq!(key, k.key(&code));
        assert!(
            held,
            "the working memory must stay locked until it is wiped"
        );
        let memory = k.memory.lock().unwrap();
        assert!(memory.iter().all(|b| b.as_ref().iter().all(|&w| w == 0)));
    }

    #[test]
    fn the_working_memory_is_wiped_when_what_needs_the_key_panics() {
        let k = keyer(b"secret-one-secret-one-secret-one");
        let code = Code::parse("4711", 4, 6).unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            k.key_then(&code, |_| panic!("the lookup failed"))
        }));
        assert!(panicked.is_err());
        let memory = k.memory.lock().unwrap_or_else(|e| e.into_inner());
        assert!(memory.iter().all(|b| b.as_ref().iter().all(|&w| w == 0)));
        drop(memory);
        // A poisoned lock is taken over: the keyer still works.
        assert_eq!(k.key(&code), k.key(&code));
    }
    fn rss_kib() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    #[test]
    fn twenty_computations_on_four_threads_do_not_grow_memory() {
        // Other tests allocate in this process while they run: measure in a child process
        // that runs this test alone.
        const CHILD: &str = "KEYPAD_BRIDGE_RSS_CHILD";
        if std::env::var_os(CHILD).is_none() {
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "codes::tests::twenty_computations_on_four_threads_do_not_grow_memory",
                    "--exact",
                    "--test-threads=1",
                    "--quiet",
                ])
                .env(CHILD, "1")
                .output()
                .unwrap();
            assert!(
                child.status.success(),
                "the measuring child failed: {}",
                String::from_utf8_lossy(&child.stdout)
            );
            return;
        }
        // One pass (t = 1) keeps this quick in a debug build; the memory cost is m alone.
        let k = LookupKeyer::new(
            b"secret-one-secret-one-secret-one",
            b"0123456789abcdef",
            Argon2Params {
                memory_kib: 19456,
                iterations: 1,
                parallelism: 1,
            },
        )
        .unwrap();
        let code = Code::parse("4711", 4, 6).unwrap();
        k.key(&code);
        let Some(before) = rss_kib() else {
            return; // no /proc: nothing to measure
        };
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..5 {
                        k.key(&code);
                    }
                });
            }
        });
        let after = rss_kib().unwrap();
        assert_eq!(k.computations(), 21);
        // A fresh 19 MiB block per computation, kept by each thread's malloc arena, grew the
        // process by hundreds of MiB.
        assert!(
            after < before + 4 * 1024,
            "RSS grew from {before} KiB to {after} KiB"
        );
    }

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        let key = LookupKey([0xab; LOOKUP_KEY_LEN]);
        assert_eq!(LookupKey::from_hex(&key.to_hex()), Some(key));
        assert_eq!(LookupKey::from_hex("zz"), None);
        assert_eq!(LookupKey::from_hex(&"é".repeat(32)), None);
    }
}
