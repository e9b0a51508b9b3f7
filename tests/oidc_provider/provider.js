// A real OpenID provider for Viopay's tests: panva's certified oidc-provider, shaped like a
// Keycloak realm (issuer …/realms/<realm>, JWT access tokens carrying `realm_access.roles`,
// `azp`, `sid` and `typ: "Bearer"`; service-account tokens carry `client_id`).
//
//   node provider.js CONFIG.json   → prints "ready <issuer>" once it listens on 127.0.0.1
//
// CONFIG: {"port", "realm", "audience", "access_token_ttl"?,
//   "clients": [{client_id, client_secret, grant_types, redirect_uris?, post_logout_redirect_uris?,
//                realm_roles?, backdate?}],
//   "users": [{username, password, sub, email, roles}]}
// `backdate` (seconds) makes a client's access tokens issued that long ago (an expired token).
// POST /test/rotate-keys makes a new signing key (new kid), published beside the old one.
import { generateKeyPairSync, randomUUID, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';
import { createMemoryAdapter } from 'oidc-provider/lib/adapters/memory_adapter.js';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const prefix = `/realms/${config.realm}`;
const issuer = `http://127.0.0.1:${config.port}${prefix}`;
const resource = `urn:${config.audience}`;
const extras = new Map(config.clients.map((c) => [c.client_id, c]));
const users = new Map(config.users.map((u) => [u.sub, u]));
const cookieKeys = [randomUUID()];
// One store for every Provider built here: sessions, grants and refresh tokens outlive a rotation.
const adapter = createMemoryAdapter();
const keys = [];

function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = randomUUID();
  keys.unshift({ ...privateKey.export({ format: 'jwk' }), kid, use: 'sig', alg: 'RS256' });
  return kid;
}

function keycloakLayout(ctx, token, jwt) {
  const { payload } = jwt;
  const client = extras.get(payload.client_id) || {};
  payload.azp = payload.client_id;
  payload.typ = 'Bearer';
  if (token.kind === 'ClientCredentials') {
    payload.sub = `service-account-${payload.client_id}`;
    payload.realm_access = { roles: client.realm_roles || [] };
  } else {
    delete payload.client_id; // a user's token names its client in `azp` only
    payload.sid = token.sid || token.sessionUid; // the provider's session, kept by refreshes
    payload.realm_access = { roles: users.get(payload.sub)?.roles || [] };
  }
  if (client.backdate) {
    payload.iat -= client.backdate;
    payload.exp -= client.backdate;
  }
}

function build() {
  const provider = new Provider(issuer, {
    clients: config.clients.map(({ realm_roles: _r, backdate: _b, ...metadata }) => ({
      response_types: metadata.grant_types.includes('authorization_code') ? ['code'] : [],
      token_endpoint_auth_method: 'client_secret_post',
      ...metadata,
    })),
    adapter,
    jwks: { keys },
    cookies: { keys: cookieKeys },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['preferred_username'] },
    conformIdTokenClaims: false, // like Keycloak: the ID token carries the profile claims
    findAccount: (ctx, sub) => users.has(sub) && {
      accountId: sub,
      claims: () => ({
        sub, email: users.get(sub).email, email_verified: true, preferred_username: users.get(sub).username,
      }),
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: (ctx, client, oneOf) => oneOf || resource,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, indicator) => ({
          scope: 'openid email profile',
          audience: indicator === resource ? config.audience : indicator,
          accessTokenFormat: 'jwt',
          accessTokenTTL: config.access_token_ttl || 300,
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    formats: { customizers: { jwt: keycloakLayout } },
    pkce: { required: () => true },
    issueRefreshToken: (ctx, client) => client.grantTypeAllowed('refresh_token'),
    // First-party client: no consent screen, as Keycloak's default (consent not required).
    loadExistingGrant: async (ctx) => {
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope('openid email profile');
      grant.addResourceScope(resource, 'openid email profile');
      await grant.save();
      return grant;
    },
    routes: { // Keycloak's paths under the realm
      authorization: '/protocol/openid-connect/auth',
      token: '/protocol/openid-connect/token',
      jwks: '/protocol/openid-connect/certs',
      end_session: '/protocol/openid-connect/logout',
      userinfo: '/protocol/openid-connect/userinfo',
      revocation: '/protocol/openid-connect/revoke',
      introspection: '/protocol/openid-connect/token/introspect',
    },
    interactions: { url: (ctx, interaction) => `${prefix}/interaction/${interaction.uid}` },
  });
  provider.proxy = false;
  for (const event of ['grant.error', 'authorization.error', 'server_error']) {
    provider.on(event, (ctx, error) => console.error(event, error.error_detail || error.message));
  }
  return provider;
}

const page = (uid, error) => `<!doctype html><html><head><title>Sign in to ${config.realm}</title></head>
<body><h1>Sign in to ${config.realm}</h1>${error ? `<p id="error">${error}</p>` : ''}
<form method="post" action="${prefix}/interaction/${uid}/login">
<label>Username <input id="username" name="username" autofocus></label>
<label>Password <input id="password" name="password" type="password"></label>
<button type="submit" id="kc-login">Sign In</button></form></body></html>`;

function same(a, b) {
  const x = Buffer.from(String(a));
  const y = Buffer.from(String(b));
  return x.length === y.length && timingSafeEqual(x, y);
}

async function interaction(provider, req, res, path) {
  const details = await provider.interactionDetails(req, res);
  if (req.method === 'GET') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    return res.end(page(details.uid));
  }
  let body = '';
  for await (const chunk of req) body += chunk;
  const form = new URLSearchParams(body);
  const user = config.users.find((u) => u.username === form.get('username'));
  if (!path.endsWith('/login') || !user || !same(user.password, form.get('password'))) {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    return res.end(page(details.uid, 'Invalid username or password.'));
  }
  return provider.interactionFinished(req, res, { login: { accountId: user.sub } }, {
    mergeWithLastSubmission: false,
  });
}

newKey();
let current = build();
let handle = current.callback();

createServer(async (req, res) => {
  try {
    const url = new URL(req.url, issuer);
    if (req.method === 'POST' && url.pathname === '/test/rotate-keys') {
      const kid = newKey();
      current = build();
      handle = current.callback();
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ kid }));
    }
    if (!url.pathname.startsWith(`${prefix}/`)) {
      res.writeHead(404);
      return res.end();
    }
    const path = url.pathname.slice(prefix.length);
    if (path.startsWith('/interaction/')) return await interaction(current, req, res, path);
    req.originalUrl = req.url; // oidc-provider finds its mount path from it
    req.url = path + url.search;
    return handle(req, res);
  } catch (error) {
    console.error(error);
    res.writeHead(500);
    return res.end();
  }
}).listen(config.port, '127.0.0.1', () => console.log(`ready ${issuer}`));
