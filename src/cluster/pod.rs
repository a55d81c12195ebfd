//! A process index from the host name, for `-p auto` (`SHOPFLOW_PROCESS=auto`).
//!
//! A Kubernetes StatefulSet names its pods `<name>-<ordinal>`, ordinals `0..replicas`, and sets
//! each container's `HOSTNAME` to its pod's name: the ordinal is the process index, so one pod
//! template serves every process.

/// Why a host name gives no process index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrdinalError {
    /// `HOSTNAME` is unset or not Unicode.
    #[error(
        "HOSTNAME is not set: `auto` takes the process index from a StatefulSet pod's name (<name>-<ordinal>)"
    )]
    NoHostname,
    /// The name does not end in `-<ordinal>`.
    #[error(
        "host name {name:?} does not end in -<ordinal> (a StatefulSet pod's name, e.g. shopflow-2): {why}"
    )]
    NotAnOrdinal {
        /// The host name, as found (at most 64 characters of it).
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// The longest host name quoted in an error: a pod name is at most 63 characters.
const QUOTED: usize = 64;

/// The ordinal at the end of `hostname`: `shopflow-2` gives 2. Only the first label of a
/// fully qualified name counts (`shopflow-2.peers.ns.svc` gives 2). The ordinal is plain ASCII
/// decimal without a sign or leading zeros (as Kubernetes writes it) and fits in a `u32`.
///
/// ```
/// use shopflow::cluster::pod::ordinal;
///
/// assert_eq!(ordinal("shopflow-2"), Ok(2));
/// assert_eq!(ordinal("shop-flow-10.shopflow-peers.default.svc"), Ok(10));
/// assert!(ordinal("shopflow").is_err());
/// assert!(ordinal("shopflow-02").is_err());
/// ```
pub fn ordinal(hostname: &str) -> Result<u32, OrdinalError> {
    let refuse = |why| OrdinalError::NotAnOrdinal {
        name: hostname.chars().take(QUOTED).collect(),
        why,
    };
    let pod = hostname.split('.').next().unwrap_or_default();
    let Some((name, digits)) = pod.rsplit_once('-') else {
        return Err(refuse("it has no '-'"));
    };
    if name.is_empty() {
        return Err(refuse("nothing comes before the '-'"));
    }
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse("what follows the last '-' is not a decimal number"));
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return Err(refuse("the ordinal has a leading zero"));
    }
    digits
        .parse::<u32>()
        .map_err(|_| refuse("the ordinal is too large"))
}

/// The ordinal of this host's name, read from `HOSTNAME` (which Kubernetes sets to the pod name).
pub fn ordinal_from_env() -> Result<u32, OrdinalError> {
    let name = std::env::var("HOSTNAME").map_err(|_| OrdinalError::NoHostname)?;
    ordinal(&name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn statefulset_pod_names_give_their_ordinal() {
        for (name, index) in [
            ("shopflow-0", 0),
            ("shopflow-2", 2),
            ("my-shop-flow-17", 17),
            ("a-4294967295", u32::MAX),
            ("shopflow-3.shopflow-peers.prod.svc.cluster.local", 3),
        ] {
            assert_eq!(ordinal(name), Ok(index), "{name}");
        }
    }

    #[test]
    fn hostile_names_are_clear_errors() {
        for (name, why) in [
            ("", "no '-'"),
            ("shopflow", "no '-'"),
            ("-3", "nothing comes before"),
            ("shopflow-", "not a decimal number"),
            ("shopflow-x", "not a decimal number"),
            ("shopflow-+1", "not a decimal number"),
            ("shopflow-1a", "not a decimal number"),
            ("shopflow-٣", "not a decimal number"),
            ("shopflow- 1", "not a decimal number"),
            ("shopflow-01", "leading zero"),
            ("shopflow-4294967296", "too large"),
            ("shopflow-99999999999999999999999", "too large"),
            (".shopflow-1", "no '-'"),
        ] {
            let error = ordinal(name).expect_err(name).to_string();
            assert!(error.contains(why), "{name}: {error}");
            assert!(error.contains("StatefulSet"), "{name}: {error}");
        }
        // A long name is quoted, not copied whole.
        let long = format!("{}-x", "a".repeat(10_000));
        assert!(ordinal(&long).expect_err("refused").to_string().len() < 300);
    }

    proptest! {
        /// Any name with any ordinal appended gives that ordinal back; any other text never
        /// panics.
        #[test]
        fn an_appended_ordinal_comes_back(name in "[a-z]([-a-z0-9]{0,40}[a-z0-9])?", n: u32) {
            prop_assert_eq!(ordinal(&format!("{name}-{n}")), Ok(n));
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,80}") {
            if let Ok(n) = ordinal(&text) {
                let pod = text.split('.').next().unwrap_or_default();
                let suffix = format!("-{n}");
                prop_assert!(pod.ends_with(&suffix), "{} from {:?}", n, text);
            }
        }
    }
}
