//! Flags and environment variables over a TOML config file, one declaration per key (used by
//! the relay's and signaling's configs): see [`config_overrides!`](crate::config_overrides).

/// Declares each flag and environment variable once: its help (which starts with the file key it
/// sets), its clap settings, its type, and the file key (`value`: a key with a default; `some`:
/// an optional key; `custom`: applied by the caller). Generates `pub struct Overrides` (a
/// `clap::Args`), `Overrides::KEYS` (each field and its key) and `Overrides::apply_plain(&self,
/// &mut FileType)`, which sets every key whose override is given, except the `custom` ones.
///
/// ```
/// #[derive(Default)]
/// pub struct Server { pub listen: String }
/// #[derive(Default)]
/// pub struct FileConfig { pub server: Server, pub region: Option<String> }
///
/// cluster::config_overrides! {
///     for FileConfig;
///     /// server.listen: UDP address.
///     #[arg(long, env = "EXAMPLE_LISTEN")]
///     listen: String => value server.listen;
///     /// region: the region served.
///     #[arg(long, env = "EXAMPLE_REGION")]
///     region: String => some region;
/// }
///
/// let mut file = FileConfig::default();
/// let o = Overrides { listen: Some("127.0.0.1:3478".into()), region: Some("eu".into()) };
/// o.apply_plain(&mut file);
/// assert_eq!((file.server.listen.as_str(), file.region.as_deref()), ("127.0.0.1:3478", Some("eu")));
/// let keys: Vec<(&str, String)> = Overrides::KEYS.iter().map(|(f, k)| (*f, k.replace(' ', ""))).collect();
/// assert_eq!(keys, [("listen", "server.listen".to_owned()), ("region", "region".to_owned())]);
/// use clap::Args;
/// let command = Overrides::augment_args(clap::Command::new("example"));
/// assert_eq!(cluster::overrides::check_help(&command, Overrides::KEYS), Ok(()));
/// ```
#[macro_export]
macro_rules! config_overrides {
    (@set value, $slot:expr, $v:expr) => {
        if let Some(v) = $v {
            $slot = v.clone();
        }
    };
    (@set some, $slot:expr, $v:expr) => {
        if let Some(v) = $v {
            $slot = Some(v.clone());
        }
    };
    (@set custom, $slot:expr, $v:expr) => {};
    (for $file:ty; $( $(#[$meta:meta])* $name:ident: $ty:ty => $kind:ident $($key:ident).+; )*) => {
        /// Flags and environment variables; each overrides the file key named in its help.
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct Overrides {
            $( $(#[$meta])* pub $name: Option<$ty>, )*
        }

        impl Overrides {
            /// Each override's field and the file key it sets.
            pub const KEYS: &[(&str, &str)] = &[$( (stringify!($name), stringify!($($key).+)), )*];

            /// Sets every file key whose override is given, except the `custom` ones.
            pub fn apply_plain(&self, file: &mut $file) {
                $( $crate::config_overrides!(@set $kind, file.$($key).+, &self.$name); )*
            }
        }
    };
}

/// Checks what the macro cannot: that the help of every override in `command` starts with the
/// file key it sets (`keys`: `Overrides::KEYS`) and that each has an environment variable. The
/// first problem, in words.
pub fn check_help(command: &clap::Command, keys: &[(&str, &str)]) -> Result<(), String> {
    if keys.is_empty() {
        return Err("no overrides".into());
    }
    for (field, key) in keys {
        let key = key.replace(' ', "");
        let arg = command.get_arguments().find(|a| a.get_id() == *field).ok_or_else(|| format!("no flag {field}"))?;
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        // "allocations.max_total (0 = no limit)", "server.listen: UDP address ...", "log.level."
        let first = help.split([':', ' ']).next().unwrap_or_default().trim_end_matches('.');
        if first != key {
            return Err(format!("--{field} sets {key}, its help says {help:?}"));
        }
        if arg.get_env().is_none() {
            return Err(format!("--{field} has no environment variable"));
        }
    }
    Ok(())
}
