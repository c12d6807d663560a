//! `ETCD_*` environment variables, applied the way etcd's `flags.SetFlagsFromEnv` does.
//!
//! Every flag `--some-flag` may be given as `ETCD_SOME_FLAG`. A variable is used
//! only when its flag was not on the command line and its value is not empty.
//! A variable whose flag *was* on the command line is refused, exactly as etcd
//! 3.4+ refuses it ("conflicting environment variable ... is shadowed"); an
//! `ETCD_*` variable that names no flag is reported as a warning. `ETCD_VERSION`
//! is special in etcd ("cannot set special environment variable") and only warns.
//! `ETCDCTL_*` variables do not start with `ETCD_` and are never looked at.
//! The environment is passed in as a map, so nothing here reads process state.

use std::collections::{BTreeSet, HashMap};

use super::error::ConfigError;
use super::flags::{all_flags, FlagKind};
use super::settings::Draft;

/// The environment variable etcd reads for a flag: `ETCD_` + upper case, `-` → `_`.
pub fn env_key(flag_name: &str) -> String {
    format!("ETCD_{}", flag_name.to_ascii_uppercase().replace('-', "_"))
}

/// Applies `ETCD_*` variables from `env` to `draft`.
///
/// `given_on_command_line` holds the names of the known flags that were on
/// the command line. Warnings are appended to `warnings`, in a stable order.
pub fn apply(
    draft: &mut Draft,
    env: &HashMap<String, String>,
    given_on_command_line: &BTreeSet<&'static str>,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut shadowing: BTreeSet<String> = BTreeSet::new();
    for (name, kind) in all_flags() {
        let key = env_key(name);
        if kind == FlagKind::Version {
            continue;
        }
        if given_on_command_line.contains(name) {
            shadowing.insert(key);
            continue;
        }
        let Some(value) = env.get(&key).filter(|v| !v.is_empty()) else {
            continue;
        };
        used.insert(key.clone());
        match kind {
            FlagKind::Setting(setting) => draft.apply_str(setting, value).map_err(|reason| {
                ConfigError::Env(format!("invalid value {value:?} for {key}: {reason}"))
            })?,
            // A non-empty ETCD_CONFIG_FILE selects config-file mode before
            // the environment is applied; nothing to set here.
            FlagKind::ConfigFile => {}
            FlagKind::Unsupported { .. } => {
                if let Some(reason) = super::flags::refusal(name, value) {
                    return Err(ConfigError::Env(format!(
                        "{key} (--{name}) is not supported by localcluster: {reason}"
                    )));
                }
                warnings.push(format!(
                    "environment variable {key} (--{name}) is not supported by localcluster; ignored"
                ))
            }
            FlagKind::Obsolete => {
                warnings.push(format!("environment variable {key} (--{name}) is ignored"))
            }
            FlagKind::Version => {}
        }
    }

    let mut keys: Vec<&String> = env.keys().filter(|k| k.starts_with("ETCD_")).collect();
    keys.sort();
    for key in keys {
        let value = &env[key];
        if key == "ETCD_VERSION" {
            warnings.push(format!(
                "cannot set special environment variable {key}={value}"
            ));
        } else if used.contains(key) {
            continue;
        } else if shadowing.contains(key) {
            return Err(ConfigError::ShadowedEnv(key.clone()));
        } else {
            warnings.push(format!("unrecognized environment variable {key}={value}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::settings::Setting;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_keys_are_upper_case_with_underscores() {
        assert_eq!(env_key("initial-cluster"), "ETCD_INITIAL_CLUSTER");
        assert_eq!(env_key("name"), "ETCD_NAME");
    }

    #[test]
    fn variables_set_settings() {
        let mut d = Draft::new();
        let mut w = Vec::new();
        let e = env(&[("ETCD_NAME", "infra1"), ("ETCD_HEARTBEAT_INTERVAL", "50")]);
        apply(&mut d, &e, &BTreeSet::new(), &mut w).unwrap();
        assert_eq!(d.name, "infra1");
        assert_eq!(d.heartbeat_ms, 50);
        assert!(d.is_set(Setting::Name));
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn empty_variables_are_not_used() {
        let mut d = Draft::new();
        let mut w = Vec::new();
        apply(&mut d, &env(&[("ETCD_NAME", "")]), &BTreeSet::new(), &mut w).unwrap();
        assert_eq!(d.name, "default");
        assert!(!d.is_set(Setting::Name));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let mut d = Draft::new();
        let err = apply(
            &mut d,
            &env(&[("ETCD_SNAPSHOT_COUNT", "many")]),
            &BTreeSet::new(),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value \"many\" for ETCD_SNAPSHOT_COUNT: parse error (expected an unsigned integer)"
        );
    }

    #[test]
    fn flag_on_command_line_and_variable_conflict_like_etcd() {
        let mut d = Draft::new();
        let given = BTreeSet::from(["name"]);
        let err = apply(&mut d, &env(&[("ETCD_NAME", "x")]), &given, &mut Vec::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding command-line flag (either unset environment variable or disable flag)"
        );
        assert_eq!(d.name, "default");
    }

    #[test]
    fn unknown_unsupported_and_special_variables_warn() {
        let mut d = Draft::new();
        let mut w = Vec::new();
        let e = env(&[
            ("ETCD_FROBNICATE", "1"),
            ("ETCD_ENABLE_V2", "true"),
            ("ETCD_VERSION", "1"),
            ("ETCDCTL_API", "3"),
            ("ETCDCTL_ENDPOINTS", "http://127.0.0.1:2379"),
            ("PATH", "/bin"),
        ]);
        apply(&mut d, &e, &BTreeSet::new(), &mut w).unwrap();
        assert_eq!(
            w,
            vec![
                "environment variable ETCD_ENABLE_V2 (--enable-v2) is not supported by localcluster; ignored",
                "unrecognized environment variable ETCD_FROBNICATE=1",
                "cannot set special environment variable ETCD_VERSION=1",
            ]
        );
    }
}
