//! Login in passthrough mode (`tenants.mode = "passthrough"`), as through
//! PgBouncer: no tenant is resolved; the client's `user` and `database`
//! are used as they are. The database must be one of `backend.databases`;
//! the user is authenticated against its `auth_file` entry (bare name), and
//! the credential that entry and the client's proof give (see
//! [`Credential`]) is what its pool's server connections log in with.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tracing::field::display;

use super::{settings, Authenticated, Context, Login, SessionError};
use crate::auth::{self, AuthError, Credential};
use crate::net::Stream;
use crate::pool::{PoolKey, PoolLimits};
use crate::protocol::{ProtocolError, SqlState, StartupParams};
use crate::tenant::resolve::passthrough_settings;
use crate::tenant::ResolveError;

/// Authenticates a passthrough client. `buf` holds what must reach the
/// client before the authentication request (NegotiateProtocolVersion).
pub(super) async fn login(
    client: &mut Stream,
    ctx: &Context,
    params: &StartupParams,
    buf: BytesMut,
    binding: Option<&[u8]>,
) -> Result<Login, SessionError> {
    let config = ctx.config();
    let user = match params.get("user") {
        Some(u) if !u.is_empty() => u.to_string(),
        _ => return Err(ResolveError::NoUser.into()),
    };
    // As PostgreSQL: no database means the user's name.
    let database = params
        .get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_string();
    let span = tracing::Span::current();
    span.record("db", display(&database));
    span.record("user", display(&user));
    if !config.backend.databases.contains(&database) {
        return Err(SessionError::UnknownDatabase(database));
    }
    if ctx.pools.controls().is_disabled(&database) {
        return Err(SessionError::Disabled(database));
    }
    let options = passthrough_settings(params)?;
    let wanted =
        settings::wanted(params, &options, &[]).map_err(|message| SessionError::Setting {
            code: SqlState::PROTOCOL_VIOLATION,
            message,
        })?;

    let secret = ctx.auth_file.load().get(&user).cloned();
    if !buf.is_empty() {
        client.write_all(&buf).await.map_err(ProtocolError::from)?;
    }
    let proved = auth::authenticate(
        client,
        config.auth.method,
        &user,
        secret.as_ref(),
        &ctx.server_key,
        binding,
    )
    .await?;
    let Some(secret) = secret else {
        // Only reachable with `trust`: the user must still be in the auth file.
        return Err(AuthError::Failed(user).into());
    };
    let limits = PoolLimits {
        credential: Some(Arc::new(Credential::from_client(&secret, proved))),
        server_database: config.backend.server_databases.get(&database).cloned(),
        ..PoolLimits::default()
    };
    Ok(Login::Done(Box::new(Authenticated {
        pool_key: PoolKey::for_user(database, user.clone()),
        limits,
        tenant: None,
        max_clients: None,
        pool_mode: None,
        user,
        wanted,
    })))
}
