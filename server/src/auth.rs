//! Authentication (foundation layer): the credential store (SCRAM
//! credentials, salted, never a password), its durable file, the SASL
//! server side of one exchange (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 through
//! rsasl: no SCRAM arithmetic of our own), bootstrap users from the config
//! and the per-address limit on failed logins.
//!
//! Invariants and limits:
//! - A password is never stored, logged or kept past the exchange that
//!   carried it: the store holds `salt, iterations, StoredKey, ServerKey`
//!   per user and mechanism (RFC 5802), derived with rsasl's own
//!   `hash_password` and `derive_keys`. PLAIN is checked against the
//!   SCRAM-SHA-256 credential (or SHA-512 if that is the only one) by the
//!   same derivation, compared in constant time.
//! - The file `security.json` in the data directory is written atomically
//!   (tmp, fsync, rename, directory fsync) before a change is answered; a
//!   crc or version mismatch refuses to start (as the metadata file does).
//!   One process-wide store behind a mutex that is never held across an
//!   await (authentication is not on the data path).
//! - At most `USERS_MAX` users; names at most `USER_NAME_BYTES_MAX` bytes;
//!   iterations within Kafka's bounds (4096..=16384); SASL tokens at most
//!   `SASL_TOKEN_BYTES_MAX` bytes.
//! - An address with `FAILED_LOGINS_MAX` failed logins inside
//!   `FAILED_LOGIN_WINDOW_MS` is refused at once until the window passes
//!   (at most `FAILED_LOGIN_ADDRESSES_MAX` addresses tracked; the oldest
//!   entry is dropped past it).
//! - Cluster mode: the file is per node, not replicated (a gap).

use rsasl::callback::{Context, Request, SessionCallback, SessionData};
use rsasl::mechanisms::scram::properties::ScramStoredPassword;
use rsasl::mechanisms::scram::tools::{derive_keys, hash_password};
use rsasl::prelude::{Mechname, SASLConfig, SASLServer, SessionError, State};
use rsasl::property::{AuthId, AuthzId, Password};
use rsasl::validate::{Validate, Validation, ValidationError};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Users the store holds.
pub const USERS_MAX: usize = 10_000;
/// Longest user name.
pub const USER_NAME_BYTES_MAX: usize = 256;
/// Kafka's bounds on SCRAM iterations.
pub const SCRAM_ITERATIONS_MIN: u32 = 4096;
pub const SCRAM_ITERATIONS_MAX: u32 = 16384;
/// Iterations of credentials the server derives itself (bootstrap users).
pub const SCRAM_ITERATIONS_DEFAULT: u32 = 8192;
/// Longest salt accepted.
pub const SCRAM_SALT_BYTES_MAX: usize = 128;
/// Largest SASL token one request may carry.
pub const SASL_TOKEN_BYTES_MAX: usize = 64 << 10;
/// Failed logins one address may have inside the window.
pub const FAILED_LOGINS_MAX: u32 = 5;
pub const FAILED_LOGIN_WINDOW_MS: u64 = 10_000;
/// Addresses whose failed logins are remembered.
pub const FAILED_LOGIN_ADDRESSES_MAX: usize = 10_000;
/// The store file's format.
pub const SECURITY_FORMAT_VERSION: u32 = 1;
pub const SECURITY_FILE: &str = "security.json";

/// The SCRAM mechanisms, with Kafka's numbers (DescribeUserScramCredentials).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ScramMechanism {
    #[serde(rename = "SCRAM-SHA-256")]
    Sha256,
    #[serde(rename = "SCRAM-SHA-512")]
    Sha512,
}

impl ScramMechanism {
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    pub fn kafka_code(self) -> i8 {
        match self {
            ScramMechanism::Sha256 => 1,
            ScramMechanism::Sha512 => 2,
        }
    }

    pub fn from_kafka_code(c: i8) -> Option<ScramMechanism> {
        match c {
            1 => Some(ScramMechanism::Sha256),
            2 => Some(ScramMechanism::Sha512),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(s: &str) -> Option<ScramMechanism> {
        ScramMechanism::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// One user's credential for one mechanism (RFC 5802 section 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    #[serde(with = "hex")]
    pub salt: Vec<u8>,
    pub iterations: u32,
    #[serde(with = "hex")]
    pub stored_key: Vec<u8>,
    #[serde(with = "hex")]
    pub server_key: Vec<u8>,
}

mod hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let text: String = b.iter().map(|x| format!("{x:02x}")).collect();
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd hex length"));
        }
        (0..text.len())
            .step_by(2)
            .map(|i| {
                text.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| serde::de::Error::custom("bad hex"))
            })
            .collect()
    }
}

fn keys_from_salted<D>(salted: &[u8]) -> (Vec<u8>, Vec<u8>)
where
    D: Digest + digest::core_api::BlockSizeUser + digest::FixedOutputReset,
{
    let (client_key, server_key) = derive_keys::<D>(salted);
    (D::digest(client_key).to_vec(), server_key.to_vec())
}

fn salted_password<D>(password: &[u8], iterations: u32, salt: &[u8]) -> Vec<u8>
where
    D: Digest + digest::core_api::BlockSizeUser + Clone + Sync,
{
    let mut out = Default::default();
    hash_password::<D>(password, iterations, salt, &mut out);
    out.to_vec()
}

/// Why a credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("iterations {0} outside {SCRAM_ITERATIONS_MIN}..={SCRAM_ITERATIONS_MAX}")]
    Iterations(i32),
    #[error("salt of {0} bytes (1..={SCRAM_SALT_BYTES_MAX} expected)")]
    Salt(usize),
    #[error("salted password of {got} bytes, {mechanism:?} needs {want}")]
    SaltedPassword {
        mechanism: ScramMechanism,
        got: usize,
        want: usize,
    },
    #[error("user name of {0} bytes (1..={USER_NAME_BYTES_MAX} expected)")]
    UserName(usize),
    #[error("{USERS_MAX} users already exist")]
    TooManyUsers,
    #[error("no such credential")]
    NotFound,
    #[error("writing {path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

impl ScramCredential {
    /// From a salted password (AlterUserScramCredentials carries one; the
    /// password itself never reaches the broker).
    pub fn from_salted_password(
        m: ScramMechanism,
        salt: &[u8],
        iterations: i32,
        salted: &[u8],
    ) -> Result<ScramCredential, CredentialError> {
        let iterations = u32::try_from(iterations)
            .ok()
            .filter(|i| (SCRAM_ITERATIONS_MIN..=SCRAM_ITERATIONS_MAX).contains(i))
            .ok_or(CredentialError::Iterations(iterations))?;
        if salt.is_empty() || salt.len() > SCRAM_SALT_BYTES_MAX {
            return Err(CredentialError::Salt(salt.len()));
        }
        let want = match m {
            ScramMechanism::Sha256 => 32,
            ScramMechanism::Sha512 => 64,
        };
        if salted.len() != want {
            return Err(CredentialError::SaltedPassword {
                mechanism: m,
                got: salted.len(),
                want,
            });
        }
        let (stored_key, server_key) = match m {
            ScramMechanism::Sha256 => keys_from_salted::<sha2::Sha256>(salted),
            ScramMechanism::Sha512 => keys_from_salted::<sha2::Sha512>(salted),
        };
        Ok(ScramCredential {
            salt: salt.to_vec(),
            iterations,
            stored_key,
            server_key,
        })
    }

    /// From a password, with a fresh random salt (bootstrap users, the CLI).
    pub fn from_password(
        m: ScramMechanism,
        password: &[u8],
        iterations: u32,
    ) -> Result<ScramCredential, CredentialError> {
        let mut salt = [0u8; 24];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
            .map_err(|_| CredentialError::Salt(0))?;
        let salted = salt_password(m, password, iterations, &salt);
        ScramCredential::from_salted_password(m, &salt, iterations as i32, &salted)
    }

    /// Whether `password` derives this credential's StoredKey (PLAIN).
    pub fn verify_password(&self, m: ScramMechanism, password: &[u8]) -> bool {
        let salted = salt_password(m, password, self.iterations, &self.salt);
        let (stored, _) = match m {
            ScramMechanism::Sha256 => keys_from_salted::<sha2::Sha256>(&salted),
            ScramMechanism::Sha512 => keys_from_salted::<sha2::Sha512>(&salted),
        };
        // Constant time: the comparison reveals nothing of the key.
        stored.len() == self.stored_key.len()
            && stored
                .iter()
                .zip(&self.stored_key)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// SaltedPassword = Hi(password, salt, iterations), through rsasl.
pub fn salt_password(m: ScramMechanism, password: &[u8], iterations: u32, salt: &[u8]) -> Vec<u8> {
    match m {
        ScramMechanism::Sha256 => salted_password::<sha2::Sha256>(password, iterations, salt),
        ScramMechanism::Sha512 => salted_password::<sha2::Sha512>(password, iterations, salt),
    }
}

/// What the store file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityBody {
    /// user -> mechanism -> credential.
    pub users: BTreeMap<String, BTreeMap<ScramMechanism, ScramCredential>>,
}

#[derive(Serialize, Deserialize)]
struct SecurityFile {
    format_version: u32,
    crc32c: u32,
    body: serde_json::Value,
}

/// `[sasl]` in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslFile {
    /// Require SASL on the Kafka listener.
    #[serde(default)]
    pub kafka: bool,
    /// Mechanisms offered [default: all three].
    pub mechanisms: Option<Vec<String>>,
    /// Users created at start-up if they do not exist yet, so that turning
    /// authentication on cannot lock the operator out.
    #[serde(default)]
    pub bootstrap_users: Vec<BootstrapUser>,
    /// Principals (`User:NAME`) that bypass authorization.
    #[serde(default)]
    pub super_users: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapUser {
    pub name: String,
    /// Read at start-up only; the store keeps its salted derivation.
    pub password: String,
}

/// The resolved SASL settings.
#[derive(Debug, Clone, Default)]
pub struct SaslSettings {
    pub kafka: bool,
    pub mechanisms: Vec<String>,
    pub bootstrap_users: Vec<BootstrapUser>,
    pub super_users: Vec<String>,
}

pub const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

impl SaslFile {
    pub fn resolve(self) -> Result<SaslSettings, String> {
        let mechanisms = self
            .mechanisms
            .unwrap_or_else(|| MECHANISMS.iter().map(|s| s.to_string()).collect());
        for m in &mechanisms {
            if !MECHANISMS.contains(&m.as_str()) {
                return Err(format!(
                    "[sasl] mechanisms: {m:?} is not one of {MECHANISMS:?}"
                ));
            }
        }
        Ok(SaslSettings {
            kafka: self.kafka,
            mechanisms,
            bootstrap_users: self.bootstrap_users,
            super_users: self.super_users,
        })
    }
}

/// The process-wide credential store.
pub struct Store {
    path: PathBuf,
    body: Arc<Mutex<SecurityBody>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    pub settings: SaslSettings,
    sasl: Arc<SASLConfig>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CredentialError + '_ {
    move |e| CredentialError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Writes the store atomically: tmp + fsync + rename + directory fsync.
fn write_atomic(path: &Path, body: &SecurityBody) -> Result<(), CredentialError> {
    let value = serde_json::to_value(body).map_err(|e| CredentialError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let compact = serde_json::to_vec(&value).unwrap_or_default();
    let file = SecurityFile {
        format_version: SECURITY_FORMAT_VERSION,
        crc32c: crc32c::crc32c(&compact),
        body: value,
    };
    let bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

/// Reads the store file (an absent file is an empty store).
pub fn load_body(path: &Path) -> Result<SecurityBody, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SecurityBody::default()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let file: SecurityFile =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if file.format_version != SECURITY_FORMAT_VERSION {
        return Err(format!(
            "{}: format version {} (this build reads {SECURITY_FORMAT_VERSION})",
            path.display(),
            file.format_version
        ));
    }
    let compact = serde_json::to_vec(&file.body).unwrap_or_default();
    if crc32c::crc32c(&compact) != file.crc32c {
        return Err(format!("{}: crc32c mismatch", path.display()));
    }
    serde_json::from_value(file.body).map_err(|e| format!("{}: {e}", path.display()))
}

/// What one SASL exchange has come to.
#[derive(Debug)]
pub enum Step {
    /// Send these bytes and wait for the client's next token.
    Continue(Vec<u8>),
    /// Authenticated as `principal` (`User:NAME`); send `out` last.
    Done { principal: String, out: Vec<u8> },
    /// Refused; the reason names no secret.
    Failed(String),
}

struct StromValidation;
impl Validation for StromValidation {
    type Value = Option<String>;
}

/// One connection's SASL exchange in progress.
pub struct Exchange {
    session: rsasl::prelude::Session<StromValidation>,
}

struct Callback {
    body: Arc<Mutex<SecurityBody>>,
    /// Random per process: an unknown user gets a made-up credential
    /// derived from it, so a SCRAM exchange for them runs to the proof and
    /// fails there like a wrong password (RFC 5802 section 9: the server
    /// does not reveal which users exist).
    unknown_user_secret: [u8; 32],
}

impl Callback {
    fn credential(&self, user: &str, m: ScramMechanism) -> Option<ScramCredential> {
        let body = self.body.lock().unwrap_or_else(|e| e.into_inner());
        body.users.get(user).and_then(|c| c.get(&m)).cloned()
    }
}

impl Callback {
    fn made_up(&self, user: &str, m: ScramMechanism) -> ScramCredential {
        let mut h = sha2::Sha512::new();
        h.update(self.unknown_user_secret);
        h.update(user.as_bytes());
        let d = h.finalize();
        let n = match m {
            ScramMechanism::Sha256 => 32,
            ScramMechanism::Sha512 => 64,
        };
        ScramCredential {
            salt: d[..24].to_vec(),
            iterations: SCRAM_ITERATIONS_DEFAULT,
            stored_key: d[..n].iter().rev().copied().collect(),
            server_key: d[64 - n..].to_vec(),
        }
    }
}

impl SessionCallback for Callback {
    fn callback(
        &self,
        session_data: &SessionData,
        context: &Context,
        request: &mut Request,
    ) -> Result<(), SessionError> {
        let Some(m) = ScramMechanism::from_name(session_data.mechanism().mechanism.as_str()) else {
            return Ok(());
        };
        if request.is::<ScramStoredPassword>() {
            if let Some(user) = context.get_ref::<AuthId>() {
                let c = self
                    .credential(user, m)
                    .unwrap_or_else(|| self.made_up(user, m));
                {
                    request.satisfy::<ScramStoredPassword>(&ScramStoredPassword::new(
                        c.iterations,
                        &c.salt,
                        &c.stored_key,
                        &c.server_key,
                    ))?;
                }
            }
        }
        Ok(())
    }

    fn validate(
        &self,
        session_data: &SessionData,
        context: &Context,
        validate: &mut Validate<'_>,
    ) -> Result<(), ValidationError> {
        let mech = session_data.mechanism().mechanism.as_str();
        let user = context.get_ref::<AuthId>().map(str::to_owned);
        let authz = context.get_ref::<AuthzId>();
        // Acting as someone else (an authorization id that differs) is not
        // supported: refused.
        let authz_ok = authz.is_none_or(|a| a.is_empty() || Some(a) == user.as_deref());
        tracing::debug!(
            mechanism = mech,
            user = user.as_deref().unwrap_or("-"),
            authz = authz.unwrap_or("-"),
            "SASL validation"
        );
        let principal = match (mech, user) {
            (_, None) => None,
            (_, Some(_)) if !authz_ok => None,
            ("PLAIN", Some(u)) => {
                let password = context.get_ref::<Password>().unwrap_or_default();
                let ok = ScramMechanism::ALL.into_iter().any(|m| {
                    self.credential(&u, m)
                        .is_some_and(|c| c.verify_password(m, password))
                });
                ok.then(|| format!("User:{u}"))
            }
            // SCRAM validates only after the client's proof checked out.
            (_, Some(u)) => Some(format!("User:{u}")),
        };
        validate.with::<StromValidation, _>(|| Ok(principal))?;
        Ok(())
    }
}

impl Store {
    /// Opens the store of `data_dir` and adds the bootstrap users missing
    /// from it (written before the listeners open).
    pub fn open(data_dir: &Path, settings: SaslSettings) -> Result<Store, String> {
        let path = data_dir.join(SECURITY_FILE);
        let mut body = load_body(&path)?;
        let mut changed = false;
        for u in &settings.bootstrap_users {
            check_user_name(&u.name).map_err(|e| format!("[sasl] bootstrap user: {e}"))?;
            let entry = body.users.entry(u.name.clone()).or_default();
            for m in ScramMechanism::ALL {
                if let std::collections::btree_map::Entry::Vacant(v) = entry.entry(m) {
                    let c = ScramCredential::from_password(
                        m,
                        u.password.as_bytes(),
                        SCRAM_ITERATIONS_DEFAULT,
                    )
                    .map_err(|e| e.to_string())?;
                    v.insert(c);
                    changed = true;
                }
            }
        }
        if changed {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            write_atomic(&path, &body).map_err(|e| e.to_string())?;
        }
        // One map, read by the SASL callback and changed by the admin APIs.
        let body = Arc::new(Mutex::new(body));
        let sasl = SASLConfig::builder()
            .with_defaults()
            .with_callback(Callback {
                body: body.clone(),
                unknown_user_secret: {
                    let mut k = [0u8; 32];
                    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
                        .map_err(|_| "no randomness for the SASL callback".to_string())?;
                    k
                },
            })
            .map_err(|e| format!("SASL configuration: {e}"))?;
        Ok(Store {
            path,
            body,
            failures: Mutex::new(HashMap::new()),
            settings,
            sasl,
        })
    }

    /// Whether `mechanism` is offered.
    pub fn offers(&self, mechanism: &str) -> bool {
        self.settings.mechanisms.iter().any(|m| m == mechanism)
    }

    /// Starts an exchange with an offered mechanism.
    pub fn start(&self, mechanism: &str) -> Option<Exchange> {
        if !self.offers(mechanism) {
            return None;
        }
        let name = Mechname::parse(mechanism.as_bytes()).ok()?;
        let session = SASLServer::<StromValidation>::new(self.sasl.clone())
            .start_suggested(name)
            .ok()?;
        Some(Exchange { session })
    }

    /// Whether `addr` is refused for too many recent failed logins.
    pub fn locked_out(&self, addr: Option<IpAddr>) -> bool {
        let Some(addr) = addr else { return false };
        let f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.get(&addr).is_some_and(|(n, since)| {
            *n >= FAILED_LOGINS_MAX
                && since.elapsed() < Duration::from_millis(FAILED_LOGIN_WINDOW_MS)
        })
    }

    /// Counts a failed login of `addr`.
    pub fn failed(&self, addr: Option<IpAddr>) {
        let Some(addr) = addr else { return };
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let window = Duration::from_millis(FAILED_LOGIN_WINDOW_MS);
        if f.len() >= FAILED_LOGIN_ADDRESSES_MAX && !f.contains_key(&addr) {
            f.retain(|_, (_, since)| since.elapsed() < window);
            if f.len() >= FAILED_LOGIN_ADDRESSES_MAX {
                if let Some(oldest) = f.iter().min_by_key(|(_, (_, s))| *s).map(|(a, _)| *a) {
                    f.remove(&oldest);
                }
            }
        }
        let e = f.entry(addr).or_insert((0, Instant::now()));
        if e.1.elapsed() >= window {
            *e = (0, Instant::now());
        }
        e.0 = e.0.saturating_add(1);
    }

    /// Whether `principal` bypasses authorization.
    pub fn is_super_user(&self, principal: &str) -> bool {
        self.settings.super_users.iter().any(|s| s == principal)
    }

    /// A copy of the users and their mechanisms (iterations only).
    pub fn describe(&self) -> BTreeMap<String, Vec<(ScramMechanism, u32)>> {
        let body = self.body.lock().unwrap_or_else(|e| e.into_inner());
        body.users
            .iter()
            .map(|(u, c)| {
                (
                    u.clone(),
                    c.iter().map(|(m, c)| (*m, c.iterations)).collect(),
                )
            })
            .collect()
    }

    /// Applies upserts and deletions and writes the file before returning.
    /// Blocking (an fsync): call through `spawn_blocking` on a shard.
    /// Each change gets its own result, in order; failed ones change nothing.
    pub fn alter(&self, changes: Vec<Alteration>) -> Vec<Result<(), CredentialError>> {
        let mut body = self.body.lock().unwrap_or_else(|e| e.into_inner());
        let before = body.clone();
        let mut results = Vec::with_capacity(changes.len());
        for c in changes {
            results.push(apply(&mut body, c));
        }
        if *body != before {
            if let Err(e) = write_atomic(&self.path, &body) {
                *body = before;
                return results.into_iter().map(|_| Err(e.clone())).collect();
            }
        }
        results
    }
}

/// One change to the store.
#[derive(Debug, Clone)]
pub enum Alteration {
    Upsert {
        user: String,
        mechanism: ScramMechanism,
        credential: ScramCredential,
    },
    Delete {
        user: String,
        mechanism: ScramMechanism,
    },
}

fn apply(body: &mut SecurityBody, c: Alteration) -> Result<(), CredentialError> {
    match c {
        Alteration::Upsert {
            user,
            mechanism,
            credential,
        } => {
            check_user_name(&user)?;
            if !body.users.contains_key(&user) && body.users.len() >= USERS_MAX {
                return Err(CredentialError::TooManyUsers);
            }
            body.users
                .entry(user)
                .or_default()
                .insert(mechanism, credential);
            Ok(())
        }
        Alteration::Delete { user, mechanism } => {
            let creds = body.users.get_mut(&user).ok_or(CredentialError::NotFound)?;
            creds.remove(&mechanism).ok_or(CredentialError::NotFound)?;
            if creds.is_empty() {
                body.users.remove(&user);
            }
            Ok(())
        }
    }
}

impl Exchange {
    /// Feeds the client's next token.
    pub fn step(&mut self, token: &[u8]) -> Step {
        if token.len() > SASL_TOKEN_BYTES_MAX {
            return Step::Failed(format!(
                "SASL token of {} bytes exceeds {SASL_TOKEN_BYTES_MAX}",
                token.len()
            ));
        }
        let mut out = Vec::new();
        match self.session.step(Some(token), &mut out) {
            Ok(State::Running) => Step::Continue(out),
            Ok(State::Finished(_)) => match self.session.validation().flatten() {
                Some(principal) => Step::Done { principal, out },
                None => {
                    tracing::debug!(
                        server_final = %String::from_utf8_lossy(&out),
                        "SASL exchange ended unauthenticated"
                    );
                    Step::Failed("Authentication failed: invalid credentials".into())
                }
            },
            // rsasl's errors name the step that failed, never a secret
            // (logged at debug); the client is told only that it failed.
            Err(e) => {
                tracing::debug!(error = %e, "SASL exchange failed");
                Step::Failed("Authentication failed: invalid credentials".into())
            }
        }
    }
}

/// Checks a user name's length and characters.
pub fn check_user_name(name: &str) -> Result<(), CredentialError> {
    if name.is_empty() || name.len() > USER_NAME_BYTES_MAX || name.contains(['\0', ',', '=']) {
        return Err(CredentialError::UserName(name.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsasl::prelude::SASLClient;

    fn store(tag: &str) -> (Store, PathBuf) {
        let dir = std::env::temp_dir().join(format!("strom-auth-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let settings = SaslFile {
            kafka: true,
            bootstrap_users: vec![BootstrapUser {
                name: "alice".into(),
                password: "wonderland".into(),
            }],
            ..SaslFile::default()
        }
        .resolve()
        .expect("settings");
        (Store::open(&dir, settings).expect("open"), dir)
    }

    /// Runs a whole exchange with rsasl's client; the principal or None.
    fn login(store: &Store, mech: &str, user: &str, password: &str) -> Option<String> {
        let cfg = SASLConfig::with_credentials(None, user.into(), password.into()).expect("cfg");
        let name = Mechname::parse(mech.as_bytes()).expect("mechname");
        let mut client = SASLClient::new(cfg)
            .start_suggested(&[name])
            .expect("client");
        let mut server = store.start(mech).expect("offered");
        let mut token = Vec::new();
        client.step(None, &mut token).expect("client first");
        for _ in 0..4 {
            match server.step(&token) {
                Step::Continue(out) => {
                    token.clear();
                    client.step(Some(&out), &mut token).ok()?;
                }
                Step::Done { principal, out } => {
                    if !out.is_empty() {
                        // The client checks the server's signature.
                        let mut rest = Vec::new();
                        client
                            .step(Some(&out), &mut rest)
                            .expect("server final verifies");
                    }
                    return Some(principal);
                }
                Step::Failed(_) => return None,
            }
        }
        panic!("exchange did not end");
    }

    #[test]
    fn every_mechanism_accepts_the_password_and_refuses_another() {
        let (store, dir) = store("mechs");
        for mech in MECHANISMS {
            assert_eq!(
                login(&store, mech, "alice", "wonderland").as_deref(),
                Some("User:alice"),
                "{mech}"
            );
            assert_eq!(
                login(&store, mech, "alice", "looking-glass"),
                None,
                "{mech}"
            );
            assert_eq!(login(&store, mech, "bob", "wonderland"), None, "{mech}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_file_holds_no_password_and_reopens_identically() {
        let (store, dir) = store("file");
        let text = std::fs::read_to_string(dir.join(SECURITY_FILE)).expect("written");
        assert!(!text.contains("wonderland"));
        let before = store.describe();
        assert_eq!(before["alice"].len(), 2);
        drop(store);
        let (again, _) = (
            Store::open(&dir, SaslSettings::default()).expect("reopen"),
            (),
        );
        assert_eq!(again.describe(), before);
        // A flipped byte is refused, not guessed at.
        let bad = text.replacen("\"iterations\": 8192", "\"iterations\": 8193", 1);
        assert_ne!(bad, text);
        std::fs::write(dir.join(SECURITY_FILE), bad).expect("write");
        assert!(Store::open(&dir, SaslSettings::default()).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn alterations_are_checked_and_durable() {
        let (store, dir) = store("alter");
        let salted = salt_password(ScramMechanism::Sha512, b"pw", 4096, b"salty");
        let ok =
            ScramCredential::from_salted_password(ScramMechanism::Sha512, b"salty", 4096, &salted)
                .expect("valid");
        assert!(ok.verify_password(ScramMechanism::Sha512, b"pw"));
        assert!(!ok.verify_password(ScramMechanism::Sha512, b"pW"));
        assert!(matches!(
            ScramCredential::from_salted_password(ScramMechanism::Sha512, b"s", 100, &salted),
            Err(CredentialError::Iterations(100))
        ));
        assert!(
            ScramCredential::from_salted_password(ScramMechanism::Sha256, b"s", 4096, &salted)
                .is_err()
        );
        let r = store.alter(vec![
            Alteration::Upsert {
                user: "bob".into(),
                mechanism: ScramMechanism::Sha512,
                credential: ok,
            },
            Alteration::Delete {
                user: "nobody".into(),
                mechanism: ScramMechanism::Sha256,
            },
        ]);
        assert!(r[0].is_ok());
        assert_eq!(r[1], Err(CredentialError::NotFound));
        assert_eq!(
            login(&store, "SCRAM-SHA-512", "bob", "pw").as_deref(),
            Some("User:bob")
        );
        assert_eq!(
            login(&store, "PLAIN", "bob", "pw").as_deref(),
            Some("User:bob")
        );
        let reopened = Store::open(&dir, SaslSettings::default()).expect("reopen");
        assert!(reopened.describe().contains_key("bob"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn failed_logins_lock_an_address_out() {
        let (store, dir) = store("lockout");
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        for _ in 0..FAILED_LOGINS_MAX {
            assert!(!store.locked_out(Some(a)));
            store.failed(Some(a));
        }
        assert!(store.locked_out(Some(a)));
        assert!(!store.locked_out(Some(b)));
        let _ = std::fs::remove_dir_all(dir);
    }
}
