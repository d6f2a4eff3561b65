//! `[[sources]]`: who may send feedback (a name and a bearer token each),
//! and the rate limits of feedback sources: the token resolution done at
//! load (`token_file` read, `EDDY_SOURCES__<NAME>__TOKEN` applied by the
//! environment layer), the checks on names, tokens and limits, and the
//! redacted copy `eddy config` prints. What the server does with them is
//! `serving::sources`'s.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Config, Error};

/// `[[sources]]`: a feedback credential. When any are configured, `POST
/// /feedback` needs `Authorization: Bearer <token>`, and the examples'
/// source is the entry's `name`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    /// The bearer token (or `token_file`, or `EDDY_SOURCES__<NAME>__TOKEN`).
    /// After loading it holds the token whichever way it was given.
    #[serde(default)]
    pub token: String,
    /// A file holding the token (surrounding whitespace ignored), read at
    /// load.
    #[serde(default)]
    pub token_file: PathBuf,
    /// Examples per second this source may send, over all models; 0:
    /// unlimited.
    #[serde(default)]
    pub rate: f64,
    /// Examples it may send at once above `rate`; 0: one second's worth.
    #[serde(default)]
    pub burst: u32,
}

/// What `eddy config` prints instead of a token.
pub const REDACTED: &str = "<redacted>";

/// Highest `rate` (examples per second): one example per nanosecond, the
/// rate limiter's resolution.
pub const MAX_RATE: f64 = 1e9;

/// Longest a bucket may take to refill (`burst / rate`), in seconds: keeps
/// the limiter's nanosecond arithmetic far from overflow, and is far beyond
/// any useful setting (about 11.6 days).
pub const MAX_REFILL_S: f64 = 1e6;

/// A rate limit, as the limiter takes it: `rate` examples per second with
/// `burst` at once (`burst` resolved: never 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub rate: f64,
    pub burst: u32,
}

impl RateLimit {
    /// The limit `rate` and `burst` configure, or `None` for unlimited
    /// (`rate = 0`). A `burst` of 0 means one second's worth (at least 1).
    pub fn new(rate: f64, burst: u32) -> Option<Self> {
        if rate <= 0.0 || !rate.is_finite() {
            return None;
        }
        let burst = match burst {
            0 => rate.ceil().clamp(1.0, f64::from(u32::MAX)) as u32,
            b => b,
        };
        Some(Self { rate, burst })
    }

    /// How long one example's share of the rate is.
    pub fn per_example(&self) -> std::time::Duration {
        // At least a nanosecond: the limiter counts in nanoseconds.
        std::time::Duration::from_nanos(((1e9 / self.rate).round() as u64).max(1))
    }
}

impl SourceConfig {
    /// This entry's rate limit; `None`: unlimited.
    pub fn limit(&self) -> Option<RateLimit> {
        RateLimit::new(self.rate, self.burst)
    }
}

/// Reads each entry's `token_file` into its `token` (trimmed), after
/// checking that each entry gives its token exactly one way. Runs at load,
/// before `validate`.
pub(super) fn resolve_tokens(sources: &mut [SourceConfig]) -> Result<(), Error> {
    for (i, s) in sources.iter_mut().enumerate() {
        let key = |k: &str| entry_key(i, &s.name, k);
        let from_file = !s.token_file.as_os_str().is_empty();
        match (s.token.is_empty(), from_file) {
            (false, true) => {
                return Err(Error::Invalid {
                    key: key("token_file"),
                    message: "give the token one way: token, token_file or EDDY_SOURCES__<NAME>__TOKEN, not two".into(),
                });
            }
            (true, true) => {
                let text = std::fs::read_to_string(&s.token_file).map_err(|e| Error::Invalid {
                    key: key("token_file"),
                    message: format!("cannot read {}: {e}", s.token_file.display()),
                })?;
                s.token = text.trim().to_owned();
                if s.token.is_empty() {
                    return Err(Error::Invalid {
                        key: key("token_file"),
                        message: format!("{} holds no token", s.token_file.display()),
                    });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The checks on `[[sources]]` as a whole: names valid (the rule for
/// names clients send, `http::source`) and unique, a non-empty token per
/// entry that a header can carry, tokens distinct, limits usable.
pub(super) fn validate(sources: &[SourceConfig]) -> Result<(), Error> {
    for (i, s) in sources.iter().enumerate() {
        let invalid = |k: &str, message: String| Error::Invalid {
            key: entry_key(i, &s.name, k),
            message,
        };
        if let Some(problem) = crate::http::source::name_problem(&s.name) {
            return Err(invalid("name", problem));
        }
        if sources[..i].iter().any(|o| o.name == s.name) {
            return Err(invalid(
                "name",
                "two [[sources]] entries share this name".into(),
            ));
        }
        if s.token.is_empty() {
            return Err(invalid(
                "token",
                "missing: set token, token_file or EDDY_SOURCES__<NAME>__TOKEN".into(),
            ));
        }
        if !s.token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "token",
                "must be printable ASCII without spaces (it travels in an Authorization header)"
                    .into(),
            ));
        }
        if let Some(other) = sources[..i].iter().find(|o| o.token == s.token) {
            return Err(invalid(
                "token",
                format!(
                    "is also the token of `{}`: each source needs its own",
                    other.name
                ),
            ));
        }
        validate_limit(s.rate, s.burst, &|k| entry_key(i, &s.name, k))?;
    }
    Ok(())
}

/// A rate and burst the limiter can work with; `key` names `rate` and
/// `burst` where they are configured.
pub(super) fn validate_limit(
    rate: f64,
    burst: u32,
    key: &dyn Fn(&str) -> String,
) -> Result<(), Error> {
    if !(rate.is_finite() && (0.0..=MAX_RATE).contains(&rate)) {
        return Err(Error::Invalid {
            key: key("rate"),
            message: format!(
                "must be a number of examples per second from 0 to {MAX_RATE:e} (0: unlimited)"
            ),
        });
    }
    if let Some(limit) = RateLimit::new(rate, burst)
        && f64::from(limit.burst) / rate > MAX_REFILL_S
    {
        return Err(Error::Invalid {
            key: key("burst"),
            message: format!(
                "{} examples take {:.0} s to refill at rate = {rate}; at most {MAX_REFILL_S:e} s",
                limit.burst,
                f64::from(limit.burst) / rate
            ),
        });
    }
    Ok(())
}

/// `sources[crm].token`, or `sources[0].token` for an entry without a name.
fn entry_key(i: usize, name: &str, k: &str) -> String {
    if name.is_empty() {
        format!("sources[{i}].{k}")
    } else {
        format!("sources[{name}].{k}")
    }
}

impl Config {
    /// A copy fit to print (`eddy config`): every token replaced by
    /// `<redacted>` (an empty `admin.token` stays empty, since that says
    /// the admin routes are open). `token_file` paths are kept: they say
    /// where a token comes from without showing it.
    pub fn redacted(&self) -> Config {
        let mut shown = self.clone();
        if !shown.admin.token.is_empty() {
            shown.admin.token = REDACTED.into();
        }
        for s in &mut shown.sources {
            s.token = REDACTED.into();
        }
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, vars: &[(&str, &str)]) -> Result<Config, Error> {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("eddy.toml");
        std::fs::write(&path, text).expect("write");
        Config::load(
            Some(&path),
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn a_token_comes_from_the_file_the_token_file_or_the_environment() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("crm.token");
        std::fs::write(&file, "  from-file-7\n").expect("write");
        let text = format!(
            "[[sources]]\nname = \"crm\"\ntoken_file = {:?}\n\
             [[sources]]\nname = \"web-shop\"\ntoken = \"inline\"\nrate = 5.0\n\
             [[sources]]\nname = \"labellers\"\n",
            file.display().to_string()
        );
        let c = load(&text, &[("EDDY_SOURCES__LABELLERS__TOKEN", "12345")]).expect("loads");
        let tokens: Vec<_> = c.sources.iter().map(|s| s.token.as_str()).collect();
        assert_eq!(tokens, ["from-file-7", "inline", "12345"]);
        assert_eq!(
            c.sources[1].limit(),
            Some(RateLimit {
                rate: 5.0,
                burst: 5
            })
        );
        assert_eq!(c.sources[0].limit(), None, "rate 0 is unlimited");
        // A name with `-` is matched with `_`, as model names are; so is a
        // position.
        let c = load(
            "[[sources]]\nname = \"web-shop\"\n[[sources]]\nname = \"b\"\n",
            &[
                ("EDDY_SOURCES__WEB_SHOP__TOKEN", "t1"),
                ("EDDY_SOURCES__1__TOKEN", "t2"),
                ("EDDY_SOURCES__1__RATE", "2.5"),
            ],
        )
        .expect("loads");
        assert_eq!(c.sources[0].token, "t1");
        assert_eq!(
            (c.sources[1].token.as_str(), c.sources[1].rate),
            ("t2", 2.5)
        );
    }

    #[test]
    fn bad_sources_are_refused_naming_the_key() {
        // (file text, variables, key named, what the message says)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (
                "[[sources]]\nname = \"crm\"\ntoken_file = \"/nonexistent/eddy/crm.token\"",
                &[],
                "sources[crm].token_file",
                "cannot read /nonexistent/eddy/crm.token",
            ),
            (
                "[[sources]]\nname = \"crm\"\ntoken = \"a\"\ntoken_file = \"/etc/hostname\"",
                &[],
                "sources[crm].token_file",
                "one way",
            ),
            (
                "[[sources]]\nname = \"crm\"\ntoken_file = \"t\"",
                &[("EDDY_SOURCES__CRM__TOKEN", "x")],
                "sources[crm].token_file",
                "one way",
            ),
            (
                "[[sources]]\nname = \"crm\"",
                &[],
                "sources[crm].token",
                "missing",
            ),
            (
                "[[sources]]\nname = \"crm\"\ntoken = \"\"",
                &[],
                "sources[crm].token",
                "missing",
            ),
            (
                "[[sources]]\nname = \"crm\"\ntoken = \"two words\"",
                &[],
                "sources[crm].token",
                "printable ASCII",
            ),
            (
                "[[sources]]\nname = \"a\"\ntoken = \"same\"\n[[sources]]\nname = \"b\"\ntoken = \"same\"",
                &[],
                "sources[b].token",
                "also the token of `a`",
            ),
            (
                "[[sources]]\nname = \"a\"\ntoken = \"x\"\n[[sources]]\nname = \"a\"\ntoken = \"y\"",
                &[],
                "sources[a].name",
                "share this name",
            ),
            (
                "[[sources]]\nname = \"\"\ntoken = \"x\"",
                &[],
                "sources[0].name",
                "1 to 128 bytes",
            ),
            (
                "[[sources]]\nname = \"tab\\there\"\ntoken = \"x\"",
                &[],
                "sources[tab\there].name",
                "control",
            ),
            (
                "[[sources]]\nname = \"a\"\ntoken = \"x\"\nrate = -1.0",
                &[],
                "sources[a].rate",
                "from 0",
            ),
            (
                "[[sources]]\nname = \"a\"\ntoken = \"x\"\nrate = 0.001\nburst = 100000",
                &[],
                "sources[a].burst",
                "refill",
            ),
            (
                "[[sources]]\nname = \"a\"\ntoken = \"x\"\nhost = \"y\"",
                &[],
                "sources",
                "unknown field `host`",
            ),
            (
                "",
                &[("EDDY_SOURCES__CRM__TOKEN", "x")],
                "EDDY_SOURCES__CRM__TOKEN",
                "no [[sources]] entries",
            ),
            (
                "[[sources]]\nname = \"a\"\ntoken = \"x\"",
                &[("EDDY_SOURCES__CRM__TOKEN", "x")],
                "EDDY_SOURCES__CRM__TOKEN",
                "no source named or numbered `crm`",
            ),
            (
                "[[models]]\nname = \"m\"\ntask = \"binary\"\n[models.guard]\nrate = 0.001\nburst = 100000",
                &[],
                "models[m].guard.burst",
                "refill",
            ),
        ];
        for (text, vars, key, says) in cases {
            let e = load(text, vars).expect_err(text).to_string();
            assert!(
                e.contains(key) && e.contains(says),
                "{text:?} {vars:?}: {e:?} should name {key} and say {says}"
            );
        }
    }

    #[test]
    fn redacted_hides_every_token_and_keeps_the_rest() {
        let mut c = Config::from_toml_over_default(
            "[admin]\ntoken = \"admin-secret\"\n[[sources]]\nname = \"crm\"\ntoken = \"crm-secret\"\nrate = 3.0",
        )
        .expect("valid");
        let text = toml::to_string(&c.redacted()).expect("serialises");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("<redacted>") && text.contains("crm") && text.contains("rate = 3.0"));
        c.admin.token.clear();
        let text = toml::to_string(&c.redacted()).expect("serialises");
        assert!(
            text.contains("token = \"\""),
            "an open admin API says so: {text}"
        );
    }

    #[test]
    fn burst_zero_is_one_seconds_worth() {
        let l = |rate, burst| RateLimit::new(rate, burst).map(|l| l.burst);
        assert_eq!(l(0.0, 10), None);
        assert_eq!(l(2.5, 0), Some(3));
        assert_eq!(l(0.1, 0), Some(1));
        assert_eq!(l(100.0, 7), Some(7));
        let every = RateLimit::new(4.0, 0).expect("limited").per_example();
        assert_eq!(every, std::time::Duration::from_millis(250));
        let fastest = RateLimit::new(MAX_RATE, 0).expect("limited").per_example();
        assert_eq!(fastest, std::time::Duration::from_nanos(1));
    }
}
