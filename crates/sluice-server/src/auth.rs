//! Authentication: trust by default (any user, no password, like a fresh
//! local Postgres); when a password is configured, MD5 or cleartext password
//! exchange, checked against the configured user and password.

use std::collections::hash_map::RandomState;
use std::fmt::Debug;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::cleartext::CleartextPasswordAuthStartupHandler;
use pgwire::api::auth::md5pass::{hash_md5_password, Md5PasswordAuthStartupHandler};
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::{ClientInfo, ConnectionManager, PgWireConnectionState};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use sluice_common::{AuthMethod, Config};

/// Who may log in, from the configuration.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    user: Option<String>,
    password: Option<String>,
    method: AuthMethod,
}

impl AuthSettings {
    /// The settings in `config`.
    pub fn from_config(config: &Config) -> Self {
        AuthSettings {
            user: config.user.clone(),
            password: config.password.clone(),
            method: config.auth_method,
        }
    }

    /// A startup handler for one new connection, registering it in
    /// `cancel` once it logged in.
    pub fn handler(&self, cancel: Arc<ConnectionManager>) -> Startup {
        Startup {
            method: self.method(),
            cancel,
            logged_in: Arc::new(AtomicBool::new(false)),
        }
    }

    fn method(&self) -> Method {
        let Some(password) = &self.password else {
            return Method::Trust(Trust {
                user: self.user.clone(),
            });
        };
        let source = ConfiguredPassword {
            user: self.user.clone(),
            password: password.clone(),
            method: self.method,
        };
        match self.method {
            AuthMethod::Md5 => Method::Md5(Box::new(Md5PasswordAuthStartupHandler::new(
                Arc::new(source),
                Arc::new(DefaultServerParameterProvider::default()),
            ))),
            AuthMethod::Cleartext => {
                Method::Cleartext(Box::new(CleartextPasswordAuthStartupHandler::new(
                    source,
                    DefaultServerParameterProvider::default(),
                )))
            }
        }
    }
}

/// The configured user and password.
#[derive(Debug, Clone)]
pub struct ConfiguredPassword {
    user: Option<String>,
    password: String,
    method: AuthMethod,
}

#[async_trait]
impl AuthSource for ConfiguredPassword {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        if self
            .user
            .as_deref()
            .is_some_and(|expected| expected != user)
        {
            return Err(PgWireError::InvalidPassword(user.to_owned()));
        }
        Ok(match self.method {
            AuthMethod::Md5 => {
                let salt = random_salt();
                let hashed = hash_md5_password(user, &self.password, &salt);
                Password::new(Some(salt.to_vec()), hashed.into_bytes())
            }
            AuthMethod::Cleartext => Password::new(None, self.password.clone().into_bytes()),
        })
    }
}

fn random_salt() -> [u8; 4] {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default(),
    );
    let bytes = hasher.finish().to_le_bytes();
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}

/// Trust mode: every login succeeds, unless a user is configured and the
/// client names another one.
#[derive(Debug)]
pub struct Trust {
    user: Option<String>,
}

#[async_trait]
impl NoopStartupHandler for Trust {
    async fn post_startup<C>(
        &self,
        client: &mut C,
        _message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let login = LoginInfo::from_client_info(client);
        let user = login.user().unwrap_or_default();
        match &self.user {
            Some(expected) if expected != user => {
                Err(PgWireError::InvalidPassword(user.to_owned()))
            }
            _ => Ok(()),
        }
    }
}

/// The startup handler of one connection, per the configured method.
pub enum Method {
    /// No password.
    Trust(Trust),
    /// MD5 password.
    Md5(Box<Md5PasswordAuthStartupHandler<ConfiguredPassword, DefaultServerParameterProvider>>),
    /// Cleartext password.
    Cleartext(
        Box<
            CleartextPasswordAuthStartupHandler<ConfiguredPassword, DefaultServerParameterProvider>,
        >,
    ),
}

/// One connection's login: the configured method, then, once the client
/// is in, its registration for CancelRequests and the end of its startup
/// timeout.
pub struct Startup {
    method: Method,
    cancel: Arc<ConnectionManager>,
    logged_in: Arc<AtomicBool>,
}

impl Startup {
    /// Whether the client has logged in, shared with the connection's task.
    pub fn logged_in(&self) -> Arc<AtomicBool> {
        self.logged_in.clone()
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match &self.method {
            Method::Trust(h) => h.on_startup(client, message).await?,
            Method::Md5(h) => h.on_startup(client, message).await?,
            Method::Cleartext(h) => h.on_startup(client, message).await?,
        }
        if matches!(client.state(), PgWireConnectionState::ReadyForQuery)
            && !self.logged_in.swap(true, Ordering::SeqCst)
        {
            crate::limits::register(client, &self.cancel);
        }
        Ok(())
    }
}
